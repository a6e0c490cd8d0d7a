"""The green report and the value-chain report as CSV or self-contained HTML (with an inline SVG
chart: no scripts, nothing fetched). Plain Python."""

from __future__ import annotations

import csv
import io
from decimal import Decimal
from html import escape

from tokenport.energy.units import kwh


def na(doc: dict, field: str, value: object) -> object:
    """A figure as shown: never None, but what is missing and the command that supplies it."""
    if value is not None:
        return value
    return "n/a: " + doc.get("missing", {}).get(field, "not available")


def green_csv(doc: dict) -> str:
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["field", "value"])
    for key in ("tenant", "zone", "period", "final", "tokens", "energy_kwh", "green_kwh", "green_share"):
        w.writerow([key, na(doc, key, doc[key])])
    w.writerow(["co2_location_g", doc["co2_location_g"]])
    w.writerow(["co2_market_g", doc["co2_market_g"]])
    for key, value in doc["intensity"].items():
        w.writerow([key, na(doc, f"intensity.{key}", value)])
    for key in ("pue", "alpha", "grid_g_per_kwh", "residual_g_per_kwh", "measured_share", "estimated_share"):
        w.writerow([f"method.{key}", na(doc, f"method.{key}", doc["method"][key])])
    for cert in doc["certificates"]:
        w.writerow(["certificate", f"{cert['id']}:{cert['kwh']} kWh"])
    return out.getvalue()


ROW_HEAD = ["name", "tokens", "revenue (USD)", "own kWh", "idle kWh", "energy kWh", "kWh per million tokens"]


def _rows(doc: dict, group: str) -> list[list]:
    """A group's rows, then the lines that take them to the metered total: the idle energy no row
    took (only when no request had energy), others' work, and the total."""
    out = [
        [
            r["name"],
            r["tokens"],
            r["revenue_usd"],
            r["own_kwh"],
            r["idle_kwh"],
            r["energy_kwh"],
            na(doc, f"{group}.{r['name']}.kwh_per_million_tokens", r["kwh_per_million_tokens"]),
        ]
        for r in doc[group]
    ]
    e = doc["energy"]
    own = sum(r["own_mj"] for r in doc[group])
    idle = sum(r["idle_mj"] for r in doc[group])
    out.append(
        ["all of the above", doc["tokens"], doc["revenue_usd"], kwh(own), kwh(idle), kwh(own + idle), ""]
    )
    if idle < e["idle_mj"]:
        rest = e["idle_mj"] - idle
        out.append(["idle, not spread (no request had energy)", "", "", "", kwh(rest), kwh(rest), ""])
    out.append(["others' work (unattributed)", "", "", "", "", e["unattributed_kwh"], ""])
    out.append(
        ["metered total (facility)", "", "", e["attributed_kwh"], e["idle_kwh"], e["facility_kwh"], ""]
    )
    return out


def _facts(doc: dict) -> list[list]:
    e, el = doc["energy"], doc["electricity"]
    cny = na(doc, "electricity.cny", el["cny"])
    rate = na(doc, "cny_per_usd", doc["cny_per_usd"])
    revenue_cny = doc["revenue_cny"]
    revenue = f"{doc['revenue_usd']} USD" + (
        f" = {revenue_cny} CNY at {rate} CNY/USD" if revenue_cny is not None else f" ({rate})"
    )
    return [
        [
            "electricity bought",
            f"{el['kwh']} kWh" + (f", {cny} CNY" if el["cny"] is not None else f" ({cny})"),
        ],
        *(
            [f"  {s['source']}", f"{s['kwh']} kWh at {s['cny_per_kwh']} CNY/kWh = {s['cny']} CNY"]
            for s in el["sources"]
        ),
        ["tokens produced", doc["tokens"]],
        ["revenue", revenue],
        ["value multiple (revenue / electricity)", na(doc, "value_multiple", doc["value_multiple"])],
        ["kWh per million tokens", na(doc, "kwh_per_million_tokens", doc["kwh_per_million_tokens"])],
        ["green share", doc["green_share"]],
        ["PUE", doc["pue"]],
        [
            "energy metered",
            f"{doc['metered_kwh']} kWh at the nodes, {e['facility_kwh']} kWh x PUE: {e['label']}",
        ],
        [
            "energy, reconciled",
            f"requests' own {e['attributed_kwh']} + idle {e['idle_kwh']} + others' work "
            f"{e['unattributed_kwh']} = {e['facility_kwh']} kWh ({e['reconciles']})",
        ],
    ]


def economics_text(doc: dict) -> str:
    lines = [f"Value chain {doc['period']}"]
    lines += [f"  {k}: {v}" for k, v in _facts(doc)[:-1]]
    e = doc["energy"]
    lines.append(
        f"  energy, reconciled: requests' own {e['attributed_kwh']} + idle {e['idle_kwh']} + others' work "
        f"{e['unattributed_kwh']} = {e['facility_kwh']} kWh (exact in mJ: --format json)"
    )
    widths = (36, 12, 14, 16, 16, 16, 24)
    for group, title in (("by_model", "Per model"), ("by_customer", "Per customer")):
        lines.append(f"{title}:")
        for r in [ROW_HEAD, *_rows(doc, group)]:
            cells = [
                str(c).ljust(w) if i == 0 else str(c).rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            ]
            lines.append("  " + " ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def economics_csv(doc: dict) -> str:
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["group", *ROW_HEAD])
    for group in ("by_model", "by_customer"):
        for r in _rows(doc, group):
            w.writerow([group[3:], *r])
    w.writerow([])
    for key in (
        "period",
        "tokens",
        "revenue_usd",
        "cny_per_usd",
        "revenue_cny",
        "value_multiple",
        "kwh_per_million_tokens",
        "green_share",
    ):
        w.writerow(["total", key, na(doc, key, doc[key])])
    w.writerow(["total", "electricity_kwh", doc["electricity"]["kwh"]])
    w.writerow(["total", "electricity_cny", na(doc, "electricity.cny", doc["electricity"]["cny"])])
    e = doc["energy"]
    for key in ("facility_kwh", "attributed_kwh", "idle_kwh", "unattributed_kwh"):
        w.writerow(["total", f"energy.{key}", e[key]])
    w.writerow(["total", "energy.method", e["label"]])
    for key in ("measured_share", "estimated_share"):
        w.writerow(["total", f"energy.{key}", na(doc, f"energy.{key}", e[key])])
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
    keys = ("tenant", "zone", "period", "tokens", "energy_kwh", "green_kwh", "green_share")
    facts = [[k, na(doc, k, doc[k])] for k in keys]
    facts += [["co2_location_g", doc["co2_location_g"]], ["co2_market_g", doc["co2_market_g"]]]
    facts += [[k, na(doc, f"intensity.{k}", v)] for k, v in doc["intensity"].items()]
    facts += [
        [f"{k} (energy)", na(doc, f"method.{k}", doc["method"][k])]
        for k in ("measured_share", "estimated_share")
    ]
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
    chart = _bars(
        [
            ("electricity (CNY)", Decimal(doc["electricity"]["cny"] or 0)),
            ("token revenue (CNY)", Decimal(doc["revenue_cny"] or 0)),
        ],
        "CNY",
    )
    per_model = _bars([(r["name"], Decimal(r["revenue_usd"])) for r in doc["by_model"]], "USD")
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Value chain {escape(doc['period'])}</title>"
        f"{_STYLE}</head><body><h1>Green electricity to USD: {escape(doc['period'])}</h1>"
        f"{_table(_facts(doc), ['', ''])}<h2>Electricity in, revenue out</h2>{chart}"
        f"<h2>Revenue per model</h2>{per_model}<h2>Per model</h2>{_table(_rows(doc, 'by_model'), ROW_HEAD)}"
        f"<h2>Per customer</h2>{_table(_rows(doc, 'by_customer'), ROW_HEAD)}"
        f"<p>Energy reconciles {escape(doc['energy']['reconciles'])}.</p></body></html>"
    )
