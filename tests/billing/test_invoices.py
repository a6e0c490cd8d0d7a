"""Invoices: a month's usage at the prices in force, equal to the ledger, immutable, voidable."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import Engine
from support.rows import usage_row as shared_usage_row

from tokenport.billing.accountant import Accountant, max_cost
from tokenport.billing.invoices import canonical, render_csv, render_html
from tokenport.billing.ledger import Ledger
from tokenport.billing.prices import BillableTokens
from tokenport.billing.service import BillingService
from tokenport.store.billing import write_transactions
from tokenport.store.repositories import billing_repositories
from tokenport.store.tenants import TenantStore
from tokenport.store.usage import UsageStore
from tokenport.tenancy.service import InvalidInput, TenancyService

NOV = datetime(2026, 11, 1, tzinfo=UTC)


def usage_row(rid, tenant_id, model, started, prompt, cached, out, cost) -> dict:
    return shared_usage_row(
        rid,
        tenant_id,
        started,
        model=model,
        prompt_tokens=prompt,
        cached_tokens=cached,
        completion_tokens=out,
        cost_nano_usd=cost,
        finished_at=started,
    )


@pytest.fixture
def billed(engine: Engine, clock):
    """A tenant with a promo and a paid lot, and November traffic across a price change."""
    clock._now = NOV - timedelta(days=5)
    tenancy = TenancyService(TenantStore(engine), "overseas", clock)
    billing = BillingService(billing_repositories(engine), tenancy, clock)
    tenant = tenancy.create_tenant("acme")
    billing.set_price("m1", "0.30", "1.20", "0.03", effective_from=NOV - timedelta(days=1))
    billing.set_price("m1", "0.20", "1.00", effective_from=NOV + timedelta(days=10))  # mid-month change
    billing.set_price("free-m", None, None, free=True, effective_from=NOV - timedelta(days=1))
    billing.grant("acme", "0.001", promo=True)
    billing.grant("acme", "10")
    lots, balances = billing.store.lot_balances()
    acct = Accountant(Ledger.restore(lots, balances), billing.price_book())
    traffic = [
        ("r1", "m1", NOV + timedelta(days=1), 1000, 200, 500),
        ("r2", "m1", NOV + timedelta(days=2), 3000, 0, 100),
        ("r3", "m1", NOV + timedelta(days=11), 1000, 200, 500),  # new price
        ("r4", "free-m", NOV + timedelta(days=3), 50, 0, 50),
        ("r5", "m1", NOV - timedelta(days=1), 10, 0, 10),  # October: not on the November invoice
    ]
    rows, txs = [], []
    for rid, model, at, prompt, cached, out in traffic:
        price = acct.quote(model, at)
        acct.reserve(rid, tenant.id, max_cost(price, prompt, out), at)
        cost, tx = acct.settle(
            f"tx_{rid}", rid, tenant.id, price, BillableTokens.from_openai(prompt, cached, out), at, at
        )
        rows.append(
            usage_row(rid, tenant.id, model, at, prompt, cached, out, None if price.free else cost.nano)
        )
        if tx is not None:
            txs.append(tx)
    with engine.begin() as conn:
        conn.execute(UsageStore(engine)._insert, rows)
        write_transactions(conn, txs)
    clock._now = NOV + timedelta(days=31)
    return billing, rows


def test_invoice_equals_the_months_usage_at_the_prices_in_force(billed):
    billing, rows = billed
    doc = billing.issue_invoice("acme", "2026-11")
    november = [r for r in rows if r["started_at"] >= NOV and r["cost_nano_usd"] is not None]
    assert doc["total_nano_usd"] == sum(r["cost_nano_usd"] for r in november)
    # by hand: r1 = 800*0.30 + 200*0.03 + 500*1.20 = 846 micro-USD; r2 = 900 + 120 = 1020;
    # r3 at the new price (cached defaults to input) = 800*0.20 + 200*0.20 + 500*1.00 = 700.
    lines = [(line["model"], line["requests"], line["amount_nano_usd"]) for line in doc["lines"]]
    assert lines == [("m1", 2, 1_866_000), ("m1", 1, 700_000)]
    assert [line["exact_usd"] for line in doc["lines"]] == [line["amount_usd"] for line in doc["lines"]]
    assert doc["total_usd"] == "0.002566000"
    # Paid by: the promo lot first (all $0.001 of it), then prepaid; nothing due.
    assert doc["payments"]["promotional_credit"]["nano_usd"] == 1_000_000
    assert doc["payments"]["prepaid_credit"]["nano_usd"] == 1_566_000
    assert doc["payments"]["amount_due"]["nano_usd"] == 0
    assert doc["status"] == "issued"


def test_issuing_twice_returns_the_same_document_and_void_issues_a_new_one(billed):
    billing, _ = billed
    first = billing.issue_invoice("acme", "2026-11")
    again = billing.issue_invoice("acme", "2026-11")
    assert again["id"] == first["id"] and again["number"] == first["number"]
    assert len(billing.list_invoices("acme")) == 1
    stored = billing.invoices.get(first["id"])
    assert (
        stored["sha256"]
        == hashlib.sha256(canonical({k: v for k, v in first.items() if k != "status"}).encode()).hexdigest()
    )
    voided = billing.void_invoice(first["id"], "wrong address")
    assert voided["status"] == "void" and voided["void"]["reason"] == "wrong address"
    with pytest.raises(InvalidInput):
        billing.void_invoice(first["id"], "twice")
    second = billing.issue_invoice("acme", "2026-11")
    assert second["id"] != first["id"] and second["number"].endswith("-2")
    assert second["total_nano_usd"] == first["total_nano_usd"]
    assert [i["status"] for i in billing.list_invoices("acme")] == ["void", "issued"]
    assert billing.invoice(first["id"])["lines"] == first["lines"], "a void never edits the document"


def test_periods_must_be_whole_past_months(billed):
    billing, _ = billed
    for bad in ("2026-13", "2026-1", "November", "2026-12"):  # 2026-12 has not ended yet
        with pytest.raises(InvalidInput):
            billing.issue_invoice("acme", bad)


def test_renderings(billed):
    billing, _ = billed
    doc = billing.issue_invoice("acme", "2026-11")
    csv_text = render_csv(doc)
    assert csv_text.splitlines()[0].startswith("model,price_from,requests")
    assert csv_text.splitlines()[-1].split(",")[-2:] == ["0.002566000", "2566000"]
    page = render_html(doc)
    assert doc["number"] in page and "0.002566000" in page and page.startswith("<!doctype html>")


def test_customer_sees_its_invoices_only(mock_server):
    """Through the API, with the tenant's own key."""
    from tokenport.store.db import open_database

    _, mine = mock_server.new_key("inv-a")
    _, theirs = mock_server.new_key("inv-b")
    engine = open_database(f"sqlite:///{mock_server.home / 'tokenport.db'}")
    tenants = {t.name: t for t in TenantStore(engine).list_tenants()}
    last_month = (datetime.now(UTC).replace(day=1) - timedelta(days=1)).replace(day=15)
    with engine.begin() as conn:
        conn.execute(
            UsageStore(engine)._insert,
            [usage_row("req_inv1", tenants["inv-a"].id, "mock-model", last_month, 10, 0, 20, None)],
        )
    engine.dispose()
    period = last_month.strftime("%Y-%m")
    issued = mock_server.cli_json("invoices", "issue", "--tenant", "inv-a", "--period", period)
    assert issued["total_nano_usd"] == 0 and issued["lines"] == []  # only a free model was used

    headers = {"Authorization": f"Bearer {mine}"}
    listing = httpx.get(mock_server.base_url + "/v1/account/invoices", headers=headers).json()
    assert [i["id"] for i in listing["data"]] == [issued["id"]]
    got = httpx.get(mock_server.base_url + f"/v1/account/invoices/{issued['id']}", headers=headers)
    assert got.status_code == 200 and got.json()["number"] == issued["number"]
    page = httpx.get(
        mock_server.base_url + f"/v1/account/invoices/{issued['id']}",
        params={"format": "html"},
        headers=headers,
    )
    assert page.headers["content-type"].startswith("text/html") and issued["number"] in page.text
    pdf = httpx.get(
        mock_server.base_url + f"/v1/account/invoices/{issued['id']}",
        params={"format": "pdf"},
        headers=headers,
    )
    assert pdf.status_code == 400 and pdf.json()["error"]["param"] == "format"  # not JSON instead
    other = httpx.get(
        mock_server.base_url + f"/v1/account/invoices/{issued['id']}",
        headers={"Authorization": f"Bearer {theirs}"},
    )
    assert other.status_code == 404 and other.json()["error"]["code"] == "not_found"
    assert (
        httpx.get(
            mock_server.base_url + "/v1/account/invoices", headers={"Authorization": f"Bearer {theirs}"}
        ).json()["data"]
        == []
    )


def test_cny_rate_per_period_converts_for_internal_reports(billed):
    billing, _ = billed
    for bad_period, bad_rate in (("2026-11", "0"), ("2026-11", "-7"), ("2026-11", "7.1234567"), ("Nov", "7")):
        with pytest.raises(InvalidInput):
            billing.set_fx_rate(bad_period, bad_rate)
    assert billing.set_fx_rate("2026-11", "7.1") == 7_100_000
    assert billing.fx_rates() == {"2026-11": 7_100_000}
    doc = billing.issue_invoice("acme", "2026-11")
    # 0.002566 USD x 7.1 = 0.0182186 CNY, to the micro-CNY, half to even
    assert doc["internal"] == {"cny_per_usd": "7.100000", "total_cny": "0.018219"}
    assert doc["currency"] == "USD" and doc["total_usd"] == "0.002566000"


def test_plan_fees_for_every_plan_in_force_during_the_month(billed, clock):
    billing, _ = billed
    issue_at = clock.now()
    billing.create_plan("pro", "200", 1000, 10000)
    billing.create_plan("max", "100", 1000, 10000)
    billing.create_plan("trial", "0", 10, 100)
    clock._now = NOV - timedelta(days=2)
    billing.assign_plan("acme", "pro")  # in force when November starts
    clock._now = NOV + timedelta(days=15)
    billing.assign_plan("acme", "max")  # switched mid-month
    clock._now = NOV + timedelta(days=20)
    billing.assign_plan("acme", "trial")  # a free plan adds no fee
    clock._now = issue_at + timedelta(hours=1)
    billing.assign_plan("acme", None)  # December: not this invoice's business
    doc = billing.issue_invoice("acme", "2026-11")
    assert [(f["plan"], f["amount_usd"]) for f in doc["plan_fees"]] == [
        ("pro", "200.000000000"),
        ("max", "100.000000000"),
    ]
    assert doc["total_nano_usd"] == 2_566_000 + 300 * 10**9
    assert doc["payments"]["amount_due"]["nano_usd"] == 300 * 10**9  # fees are billed, not taken from credit
    assert "plan fee: pro" in render_csv(doc) and "Plan fee: max" in render_html(doc)

    # The fees are in the ledger, owed by the tenant, once: re-issuing after a void posts nothing new.
    tenant_id = doc["tenant"]["id"]
    owed = {f"receivable:{tenant_id}": -300 * 10**9, "revenue:plans": 300 * 10**9}
    assert billing.store.account_balances(list(owed)) == owed
    fees = [tx for tx in billing.store.load_transactions(tenant_id) if tx.kind == "fee"]
    assert sorted(tx.id for tx in fees) == sorted(f["ledger_tx"] for f in doc["plan_fees"])
    billing.void_invoice(doc["id"], "wrong address")
    again = billing.issue_invoice("acme", "2026-11")
    assert again["number"].endswith("-2") and again["plan_fees"] == doc["plan_fees"]
    assert billing.store.account_balances(list(owed)) == owed
    assert billing.verify() == []
