"""Invoices: a period's usage, priced at the prices in force when each request started, as an
immutable document (JSON, CSV, printable HTML). Plain Python: the store supplies the rows."""

from __future__ import annotations

import csv
import html
import io
import json
from collections import defaultdict
from datetime import UTC, datetime

from tokenport.billing.ledger import Lot, Transaction
from tokenport.billing.prices import BillableTokens, PriceBook, cost_of
from tokenport.money import nano_to_usd, pico_to_nano, price_to_usd_per_m


class InvoiceConflict(Exception):
    """An invoice of that tenant, period and generation was issued concurrently."""


def canonical(doc: dict) -> str:
    """An invoice document as stored (and hashed): JSON, keys sorted, no spaces."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


class InvoiceError(ValueError):
    pass


def period_bounds(period: str) -> tuple[datetime, datetime]:
    """'2026-11' -> [2026-11-01, 2026-12-01) in UTC."""
    try:
        year, month = (int(x) for x in period.split("-"))
        start = datetime(year, month, 1, tzinfo=UTC)
    except ValueError:
        raise InvoiceError("the period must be YYYY-MM") from None
    if len(period) != 7:
        raise InvoiceError("the period must be YYYY-MM")
    end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
    return start, end


def build_invoice(
    *,
    invoice_id: str,
    number: str,
    tenant: dict,
    period: str,
    usage_rows: list[dict],
    book: PriceBook,
    charges: list[Transaction],
    lots: dict[str, Lot],
    issued_at: datetime,
    plan_fees: list[tuple[str, int]] = (),
    products: list[dict] = (),
) -> dict:
    """The document. Lines group billed requests by model and price; each line's amount is the sum
    of what was charged (rounded once per request, as the ledger holds it), beside the exact
    tokens x price. Payments say which credit paid: promotional, prepaid, or still due."""
    lines: dict[tuple, dict] = {}
    rejected = 0  # requests refused before routing (no model): never billed, counted
    for row in usage_rows:
        if row.get("model") is None:
            rejected += 1
            continue
        if row.get("cost_nano_usd") is None:
            continue
        price = book.at(row["model"], row["started_at"])
        if price is None:
            raise InvoiceError(f"request {row['request_id']} has no price in force")
        tokens = BillableTokens.from_openai(
            row["prompt_tokens"], row["cached_tokens"], row["completion_tokens"]
        )
        key = (row["model"], price.effective_from)
        line = lines.setdefault(
            key,
            {
                "model": row["model"],
                "price_from": price.effective_from.isoformat(),
                "usd_per_million": {
                    "input": price_to_usd_per_m(price.input),
                    "cached": price_to_usd_per_m(price.cached),
                    "output": price_to_usd_per_m(price.output),
                },
                "requests": 0,
                "input_tokens": 0,
                "cached_tokens": 0,
                "output_tokens": 0,
                "amount_nano_usd": 0,
                "_pico": 0,
            },
        )
        line["requests"] += 1
        line["input_tokens"] += tokens.input
        line["cached_tokens"] += tokens.cached
        line["output_tokens"] += tokens.output + tokens.reasoning
        line["amount_nano_usd"] += row["cost_nano_usd"]
        line["_pico"] += cost_of(tokens, price).pico
    out_lines = []
    for line in sorted(lines.values(), key=lambda v: (v["model"], v["price_from"])):
        line["exact_usd"] = nano_to_usd(pico_to_nano(line.pop("_pico")))
        line["amount_usd"] = nano_to_usd(line["amount_nano_usd"])
        out_lines.append(line)
    paid: dict[str, int] = defaultdict(int)
    for tx in charges:
        for e in tx.entries:
            if e.account.startswith("lot:"):
                lot = lots.get(e.account[4:])
                paid["promotional_credit" if lot is not None and lot.promo else "prepaid_credit"] -= e.amount
            elif e.account.startswith("receivable:"):
                paid["amount_due"] -= e.amount
    fees = [{"plan": name, "amount_nano_usd": fee, "amount_usd": nano_to_usd(fee)} for name, fee in plan_fees]
    fee_total = sum(f["amount_nano_usd"] for f in fees)
    package_total = sum(p["package_fees_nano_usd"] for p in products)
    paid["amount_due"] += fee_total + package_total  # fees are billed, not taken from credit
    total = sum(line["amount_nano_usd"] for line in out_lines) + fee_total + package_total
    return {
        "object": "invoice",
        "id": invoice_id,
        "number": number,
        "tenant": tenant,
        "period": period,
        "currency": "USD",
        "issued_at": issued_at.isoformat(),
        "lines": out_lines,
        "plan_fees": fees,
        **({"products": list(products)} if products else {}),
        "rejected_requests": rejected,
        "payments": {
            k: {"nano_usd": paid.get(k, 0), "usd": nano_to_usd(paid.get(k, 0))}
            for k in ("promotional_credit", "prepaid_credit", "amount_due")
        },
        "total_nano_usd": total,
        "total_usd": nano_to_usd(total),
    }


def product_lines(skus: dict[str, str], activations: list[tuple[str, int]], rows: list[dict]) -> list[dict]:
    """Per product (SKU): devices first activated in the period and their package fees, and
    the requests and tokens its devices used, by model (their cost is in the model lines)."""
    out: dict[str, dict] = {}

    def line(product_id: str) -> dict:
        return out.setdefault(
            product_id,
            {
                "sku": skus.get(product_id, product_id),
                "devices_activated": 0,
                "package_fees_nano_usd": 0,
                "by_model": {},
            },
        )

    for product_id, fee in activations:
        p = line(product_id)
        p["devices_activated"] += 1
        p["package_fees_nano_usd"] += fee
    for row in rows:
        if row.get("product_id") is None or row.get("model") is None:
            continue
        m = line(row["product_id"])["by_model"].setdefault(
            row["model"], {"requests": 0, "input_tokens": 0, "output_tokens": 0}
        )
        m["requests"] += 1
        m["input_tokens"] += row["prompt_tokens"]
        m["output_tokens"] += row["completion_tokens"]
    for p in out.values():
        p["package_fees_usd"] = nano_to_usd(p["package_fees_nano_usd"])
    return sorted(out.values(), key=lambda p: p["sku"])


REJECTED = "rejected requests (not billed)"
CSV_COLUMNS = (
    "model",
    "price_from",
    "requests",
    "input_tokens",
    "cached_tokens",
    "output_tokens",
    "amount_usd",
    "amount_nano_usd",
)


def render_csv(doc: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_COLUMNS)
    for line in doc["lines"]:
        w.writerow([line[c] for c in CSV_COLUMNS])
    for fee in doc.get("plan_fees", []):
        w.writerow(
            [f"plan fee: {fee['plan']}", "", "", "", "", "", fee["amount_usd"], fee["amount_nano_usd"]]
        )
    for p in doc.get("products", []):
        fee, fee_nano = p["package_fees_usd"], p["package_fees_nano_usd"]
        w.writerow(
            [f"packages: {p['sku']} ({p['devices_activated']} activated)", "", "", "", "", "", fee, fee_nano]
        )
    if doc.get("rejected_requests"):
        w.writerow([REJECTED, "", doc["rejected_requests"], "", "", "", "0.000000000", 0])
    w.writerow(["total", "", "", "", "", "", doc["total_usd"], doc["total_nano_usd"]])
    return buf.getvalue()


def render_html(doc: dict) -> str:
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(line['model'])}</td><td>{line['requests']}</td><td>{line['input_tokens']}</td>"
        f"<td>{line['cached_tokens']}</td><td>{line['output_tokens']}</td>"
        f"<td class=n>{e(line['amount_usd'])}</td></tr>"
        for line in doc["lines"]
    )
    rows += "".join(
        f"<tr><td colspan=5>Plan fee: {e(fee['plan'])}</td><td class=n>{e(fee['amount_usd'])}</td></tr>"
        for fee in doc.get("plan_fees", [])
    )
    rows += "".join(
        f"<tr><td colspan=5>Packages: {e(p['sku'])} ({p['devices_activated']} devices activated)</td>"
        f"<td class=n>{e(p['package_fees_usd'])}</td></tr>"
        for p in doc.get("products", [])
    )
    if doc.get("rejected_requests"):
        n = doc["rejected_requests"]
        rows += f"<tr><td>{REJECTED}</td><td>{n}</td><td colspan=3></td><td class=n>0</td></tr>"
    pays = "".join(
        f"<tr><td>{e(k.replace('_', ' '))}</td><td class=n>{e(v['usd'])}</td></tr>"
        for k, v in doc["payments"].items()
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Invoice {e(doc["number"])}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #999;padding:4px 8px}}.n{{text-align:right;font-family:monospace}}</style></head>
<body><h1>Invoice {e(doc["number"])}</h1>
<p>Tenant: {e(doc["tenant"]["name"])} &middot; Period: {e(doc["period"])}
&middot; Issued: {e(doc["issued_at"])}</p>
<table><tr><th>Model</th><th>Requests</th><th>Input tokens</th><th>Cached tokens</th><th>Output tokens</th>
<th>Amount (USD)</th></tr>{rows}
<tr><th colspan=5>Total</th><th class=n>{e(doc["total_usd"])}</th></tr></table>
<h2>Paid by</h2><table>{pays}</table></body></html>
"""
