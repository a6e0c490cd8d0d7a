"""The green report and the value-chain report as CSV or self-contained HTML (with an inline SVG
chart: no scripts, nothing fetched). Plain Python."""

from __future__ import annotations

import csv
import io
from decimal import Decimal
from html import escape


def green_csv(doc: dict) -> str:
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["field", "value"])
    for key in ("tenant", "zone", "period", "final", "tokens", "energy_kwh", "green_kwh", "green_share"):
        w.writerow([key, doc[key]])
    w.writerow(["co2_location_g", doc["co2_location_g"]])
    w.writerow(["co2_market_g", doc["co2_market_g"]])
    for key, value in doc["intensity"].items():
        w.writerow([key, value])
    for key in ("pue", "alpha", "grid_g_per_kwh", "residual_g_per_kwh", "measured_share", "estimated_share"):
        w.writerow([f"method.{key}", doc["method"][key]])
    for cert in doc["certificates"]:
        w.writerow(["certificate", f"{cert['id']}:{cert['kwh']} kWh"])
    return out.getvalue()


def economics_csv(doc: dict) -> str:
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["group", "name", "tokens", "revenue_usd", "energy_kwh", "kwh_per_million_tokens"])
    for group in ("by_model", "by_customer"):
        for r in doc[group]:
            w.writerow(
                [
                    group[3:],
                    r["name"],
                    r["tokens"],
                    r["revenue_usd"],
                    r["energy_kwh"],
                    r["kwh_per_million_tokens"],
                ]
            )
    w.writerow([])
    for key in (
        "period",
        "tokens",
        "revenue_usd",
        "revenue_cny",
        "value_multiple",
        "kwh_per_million_tokens",
        "green_share",
    ):
        w.writerow(["total", key, doc[key]])
    w.writerow(["total", "electricity_kwh", doc["electricity"]["kwh"]])
    w.writerow(["total", "electricity_cny", doc["electricity"]["cny"]])
    return out.getvalue()


def _table(rows: list[list], head: list[str]) -> str:
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _bars(items: list[tuple[str, Decimal]], unit: str) -> str:
    """A horizontal bar chart as inline SVG."""
    top = max((v for _, v in items), default=Decimal(0)) or Decimal(1)
    rows = []
    for i, (label, value) in enumerate(items):
        width = int(360 * value / top)
        y = 10 + i * 28
        rows.append(
            f'<text x="0" y="{y + 14}">{escape(label)}</text>'
            f'<rect x="170" y="{y}" width="{width}" height="18" fill="#2e7d32"/>'
            f'<text x="{176 + width}" y="{y + 14}">{escape(str(value))} {escape(unit)}</text>'
        )
    height = 20 + 28 * len(items)
    svg = f'<svg xmlns="http://www.w3.org/2000/svg" width="720" height="{height}" font-size="12">'
    return svg + "".join(rows) + "</svg>"


_STYLE = "<style>body{font-family:sans-serif;margin:2em}td,th{padding:4px 10px;text-align:left}</style>"


def green_html(doc: dict) -> str:
    facts = [
        [k, doc[k]] for k in ("tenant", "zone", "period", "tokens", "energy_kwh", "green_kwh", "green_share")
    ]
    facts += [["co2_location_g", doc["co2_location_g"]], ["co2_market_g", doc["co2_market_g"]]]
    facts += [[k, v] for k, v in doc["intensity"].items()]
    certs = [[c["id"], c["kwh"]] for c in doc["certificates"]]
    notes = "".join(f"<li>{escape(n)}</li>" for n in doc["method"]["notes"])
    status = "final" if doc["final"] else "provisional (the period is not over)"
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>Green report {escape(doc['period'])}</title>"
        f"{_STYLE}</head><body><h1>Green tokens: {escape(doc['tenant'])}, {escape(doc['period'])}</h1>"
        f"<p>{escape(status)}</p>{_table(facts, ['figure', 'value'])}<h2>Certificates allocated</h2>"
        f"{_table(certs, ['certificate', 'kWh'])}<h2>Method</h2><ul>{notes}</ul></body></html>"
    )


def economics_html(doc: dict) -> str:
    cny = doc["electricity"]["cny"]
    chart = _bars(
        [("electricity (CNY)", Decimal(cny or 0)), ("token revenue (CNY)", Decimal(doc["revenue_cny"] or 0))],
        "CNY",
    )
    per_model = _bars([(r["name"], Decimal(r["revenue_usd"])) for r in doc["by_model"]], "USD")
    head = ["name", "tokens", "revenue (USD)", "energy (kWh)", "kWh per million tokens"]

    def rows(group: str) -> list[list]:
        return [
            [r["name"], r["tokens"], r["revenue_usd"], r["energy_kwh"], r["kwh_per_million_tokens"]]
            for r in doc[group]
        ]

    facts = [
        ["electricity bought", f"{doc['electricity']['kwh']} kWh, {cny} CNY"],
        ["tokens produced", doc["tokens"]],
        ["revenue", f"{doc['revenue_usd']} USD = {doc['revenue_cny']} CNY at {doc['cny_per_usd']}"],
        ["value multiple (revenue / electricity)", doc["value_multiple"]],
        ["kWh per million tokens", doc["kwh_per_million_tokens"]],
        ["green share", doc["green_share"]],
        ["PUE", doc["pue"]],
    ]
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Value chain {escape(doc['period'])}</title>"
        f"{_STYLE}</head><body><h1>Green electricity to USD: {escape(doc['period'])}</h1>"
        f"{_table(facts, ['', ''])}<h2>Electricity in, revenue out</h2>{chart}"
        f"<h2>Revenue per model</h2>{per_model}<h2>Per model</h2>{_table(rows('by_model'), head)}"
        f"<h2>Per customer</h2>{_table(rows('by_customer'), head)}</body></html>"
    )
