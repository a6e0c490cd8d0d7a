"""The value chain of a month (`EnergyService.economics`): electricity in, tokens and revenue out,
per model and per customer, with the energy reconciled exactly and every missing figure named
with the command that supplies it. Plain Python.

Energy, in facility millijoules (IT x PUE): the period's metered total is split, by largest
remainder, into what the requests' own shares hold (attributed), idle (no request in flight)
and others' work (unattributed); each model and each customer gets its own part of the
attributed energy and, in proportion to it, its part of the idle energy (as the green report
counts it). So, exactly: sum of the rows' own + idle + others' work = total, for models and
customers alike, and each row's energy = its own + its idle part.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tokenport.energy.service import EnergyService

from decimal import Decimal

from tokenport.energy.allocation import apportion
from tokenport.energy.green import MJ_PER_KWH, MJ_PER_WH, PPM
from tokenport.energy.units import fixed, kwh, per_million, period_bounds, ratio, usd

REJECTED = "(rejected requests)"  # usage records with no model: refused before routing
PLAN_FEES = "(plan fees)"
RECONCILES = (
    "exactly, in facility mJ: the rows' own_mj + idle_mj + unattributed_mj = facility_mj, for models "
    "and customers alike; each row's energy_mj = its own_mj + its part of the idle energy (in "
    "proportion to its own); kWh are shown rounded to 1e-9"
)
METHOD_LABELS = {
    "measured": "measured (NVML, RAPL or exporter counters)",
    "estimated": "estimated (a power model: idle + dynamic watts x utilisation, typically +/-30 %)",
    "none": "no energy metered",
}


def value_chain(svc: EnergyService, period: str, fx_micro: int | None, tenant_names: dict[str, str]) -> dict:

    start, end = period_bounds(period)
    supply = svc.consumed_mj(period)
    bought, cost_micro_cny = _bought(svc.store.electricity(period), supply["consumed_mj"])
    by_tenant: dict[str, int] = {}
    by_model: dict[str, int] = {}
    for tenant, model, nano in svc.store.revenue(start, end):
        by_tenant[tenant] = by_tenant.get(tenant, 0) + nano
        key = model if model is not None else PLAN_FEES
        by_model[key] = by_model.get(key, 0) + nano
    usd_nano = sum(by_tenant.values())
    cny_micro = usd_nano * fx_micro // 1_000_000_000 if fx_micro else None
    tokens_t = svc.store.tokens(start, end, "tenant")
    tokens_m = _named(svc.store.tokens(start, end, "model"))
    tokens = sum(tokens_t.values())
    own_t = svc.store.tenant_energy(start, end)
    own_m = _named(svc.store.model_energy(start, end))
    energy = split_energy(supply["facility_mj"], supply["energy_mj"], supply["idle_mj"], sum(own_t.values()))
    doc = {
        "period": period,
        "electricity": {
            "kwh": kwh(supply["consumed_mj"]),
            "cny": fixed(Decimal(cost_micro_cny) / 1_000_000, "0.01") if bought else None,
            "sources": bought,
        },
        "metered_kwh": kwh(supply["energy_mj"]),
        "pue": str(Decimal(svc.pue(period)) / 1000),
        "energy": {**energy, **method(supply["energy_mj"], supply["estimated_mj"])},
        "tokens": tokens,
        "revenue_usd": usd(usd_nano),
        "cny_per_usd": str(Decimal(fx_micro) / 1_000_000) if fx_micro else None,
        "revenue_cny": fixed(Decimal(cny_micro) / 1_000_000, "0.01") if cny_micro is not None else None,
        "value_multiple": fixed(Decimal(cny_micro) / cost_micro_cny, "0.01")
        if cny_micro is not None and cost_micro_cny
        else None,
        "kwh_per_million_tokens": per_million(Decimal(supply["consumed_mj"]) / MJ_PER_KWH, tokens),
        "green_share": ratio(svc.share_ppm(period), PPM),
        "by_model": rows(
            {m: m for m in set(tokens_m) | set(by_model) | set(own_m)}, tokens_m, by_model, own_m, energy
        ),
        "by_customer": rows(
            {t: tenant_names.get(t, t) for t in set(tokens_t) | set(by_tenant) | set(own_t)},
            tokens_t,
            by_tenant,
            own_t,
            energy,
        ),
    }
    doc["missing"] = missing(doc, bool(bought), cost_micro_cny)
    return doc


def _named(values: dict) -> dict[str, int]:
    """Model keys as names: records with no model are the rejected requests."""
    out: dict[str, int] = {}
    for k, v in values.items():
        name = k if k is not None else REJECTED
        out[name] = out.get(name, 0) + v
    return out


def _bought(sources: list[dict], consumed_mj: int) -> tuple[list[dict], int]:
    """Electricity per source (kWh, tariff, CNY) and its cost in micro-CNY; a source without
    kWh stands for the consumption not recorded otherwise."""
    recorded = sum(s["kwh_milli"] * MJ_PER_WH for s in sources if s["kwh_milli"] is not None)
    out, total = [], 0
    for src in sources:
        mj = src["kwh_milli"] * MJ_PER_WH if src["kwh_milli"] is not None else consumed_mj - recorded
        cost = mj * src["cny_per_kwh_micro"] // MJ_PER_KWH
        total += cost
        out.append(
            {
                "source": src["source"],
                "kwh": kwh(mj),
                "cny_per_kwh": str(Decimal(src["cny_per_kwh_micro"]) / 1_000_000),
                "cny": fixed(Decimal(cost) / 1_000_000, "0.01"),
            }
        )
    return out, total


def split_energy(facility: int, it_mj: int, idle_it: int, attributed_it: int) -> dict:
    """The facility energy as attributed + idle + others' work (the engines' counters showed
    work for requests not ours), exactly, in proportion to their IT energy (mJ and kWh)."""
    parts = apportion(
        facility,
        {
            "attributed": max(0, attributed_it),
            "idle": max(0, idle_it),
            "unattributed": max(0, it_mj - idle_it - attributed_it),
        },
    )
    out: dict = {
        "it_mj": it_mj,
        "facility_mj": facility,
        "facility_kwh": kwh(facility),
        "reconciles": RECONCILES,
    }
    for k, v in parts.items():
        out[f"{k}_mj"] = v
        out[f"{k}_kwh"] = kwh(v)
    return out


def rows(names: dict[str, str], tokens: dict, revenue: dict, own_it: dict, energy: dict) -> list[dict]:
    """One row per model or customer: its own energy and its part of the idle energy, both in
    proportion to its own shares' IT energy."""
    weights = {k: own_it.get(k, 0) for k in names}
    own = apportion(energy["attributed_mj"], weights)
    idle = apportion(energy["idle_mj"], weights)
    out = []
    for key in sorted(names, key=lambda k: names[k]):
        mj = own[key] + idle[key]
        tok = tokens.get(key, 0)
        out.append(
            {
                "name": names[key],
                "tokens": tok,
                "revenue_usd": usd(revenue.get(key, 0)),
                "own_mj": own[key],
                "idle_mj": idle[key],
                "energy_mj": mj,
                "own_kwh": kwh(own[key]),
                "idle_kwh": kwh(idle[key]),
                "energy_kwh": kwh(mj),
                "kwh_per_million_tokens": per_million(Decimal(mj) / MJ_PER_KWH, tok),
            }
        )
    return out


def method(total_mj: int, estimated_mj: int) -> dict:
    """Measured (NVML, RAPL, exporters) or estimated (a power model), from the windows' method."""
    if total_mj == 0:
        kind = "none"
    elif estimated_mj == 0:
        kind = "measured"
    elif estimated_mj == total_mj:
        kind = "estimated"
    else:
        kind = "mixed"
    measured, estimated = ratio(total_mj - estimated_mj, total_mj), ratio(estimated_mj, total_mj)
    label = METHOD_LABELS.get(kind) or (
        f"mixed: {Decimal(measured) * 100:.1f} % measured, {Decimal(estimated) * 100:.1f} % estimated"
    )
    return {"method": kind, "label": label, "measured_share": measured, "estimated_share": estimated}


def missing(doc: dict, tariff: bool, cost_micro_cny: int) -> dict[str, str]:
    """Every null figure of the report: what is missing, and the command that sets it."""
    p = doc["period"]
    no_tariff = f"no tariff for {p}: tokenport energy tariff --period {p} --cny-per-kwh X"
    no_fx = f"no CNY/USD rate for {p}: tokenport fx set --period {p} --cny-per-usd X"
    no_energy = (
        f"no energy metered in {p} (backends no [[energy.nodes]] covers are not metered; docs/energy.md)"
    )
    out: dict[str, str] = {}
    if doc["electricity"]["cny"] is None:
        out["electricity.cny"] = no_tariff
    if doc["cny_per_usd"] is None:
        out["cny_per_usd"] = out["revenue_cny"] = no_fx
    if doc["value_multiple"] is None:
        out["value_multiple"] = _no_value_multiple(doc, tariff, no_fx, no_tariff)
    if doc["kwh_per_million_tokens"] is None:
        out["kwh_per_million_tokens"] = f"no tokens in {p}"
    for k in ("measured_share", "estimated_share"):
        if doc["energy"][k] is None:
            out[f"energy.{k}"] = no_energy
    out.update(_rows_without_tokens(doc))
    return out


def _no_value_multiple(doc: dict, tariff: bool, no_fx: str, no_tariff: str) -> str:
    """Why revenue over electricity cost is null: no rate, no tariff, or a cost of zero."""
    why = [no_fx] if doc["cny_per_usd"] is None else []
    why += [no_tariff] if not tariff else []
    if not why:
        why = [f"the electricity cost of {doc['period']} is 0 CNY (nothing consumed, or a zero tariff)"]
    return "; ".join(why)


def _rows_without_tokens(doc: dict) -> dict[str, str]:
    """The models' and customers' rows whose energy per token is null."""
    return {
        f"{group}.{r['name']}.kwh_per_million_tokens": f"no tokens in {doc['period']}"
        for group in ("by_model", "by_customer")
        for r in doc[group]
        if r["kwh_per_million_tokens"] is None
    }
