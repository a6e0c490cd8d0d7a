"""Admission state in a real Redis, with SQLite or PostgreSQL as the ledger: holds and buckets in
Redis only, the mirror following the database, reloads, conflicts, an unreachable Redis, and
the change broadcast."""

from __future__ import annotations

import asyncio
import socket
import threading
from datetime import timedelta

import orjson
import pytest
import redis
from sqlalchemy import Engine, func, select
from support.admission import HOLD, Harness

from tokenport.clock import FakeClock
from tokenport.gateway.billing import MirrorReloads
from tokenport.gateway.changes import ChangeFeed
from tokenport.gateway.charging import charging_for
from tokenport.store.billing import BillingStore
from tokenport.store.broadcast import announce_changes, listen
from tokenport.store.feed import FeedStore
from tokenport.store.redis_keys import Keys
from tokenport.store.redis_state import RedisState
from tokenport.store.schema import credit_lots, holds, key_spend
from tokenport.store.shared import Ask, Grant, SharedStore
from tokenport.store.usage import is_transient

pytestmark = pytest.mark.redis


@pytest.fixture
def h(engine: Engine, clock: FakeClock, redis_url: str) -> Harness:
    return Harness(engine, clock, redis_url)


def _mirrored_lots(h: Harness) -> dict[str, int]:
    assert h.redis is not None
    raw = h.redis.sync.hgetall(Keys(h.tenant.id).lots)
    return {k.decode(): orjson.loads(v)[-1] for k, v in raw.items()}


def _database_lots(h: Harness) -> dict[str, int]:
    with h.engine.connect() as conn:
        q = select(credit_lots.c.id, credit_lots.c.remaining).where(credit_lots.c.tenant_id == h.tenant.id)
        return {i: int(n) for i, n in conn.execute(q)}


def test_holds_live_in_redis_and_the_mirror_follows_the_database(h: Harness) -> None:
    h.billing.grant("acme", "1")
    key = h.key(budget_nano_usd=10**9, budget_period="day")
    charging = h.process()
    assert h.admit("req_1", key, charging) == "ok"
    assert charging.fast.loads == 1, "the tenant was loaded from the database at its first admission"
    assert h.held() == HOLD
    with h.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(holds)).scalar_one() == 0

    cost = h.settle("req_1", key)
    assert h.held() == 0, "settlement released the hold"
    assert _mirrored_lots(h) == _database_lots(h) == {lot: 10**9 - cost for lot in _database_lots(h)}
    with h.engine.connect() as conn:
        spent = dict(conn.execute(select(key_spend.c.period, key_spend.c.spent)).all())
    spend = {k.decode(): int(v) for k, v in h.redis.sync.hgetall(Keys(h.tenant.id).spend).items()}
    assert sorted(spend.values()) == sorted(spent.values()) == [cost, cost]

    h.usage.write_settlements([h.item])  # a retried batch: the mirror does not move
    assert _mirrored_lots(h) == _database_lots(h)


def test_a_grant_reaches_the_mirror_through_the_feed_and_a_restart_reloads(h: Harness) -> None:
    h.billing.grant("acme", "0.00015")  # one hold
    key = h.key()
    charging = h.process()
    assert h.admit("req_1", key, charging) == "ok"
    assert h.admit("req_2", key, charging) == "insufficient_quota"

    lot = h.billing.grant("acme", "0.00015")  # made elsewhere (the CLI): not mirrored yet
    assert lot.id not in _mirrored_lots(h)
    assert h.admit("req_2", key, charging) == "insufficient_quota", "a stale mirror errs low"
    tx_ids = [tx.id for tx in BillingStore(h.engine).load_transactions() if tx.kind == "grant"]
    MirrorReloads(h.redis, BillingStore(h.engine), h.clock).apply([(1, "ledger", t) for t in tx_ids])
    assert lot.id in _mirrored_lots(h)
    assert h.admit("req_2", key, charging) == "ok"
    assert h.admit("req_3", key, charging) == "insufficient_quota"

    h.redis.forget()  # a process starting: every tenant loads again, holds stay
    fresh = h.process()
    assert h.admit("req_3", key, fresh) == "insufficient_quota"
    assert h.held() == 2 * HOLD


def test_an_admission_that_raced_another_process_reads_again(h: Harness) -> None:
    h.billing.grant("acme", "0.00015")  # one hold
    store = RedisState(h.redis_url, h.engine)
    other = RedisState(h.redis_url, h.engine)
    at = h.clock.now()
    calls = []

    def decide(view) -> Grant:
        calls.append(view.held)
        if len(calls) == 1:  # another process admits between this one's read and its write
            _admit_elsewhere(other, h, at)
        if view.held + HOLD > 150_000:
            raise RuntimeError("no credit")
        return Grant(hold=HOLD, expires_at=at + timedelta(minutes=30))

    async def scenario():
        return await store.admit_many([(Ask("req_mine", h.tenant.id, "key_a", at, money=True), decide)])

    (result,) = asyncio.run(scenario())
    assert store.conflicts == 1
    assert calls == [0, HOLD], "decided again on the other process's hold"
    assert isinstance(result, RuntimeError)
    assert h.held() == HOLD


def _admit_elsewhere(other: RedisState, h: Harness, at) -> None:
    """Another process's admission, to the end, in a thread with its own event loop."""

    def run() -> None:
        grant = Grant(hold=HOLD, expires_at=at + timedelta(minutes=30))
        ask = Ask("req_other", h.tenant.id, "key_b", at, money=True)
        asyncio.run(other.admit_many([(ask, lambda view: grant)]))

    t = threading.Thread(target=run)
    t.start()
    t.join(10)


def test_an_unreachable_redis_is_a_503_and_settlements_wait_for_it(h: Harness) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = RedisState(f"redis://127.0.0.1:{port}", h.engine)
    charging = charging_for(h.state, SharedStore(h.engine), fast=down)
    h.billing.grant("acme", "1")
    assert h.admit("req_1", h.key(), charging) == "admission_unavailable"
    assert is_transient(redis.ConnectionError("down")), "the usage writer retries; nothing is dead-lettered"


def test_a_committed_change_is_announced_and_wakes_the_feed(engine: Engine, redis_url: str, clock) -> None:
    from tokenport.store.tenants import TenantStore
    from tokenport.tenancy.service import TenancyService

    woken: list[int] = []
    stop = announce_changes(engine, redis_url)
    feed = ChangeFeed(FeedStore(engine), [], interval=60)  # its own poll would take a minute

    async def scenario() -> None:
        feed.start()
        listener = asyncio.create_task(listen(redis_url, lambda i: (woken.append(i), feed.wake(i))))
        runner = asyncio.create_task(feed.run())
        await asyncio.sleep(0.3)  # subscribed
        before = feed._head[0]
        await asyncio.to_thread(TenancyService(TenantStore(engine), "overseas", clock).create_tenant, "new")
        new = [r[0] for r in FeedStore(engine).window(before, 10**9)]  # committed by now
        for _ in range(100):  # a second, where the feed's own poll would take a minute
            if sorted(woken) == new and feed._head[0] == max(new):
                break
            await asyncio.sleep(0.01)
        listener.cancel()
        runner.cancel()
        assert new and sorted(woken) == new, "each commit announced its change"
        assert feed._head[0] == max(new), "the feed polled at once"

    try:
        asyncio.run(scenario())
    finally:
        stop()
