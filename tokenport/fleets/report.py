"""A maker's fleet report for a month: the funnel per product (imported → activated → active in
the last 7 days), tokens per device per day (p50 / p90 / p99), devices at their cap today, the
pool's burn rate and runway, cost per device against the package fee, and the top devices.

Plain Python over figures the store summed (`FleetReportInputs`); rendered as JSON, CSV or HTML."""

from __future__ import annotations

import csv
import html
import io
import math
from dataclasses import dataclass, field

from tokenport.money import nano_to_usd

TOP = 10


@dataclass
class ProductFigures:
    product_id: str
    sku: str
    package_fee_nano: int
    imported: int = 0
    activated: int = 0
    active_7d: int = 0
    at_cap_today: int = 0
    requests: int = 0
    tokens: int = 0
    cost_nano: int = 0


@dataclass
class FleetReportInputs:
    fleet: str
    period: str
    generated_at: str
    products: list[ProductFigures]
    device_days: list[int] = field(default_factory=list)  # tokens of each (device, local day) in the month
    devices: list[tuple[str, str, int, int, int]] = field(
        default_factory=list
    )  # serial, product, req, tok, cost
    available_nano: int = 0  # the maker's spendable credit now
    spent_7d_nano: int = 0  # what the maker spent in the last 7 days (usage and package fees)


def percentile(values: list[int], p: int) -> int | None:
    """Nearest rank: the smallest value with at least p % of the values at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p * len(ordered) / 100) - 1)]


def _product_view(p: ProductFigures) -> dict:
    per_device = p.cost_nano // p.active_7d if p.active_7d else None
    return {
        "sku": p.sku,
        "imported": p.imported,
        "activated": p.activated,
        "active_7d": p.active_7d,
        "at_cap_today": p.at_cap_today,
        "requests": p.requests,
        "tokens": p.tokens,
        "cost_usd": nano_to_usd(p.cost_nano),
        "cost_per_active_device_usd": nano_to_usd(per_device) if per_device is not None else None,
        "package_fee_usd": nano_to_usd(p.package_fee_nano),
    }


def build_report(inputs: FleetReportInputs) -> dict:
    burn = inputs.spent_7d_nano // 7  # per day
    skus = {p.product_id: p.sku for p in inputs.products}
    top = sorted(inputs.devices, key=lambda d: (-d[3], d[0]))[:TOP]
    return {
        "object": "fleet_report",
        "fleet": inputs.fleet,
        "period": inputs.period,
        "generated_at": inputs.generated_at,
        "products": [_product_view(p) for p in sorted(inputs.products, key=lambda p: p.sku)],
        "tokens_per_device_day": {
            "device_days": len(inputs.device_days),
            **{f"p{p}": percentile(inputs.device_days, p) for p in (50, 90, 99)},
        },
        "pool": {
            "available_usd": nano_to_usd(inputs.available_nano),
            "burn_usd_per_day": nano_to_usd(burn),
            "runway_days": inputs.available_nano // burn if burn else None,
        },
        "top_devices": [
            {"serial": s, "sku": skus.get(p, p), "requests": r, "tokens": t, "cost_usd": nano_to_usd(c)}
            for s, p, r, t, c in top
        ],
    }


PRODUCT_COLUMNS = ("sku", "imported", "activated", "active_7d", "at_cap_today", "requests", "tokens",
                   "cost_usd", "cost_per_active_device_usd", "package_fee_usd")  # fmt: skip


def report_csv(doc: dict) -> str:
    """One row per product, then the fleet's figures as (name, value) rows."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(PRODUCT_COLUMNS)
    for p in doc["products"]:
        w.writerow([p[c] if p[c] is not None else "" for c in PRODUCT_COLUMNS])
    w.writerow([])
    for name, value in doc["tokens_per_device_day"].items():
        w.writerow([f"tokens_per_device_day.{name}", "" if value is None else value])
    for name, value in doc["pool"].items():
        w.writerow([f"pool.{name}", "" if value is None else value])
    for d in doc["top_devices"]:
        w.writerow(["top_device", d["serial"], d["sku"], d["requests"], d["tokens"], d["cost_usd"]])
    return buf.getvalue()


def report_html(doc: dict) -> str:
    e = html.escape

    def cell(v: object) -> str:
        return f"<td>{e('' if v is None else str(v))}</td>"

    head = "".join(f"<th>{e(c)}</th>" for c in PRODUCT_COLUMNS)
    rows = "".join("<tr>" + "".join(cell(p[c]) for c in PRODUCT_COLUMNS) + "</tr>" for p in doc["products"])
    figures = {**{f"tokens per device-day {k}": v for k, v in doc["tokens_per_device_day"].items()},
               **{f"pool {k.replace('_', ' ')}": v for k, v in doc["pool"].items()}}  # fmt: skip
    facts = "".join(f"<tr><th>{e(k)}</th>{cell(v)}</tr>" for k, v in figures.items())
    top = "".join(
        f"<tr>{cell(d['serial'])}{cell(d['sku'])}{cell(d['requests'])}{cell(d['tokens'])}{cell(d['cost_usd'])}</tr>"
        for d in doc["top_devices"]
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Fleet {e(doc["fleet"])}, {e(doc["period"])}</title></head>
<body><h1>Fleet {e(doc["fleet"])} &middot; {e(doc["period"])}</h1>
<table><tr>{head}</tr>{rows}</table><table>{facts}</table>
<h2>Top devices</h2><table><tr><th>serial</th><th>sku</th><th>requests</th><th>tokens</th><th>cost</th></tr>
{top}</table></body></html>
"""
