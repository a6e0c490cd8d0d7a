"""Energy per request, for the usage API and receipts: energy, green energy and carbon, from
the metering windows allocated so far and the period's PUE and green share (`service.py`)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from tokenport.energy.green import PPM, Figures, figures
from tokenport.energy.service import EnergyService
from tokenport.energy.units import period_of, ratio


class RequestFigures:
    def __init__(self, periods: EnergyService) -> None:
        self.periods = periods

    def request_figures(self, records: list[dict]) -> dict[str, dict]:
        """For usage records (request_id, zone, started_at): energy, green energy and carbon, from
        the windows allocated so far (`complete` once no window of the request is pending)."""
        energy = self.periods.store.request_energy([r["request_id"] for r in records])
        shares: dict[str, int] = {}
        out = {}
        for r in records:
            e = energy.get(r["request_id"])
            if e is None:
                continue
            period = period_of(r["started_at"])
            if period not in shares:
                shares[period] = self.periods.share_ppm(period)
            grid, residual = self.periods.config.factors(r["zone"])
            f = figures(e["energy_mj"], self.periods.pue(period), shares[period], grid, residual)
            out[r["request_id"]] = {**_figures_view(f), "method": e["method"], "windows": e["windows"]}
        return out

    def group_figures(
        self, tenant_id: str, group_by: str, start: datetime | None, end: datetime | None
    ) -> dict[str | None, dict]:
        """The usage API's groups (day, model or key): energy, green energy and carbon, summed
        over the months and zones in each group."""
        out: dict[str | None, dict] = {}
        shares: dict[str, int] = {}
        for key, zone, period, it_mj in self.periods.store.grouped_energy(tenant_id, group_by, start, end):
            if period not in shares:
                shares[period] = self.periods.share_ppm(period)
            grid, residual = self.periods.config.factors(zone)
            view = _figures_view(figures(it_mj, self.periods.pue(period), shares[period], grid, residual))
            acc = out.setdefault(key, dict.fromkeys(view, 0))
            for k, v in view.items():
                acc[k] += v
        return out

    def receipt_section(self, record: dict) -> dict:
        """The `energy` part of a request's signed receipt (its record is the audit entry)."""
        started = datetime.fromisoformat(record["started_at"].replace("Z", "+00:00"))
        finished = datetime.fromisoformat(record["finished_at"].replace("Z", "+00:00"))
        found = self.request_figures(
            [{"request_id": record["request_id"], "zone": record["zone"], "started_at": started}]
        ).get(record["request_id"])
        if found is None:
            return {"energy": {"metered": False}}
        period = period_of(started)
        grid, residual = self.periods.config.factors(record["zone"])
        return {
            "energy": {
                "metered": True,
                "complete": self.periods.store.metered_since(record["zone"], finished),
                **found,
                "period": period,
                "pue": str(Decimal(self.periods.pue(period)) / 1000),
                "green_share": ratio(self.periods.share_ppm(period), PPM),
                "grid_g_per_kwh": str(Decimal(grid) / 1000),
                "residual_g_per_kwh": str(Decimal(residual) / 1000),
            }
        }


def _figures_view(f: Figures) -> dict:
    return {
        "energy_mj": f.facility_mj,
        "it_energy_mj": f.it_mj,
        "green_mj": f.green_mj,
        "co2_location_ug": f.co2_location_ug,
        "co2_market_ug": f.co2_market_ug,
    }
