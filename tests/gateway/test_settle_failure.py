"""A settlement that fails (a bug) never leaves a hold behind and never reaches the client as a
500: the settler logs it, counts it in /metrics and releases the request's holds."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from prometheus_client import generate_latest
from support.admission import HOLD, Harness

from tokenport.billing.accountant import Accountant
from tokenport.billing.budgets import KeyBudgets
from tokenport.billing.ledger import Ledger, Lot, grant_tx
from tokenport.billing.prices import Price, PriceBook
from tokenport.clock import FakeClock
from tokenport.gateway.charging import charging_for
from tokenport.gateway.context import RequestContext
from tokenport.gateway.metrics import Metrics
from tokenport.gateway.ratelimit import RateLimiter
from tokenport.gateway.relay import Outcome
from tokenport.gateway.settle import Settler
from tokenport.gateway.sse import Counts
from tokenport.tenancy.keys import KeyRecord

T0 = datetime(2026, 1, 1, tzinfo=UTC)
PRICE = Price("m", T0, input=300_000, output=1_200_000, cached=30_000)


class Writer:
    def __init__(self) -> None:
        self.items: list[dict] = []

    def submit(self, item: dict) -> None:
        self.items.append(item)


def test_a_failed_settlement_releases_the_holds():
    ledger = Ledger()
    lot = Lot("lot", "t", 10**9, False, T0, None)
    ledger.add_lot(lot)
    ledger.post(grant_tx("g", lot))
    state = SimpleNamespace(accountant=Accountant(ledger, PriceBook([PRICE])), budgets=KeyBudgets())
    charging = charging_for(state)
    key = KeyRecord(
        "k", "t", "tenant", "overseas", "h", None, False, budget_nano_usd=10**9, budget_period="day"
    )
    at = T0 + timedelta(minutes=1)
    state.accountant.reserve("req_1", "t", 500_000, at)
    state.budgets.reserve("k", "req_1", 10**9, "day", 500_000, at)
    assert charging.held("t", at) == 500_000

    clock = FakeClock(at)
    metrics = Metrics()
    settler = Settler(Writer(), metrics, clock, charging, RateLimiter(clock))
    ctx = RequestContext("req_1", "chat", at, clock.monotonic(), key=key, price=PRICE, model="m", backend="b")
    ctx.zone = "overseas"
    # Counts that got past the guard (the bug of issue 17: prometheus refuses a negative count)
    out = Outcome(status=200, counts=Counts(prompt=-10, completion=5), usage_source="engine")

    assert settler.settle(ctx, out) is None  # logged, not raised
    assert charging.held("t", at) == 0
    state.budgets.reserve("k", "req_2", 10**9, "day", 10**9, at)  # the key's whole budget is free again
    assert b"tokenport_settle_failures_total 1.0" in generate_latest(metrics.registry)


@pytest.fixture(params=["database", pytest.param("redis", marks=pytest.mark.redis)])
def h(request, engine, clock) -> Harness:
    if request.param == "database":
        return Harness(engine, clock)
    return Harness(engine, clock, request.getfixturevalue("redis_url"))


def test_a_failed_settlement_releases_a_shared_hold(h: Harness) -> None:
    """Shared mode: the hold lives in the database (or Redis); it is released, not left to expire."""
    h.billing.grant("acme", "1")
    key, charging = h.key(), h.process()
    now = h.clock.now()

    async def admit_then_fail() -> None:
        assert await h.admit_async("req_s", key, charging) == "ok"
        assert h.held() == HOLD
        settler = Settler(Writer(), Metrics(), h.clock, charging, RateLimiter(h.clock, local=False))
        price = h.state.accountant.quote("m", now)
        ctx = RequestContext("req_s", "chat", now, h.clock.monotonic(), key=key, price=price, model="m")
        out = Outcome(status=200, counts=Counts(prompt=-10, completion=5), usage_source="engine")
        assert settler.settle(ctx, out) is None
        for _ in range(100):  # released in the background, on this loop
            if not charging._releasing:
                break
            await asyncio.sleep(0.02)

    asyncio.run(admit_then_fail())
    assert h.held() == 0
