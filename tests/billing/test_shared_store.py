"""Shared admission (several gateway processes on one database), against SQLite and PostgreSQL,
with the admission state in the database or in a real Redis: the real `Charging` in shared mode
over the real stores, many threads at once."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, insert, select, text
from support.admission import HOLD, Harness
from support.rows import usage_row

from tokenport.billing.admission import Ask, Grant, View
from tokenport.clock import FakeClock
from tokenport.gateway.admission_queue import AdmissionQueue, ThreadedStore
from tokenport.store.db import MIGRATIONS, connect
from tokenport.store.schema import credit_lots, key_spend, ledger_entries, ledger_transactions, tenants, usage
from tokenport.store.tenants import Tenant, TenantStore


@pytest.fixture(params=["database", pytest.param("redis", marks=pytest.mark.redis)])
def h(request, engine: Engine, clock: FakeClock) -> Harness:
    """Admission state in the database, or in Redis (with the database as the ledger)."""
    if request.param == "database":
        return Harness(engine, clock)
    return Harness(engine, clock, request.getfixturevalue("redis_url"))


def test_concurrent_admissions_hold_exactly_what_the_credit_covers(h: Harness) -> None:
    """20 processes (each its own admission path) at once on a balance that holds five."""
    h.billing.grant("acme", "0.00075")  # five holds
    key = h.key()
    results: list[str] = []
    processes = [h.process() for _ in range(20)]
    go = threading.Barrier(20)

    def one(i: int) -> None:
        go.wait()
        results.append(h.admit(f"req_{i}", key, processes[i]))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == ["insufficient_quota"] * 15 + ["ok"] * 5
    assert h.held() == 5 * HOLD


def test_one_processs_concurrent_admissions_go_in_batches_and_stay_exact(h: Harness) -> None:
    h.billing.grant("acme", "0.00075")  # five holds
    key, charging = h.key(), h.process()

    async def storm() -> list[str]:
        return await asyncio.gather(*(h.admit_async(f"req_{i}", key, charging) for i in range(40)))

    results = asyncio.run(storm())
    assert results[:5] == ["ok"] * 5 and results[5:] == ["insufficient_quota"] * 35  # in arrival order
    assert charging._queue.batches < 40 / 2, "requests that queued went to the database together"
    assert h.held() == 5 * HOLD


def test_settlement_charges_the_lots_releases_the_hold_and_is_idempotent(h: Harness) -> None:
    lot = h.billing.grant("acme", "1")
    key = h.key(budget_nano_usd=10**9, budget_period="day")
    assert h.admit("req_1", key) == "ok"
    assert h.held() == HOLD
    cost = h.settle("req_1", key)
    assert cost == 27_000
    h.usage.write_settlements([h.item])  # a retried batch writes nothing twice
    with h.engine.connect() as conn:
        charges = conn.execute(
            select(ledger_transactions.c.id).where(ledger_transactions.c.kind == "usage")
        ).all()
        remaining = conn.execute(
            select(credit_lots.c.remaining).where(credit_lots.c.id == lot.id)
        ).scalar_one()
        spend = dict(conn.execute(select(key_spend.c.period, key_spend.c.spent)).all())
    assert len(charges) == 1
    assert remaining == 10**9 - cost
    assert spend == {"day": cost, "month": cost}
    assert h.held() == 0
    assert h.billing.balance("acme").available == 10**9 - cost
    assert h.billing.verify() == []


def test_a_key_budget_counts_spend_and_holds(h: Harness) -> None:
    h.billing.grant("acme", "1")
    key = h.key(budget_nano_usd=2 * HOLD + 27_000, budget_period="day")
    assert h.admit("req_1", key) == "ok"
    assert h.admit("req_2", key) == "ok"
    assert h.admit("req_3", key) == "budget_exceeded"
    h.settle("req_1", key)  # 27,000 spent, 150,000 released: exactly room for one more hold
    assert h.admit("req_3", key) == "ok"
    assert h.admit("req_4", key) == "budget_exceeded"
    h.clock.advance(24 * 3600)  # a new day: spend starts again (yesterday's holds still count)
    h.settle("req_2", key)
    h.settle("req_3", key)
    assert h.admit("req_5", key) == "ok"


def test_an_abandoned_hold_expires(h: Harness) -> None:
    h.billing.grant("acme", "0.00015")  # one hold
    key = h.key()
    assert h.admit("req_1", key) == "ok"  # and never settled (a crash)
    assert h.admit("req_2", key) == "insufficient_quota"
    h.clock.advance(29 * 60)
    assert h.admit("req_2", key) == "insufficient_quota"
    h.clock.advance(61)
    assert h.admit("req_2", key) == "ok"


def test_tokens_per_minute_count_what_every_process_settled(h: Harness) -> None:
    h.billing.grant("acme", "1")
    key = h.key(tpm_limit=50)
    assert h.admit("req_1", key) == "ok"
    h.settle("req_1", key)  # 30 tokens
    assert h.admit("req_2", key) == "ok"
    h.settle("req_2", key)  # 60 tokens in the last minute
    assert h.admit("req_3", key) == "rate_limit_exceeded"
    h.clock.advance(61)
    assert h.admit("req_3", key) == "ok"


def test_requests_per_minute_refill_under_an_injected_clock(h: Harness) -> None:
    key = h.key(rpm_limit=2)
    h.billing.grant("acme", "1")
    assert [h.admit(f"r{i}", key) for i in range(3)] == ["ok", "ok", "rate_limit_exceeded"]
    h.clock.advance(29)
    assert h.admit("r3", key) == "rate_limit_exceeded"
    h.clock.advance(1)  # 30 s: one request refilled
    assert [h.admit("r4", key), h.admit("r5", key)] == ["ok", "rate_limit_exceeded"]


def test_upgrading_fills_the_caches_from_existing_entries(database_url: str, clock: FakeClock) -> None:
    """A database from before shared mode and zones: lot balances, key spend and zones are filled in."""
    engine = connect(database_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    now = clock.now()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0007")
    tenant = Tenant(id="ten_old", name="old", zone="overseas", created_at=now)
    with engine.begin() as conn:  # as 0007 knew it (no zones, no audit log yet)
        conn.execute(insert(tenants).values(id=tenant.id, name=tenant.name, zone=tenant.zone, created_at=now))
    with engine.begin() as conn:  # as 0007 wrote them: a grant of $2, $0.5 spent, one usage record
        conn.execute(
            text(
                "INSERT INTO credit_lots (id, tenant_id, amount, promo, created_at) "
                "VALUES (:l, :t, :a, :p, :c)"
            ),
            {"l": "lot_old", "t": tenant.id, "a": 2 * 10**9, "p": False, "c": now},
        )
        for tx, kind, entries in (
            ("tx_g", "grant", [("funding:paid", -2 * 10**9), ("lot:lot_old", 2 * 10**9)]),
            ("tx_u", "usage", [("lot:lot_old", -(10**9) // 2), ("revenue:usage", 10**9 // 2)]),
        ):
            conn.execute(
                insert(ledger_transactions).values(
                    id=tx,
                    kind=kind,
                    tenant_id=tenant.id,
                    created_at=now,
                    request_id="req_old" if kind == "usage" else None,
                )
            )
            conn.execute(
                insert(ledger_entries), [{"tx_id": tx, "account": a, "amount": n} for a, n in entries]
            )
        row = usage_row("req_old", tenant.id, now, key_id="key_old", cost_nano_usd=10**9 // 2)
        conn.execute(insert(usage), [row])
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    with engine.connect() as conn:
        remaining = conn.execute(
            select(credit_lots.c.remaining).where(credit_lots.c.id == "lot_old")
        ).scalar_one()
        spend = dict(conn.execute(select(key_spend.c.period, key_spend.c.spent)).all())
    assert remaining == 15 * 10**8
    assert [name for name, _ in TenantStore(engine).list_zones()] == ["overseas"]  # 0009: the zones in use
    assert spend == {"day": 10**9 // 2, "month": 10**9 // 2}
    engine.dispose()


def test_a_running_server_expires_credit_by_itself(tmp_path, clock: FakeClock) -> None:
    """The runtime's expiry task posts what `credits expire` would, 31 minutes after the date."""
    from tokenport.config import settings_from_dict
    from tokenport.runtime import Runtime

    settings = settings_from_dict(
        {"engine": {"enabled": False}, "billing": {"expire_credits_every_s": 0.02}}, tmp_path
    )
    rt = Runtime(settings, clock, say=lambda _: None)
    rt.tenancy.create_tenant("lapsing")
    lot = rt.billing_service.grant("lapsing", "3", promo=True, expires_at=clock.now() + timedelta(days=1))

    async def run_until(predicate, timeout: float = 5.0) -> bool:
        task = asyncio.create_task(rt._every(0.02, rt._expire_due_credits, "credit expiry", True))
        try:
            loop = asyncio.get_running_loop()
            end = loop.time() + timeout
            while loop.time() < end:
                if predicate():
                    return True
                await asyncio.sleep(0.02)
            return False
        finally:
            task.cancel()

    def expired() -> bool:
        return rt.billing_service.balance("lapsing").lots[0].remaining == 0

    clock.advance(24 * 3600 + 30 * 60)  # past the date, within the grace period: not yet
    assert asyncio.run(run_until(expired, 0.3)) is False
    clock.advance(2 * 60)
    assert asyncio.run(run_until(expired)) is True
    txs = [tx for tx in rt.billing_service.store.load_transactions() if tx.kind == "expiry"]
    assert [tx.id for tx in txs] == [f"exp_{lot.id}"]
    assert rt.billing_service.verify() == []
    rt.db.dispose()


def test_a_request_that_goes_away_during_admission_leaves_no_hold(h: Harness) -> None:
    h.billing.grant("acme", "1")
    at = h.clock.now()
    queue = AdmissionQueue(h.redis or ThreadedStore(h.shared))

    def slow_grant(view: View) -> Grant:  # the client hangs up while this runs
        time.sleep(0.3)
        return Grant(hold=HOLD, expires_at=at + timedelta(minutes=30))

    async def scenario() -> None:
        task = asyncio.create_task(
            queue.admit(Ask("req_gone", h.tenant.id, "key_a", at, money=True), slow_grant)
        )
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        while queue._tasks:  # the batch finishes, then its orphan is released
            await asyncio.sleep(0.02)

    asyncio.run(scenario())
    assert queue.batches == 1
    assert h.held() == 0
    queue.close()
