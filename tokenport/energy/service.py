"""A period's energy behind the CLI and the API: its supply (PUE, tariffs, certificates) and green
share, the certificates' allocation, the customer green report and the value chain. Per-request
figures (usage, receipts) are `request_figures.py`."""

from __future__ import annotations

from decimal import Decimal

from tokenport.clock import Clock, SystemClock
from tokenport.energy.allocation import apportion
from tokenport.energy.config import EnergyConfig
from tokenport.energy.green import (
    MJ_PER_KWH,
    MJ_PER_WH,
    PPM,
    Grant,
    allocate_certificates,
    carbon_ug,
    facility_mj,
    green_share_ppm,
)
from tokenport.energy.ports import EnergyRepository
from tokenport.energy.units import (
    EnergyInputError,
    grams,
    kwh,
    per_million,
    period_bounds,
    period_of,
    ratio,
)

__all__ = ["EnergyInputError", "EnergyService", "period_bounds", "period_of"]


class EnergyService:
    def __init__(self, store: EnergyRepository, config: EnergyConfig, clock: Clock | None = None) -> None:
        self.store = store
        self.config = config
        self.clock = clock or SystemClock()

    # --- supply ---

    def set_pue(self, period: str, value: str) -> int:
        from tokenport.energy.config import EnergyConfigError, milli

        period_bounds(period)
        try:
            pue = milli(value, "PUE", 1000, 5000)
        except EnergyConfigError as exc:
            raise EnergyInputError(f"{exc} (a PUE is between 1.0 and 5.0)") from None
        self.store.set_pue(period, pue, self.clock.now())
        return pue

    def pue(self, period: str) -> int:
        return self.store.pue(period) or self.config.pue_milli

    def set_tariff(
        self, period: str, cny_per_kwh: str, source: str = "grid", kwh_value: str | None = None
    ) -> dict:
        period_bounds(period)
        try:
            price = Decimal(str(cny_per_kwh))
            amount = None if kwh_value is None else Decimal(str(kwh_value))
        except ArithmeticError:
            raise EnergyInputError("the tariff and the kWh must be decimal numbers") from None
        if (
            not price.is_finite()
            or price < 0
            or (amount is not None and (not amount.is_finite() or amount < 0))
        ):
            raise EnergyInputError("the tariff and the kWh must be non-negative numbers")
        cny_micro = int((price * 1_000_000).to_integral_value())
        kwh_milli = None if amount is None else int((amount * 1000).to_integral_value())
        others = [e for e in self.store.electricity(period) if e["source"] != source]
        if kwh_milli is None and any(e["kwh_milli"] is None for e in others):
            raise EnergyInputError(
                "only one source per period can stand for the metered energy not recorded otherwise; "
                "give the others' --kwh"
            )
        self.store.set_electricity(period, source, cny_micro, kwh_milli, self.clock.now())
        return {
            "period": period,
            "source": source,
            "cny_per_kwh": str(price),
            "kwh": None if amount is None else str(amount),
        }

    def add_certificate(self, cert_id: str, mwh: str, period: str, source: str = "offshore-wind") -> dict:
        period_bounds(period)
        try:
            volume = Decimal(str(mwh))
        except ArithmeticError:
            raise EnergyInputError("--mwh must be a decimal number") from None
        if not volume.is_finite() or volume <= 0:
            raise EnergyInputError("--mwh must be positive")
        if not cert_id or len(cert_id) > 128:
            raise EnergyInputError("a certificate id is 1-128 characters")
        wh = int((volume * 1_000_000).to_integral_value())
        self.store.add_certificate(cert_id, source, wh, period, self.clock.now())
        return {"id": cert_id, "mwh": str(volume), "period": period, "source": source}

    # --- a period's figures ---

    def consumed_mj(self, period: str) -> dict:
        """Metered IT energy, the facility's (x PUE), and the electricity the period consumed:
        the kWh recorded per source, where a source without kWh stands for the metered facility
        energy not recorded otherwise."""
        start, end = period_bounds(period)
        metered = self.store.metered(start, end)
        facility = facility_mj(metered["energy_mj"], self.pue(period))
        sources = self.store.electricity(period)
        recorded = sum(s["kwh_milli"] * MJ_PER_WH for s in sources if s["kwh_milli"] is not None)
        unrecorded = any(s["kwh_milli"] is None for s in sources) or not sources
        consumed = recorded + (max(0, facility - recorded) if unrecorded else 0)
        return {**metered, "facility_mj": facility, "consumed_mj": consumed}

    def retired_wh(self, period: str) -> int:
        return sum(c["wh"] for c in self.store.certificates(period))

    def share_ppm(self, period: str) -> int:
        return green_share_ppm(self.retired_wh(period), self.consumed_mj(period)["consumed_mj"] // MJ_PER_WH)

    # --- certificates ---

    def allocation(self, period: str) -> tuple[list[Grant], bool]:
        """(grants, final). A period that has ended is allocated once and kept (the first run
        stores it; concurrent runs read what it stored); the current one is provisional."""
        frozen = self.store.allocation(period)
        if frozen is not None:
            return frozen[1], True
        grants, consumed_wh, retired_wh = self._compute_allocation(period)
        if self.clock.now() >= period_bounds(period)[1]:
            if not self.store.freeze_allocation(period, consumed_wh, retired_wh, grants, self.clock.now()):
                frozen = self.store.allocation(period)
                assert frozen is not None
                return frozen[1], True
            return grants, True
        return grants, False

    def _tenant_facility_mj(self, period: str) -> dict[str, int]:
        """Each tenant's facility energy: its shares, plus the period's idle energy spread in
        proportion to them, x PUE."""
        start, end = period_bounds(period)
        own = self.store.tenant_energy(start, end)
        idle = apportion(self.store.metered(start, end)["idle_mj"], own)
        pue = self.pue(period)
        return {t: facility_mj(own[t] + idle.get(t, 0), pue) for t in own}

    def _compute_allocation(self, period: str) -> tuple[list[Grant], int, int]:
        consumed_wh = self.consumed_mj(period)["consumed_mj"] // MJ_PER_WH
        certs = [(c["id"], c["wh"]) for c in self.store.certificates(period)]
        retired = sum(wh for _, wh in certs)
        share = green_share_ppm(retired, consumed_wh)
        demand = {t: mj * share // PPM // MJ_PER_WH for t, mj in self._tenant_facility_mj(period).items()}
        return allocate_certificates(certs, demand), consumed_wh, retired

    # --- reports ---

    def green_report(self, tenant_id: str, tenant_name: str, zone: str, period: str) -> dict:
        """What an EU buyer puts in its own Scope 3 report: supplier-specific energy, green
        energy with the certificates behind it, and carbon both ways."""
        start, end = period_bounds(period)
        total = self._tenant_facility_mj(period).get(tenant_id, 0)
        grants, final = self.allocation(period)
        mine = [g for g in grants if g.tenant_id == tenant_id]
        green = min(total, sum(g.wh for g in mine) * MJ_PER_WH)
        grid, residual = self.config.factors(zone)
        location, market = carbon_ug(total, grid), carbon_ug(total - green, residual)
        tokens = self.store.tokens(start, end, "tenant").get(tenant_id, 0)
        doc = {
            "tenant": tenant_name,
            "zone": zone,
            "period": period,
            "final": final,
            "tokens": tokens,
            "energy_kwh": kwh(total),
            "green_kwh": kwh(green),
            "green_share": ratio(green, total),
            "certificates": [{"id": g.certificate_id, "kwh": str(Decimal(g.wh) / 1000)} for g in mine],
            "co2_location_g": grams(location),
            "co2_market_g": grams(market),
            "intensity": {
                "kwh_per_million_tokens": per_million(Decimal(total) / MJ_PER_KWH, tokens),
                "co2_location_g_per_million_tokens": per_million(Decimal(location) / 1_000_000, tokens),
                "co2_market_g_per_million_tokens": per_million(Decimal(market) / 1_000_000, tokens),
            },
            "method": _method_note(
                self.store.metered(start, end), self.pue(period), self.config, grid, residual
            ),
        }
        doc["missing"] = _green_missing(doc)
        return doc

    def economics(self, period: str, fx_micro: int | None, tenant_names: dict[str, str]) -> dict:
        """The value chain of a month: electricity in (kWh, CNY), tokens out, revenue (USD from
        the ledger; CNY at the period's rate), the value multiple, per model and per customer,
        with the energy reconciled (`energy/economics.py`)."""
        from tokenport.energy.economics import value_chain

        return value_chain(self, period, fx_micro, tenant_names)


def _green_missing(doc: dict) -> dict[str, str]:
    """What each null figure of a green report lacks."""
    p = doc["period"]
    no_energy = (
        f"no energy metered for {doc['tenant']} in {p} (backends no [[energy.nodes]] covers are not "
        "metered; docs/energy.md)"
    )
    out = {"green_share": no_energy} if doc["green_share"] is None else {}
    out.update({f"intensity.{k}": f"no tokens in {p}" for k, v in doc["intensity"].items() if v is None})
    for k in ("measured_share", "estimated_share"):
        if doc["method"][k] is None:
            out[f"method.{k}"] = f"no energy metered in {p}"
    return out


def _method_note(metered: dict, pue: int, cfg: EnergyConfig, grid: int, residual: int) -> dict:
    total = metered["energy_mj"]
    estimated = metered["estimated_mj"]
    return {
        "measured_share": ratio(total - estimated, total),
        "estimated_share": ratio(estimated, total),
        "pue": str(Decimal(pue) / 1000),
        "alpha": str(Decimal(cfg.alpha_milli) / 1000),
        "grid_g_per_kwh": str(Decimal(grid) / 1000),
        "residual_g_per_kwh": str(Decimal(residual) / 1000),
        "notes": [
            "Energy per request: each metering window's node energy is split into static (idle power x "
            "time) shared by time in flight, and dynamic shared by work units (alpha x computed prompt "
            "tokens + generated tokens); idle time is spread over the period's energy; x PUE.",
            "Estimated figures come from a power model (idle + dynamic watts x utilisation), not a "
            "meter; their uncertainty is that of the model's watts, typically +/-30 %.",
            "Green energy is the tenant's share of green certificates (GEC) retired for this site "
            "and period, allocated once, never more than retired (annual or monthly matching, not "
            "hourly).",
            "Location-based carbon uses the grid average factor; market-based uses a residual-mix "
            "factor for the energy not covered by certificates (GHG Protocol Scope 2).",
        ],
    }
