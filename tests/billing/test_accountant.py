"""Reserve, then settle: the in-memory fast path never lets concurrent requests overdraw credit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenport.billing.accountant import Accountant, InsufficientQuota, ModelNotPriced, max_cost
from tokenport.billing.ledger import Ledger, Lot, grant_tx, reversal_tx
from tokenport.billing.ledger_verify import verify
from tokenport.billing.prices import BillableTokens, Price, PriceBook

T0 = datetime(2026, 1, 1, tzinfo=UTC)
PRICE = Price("m", T0, input=300_000, output=1_200_000, cached=30_000)  # $0.30 / $1.20 / $0.03 per M


def accountant(*grants: tuple[int, bool, datetime | None]) -> Accountant:
    ledger = Ledger()
    for i, (amount, promo, expires) in enumerate(grants):
        lot = Lot(f"lot{i}", "t", amount, promo, T0 + timedelta(seconds=i), expires)
        ledger.add_lot(lot)
        ledger.post(grant_tx(f"g{i}", lot))
    return Accountant(ledger, PriceBook([PRICE, Price("free", T0, 0, 0, 0, free=True)]))


def test_quote_and_max_cost():
    a = accountant()
    assert a.quote("m", T0) == PRICE
    with pytest.raises(ModelNotPriced):
        a.quote("unpriced", T0)
    with pytest.raises(ModelNotPriced):
        a.quote("m", T0 - timedelta(seconds=1))  # not priced yet
    # 1000 input at $0.30/M + 100 output at $1.20/M = 300_000 + 120_000 nano-USD
    assert max_cost(PRICE, 1000, 100) == 420_000
    assert max_cost(Price("f", T0, 5, 5, 5, free=True), 10**6, 10**6) == 0


def test_reserve_refuses_what_holds_already_claim():
    a = accountant((1_000_000, False, None))
    a.reserve("r1", "t", 600_000, T0)
    with pytest.raises(InsufficientQuota) as exc:
        a.reserve("r2", "t", 500_000, T0)
    assert (exc.value.needed, exc.value.available) == (500_000, 400_000)
    a.release("r1")
    a.reserve("r2", "t", 500_000, T0)
    assert a.available("t", T0) == 500_000


def test_settle_posts_the_actual_cost_and_releases_the_rest():
    a = accountant((1_000_000, False, None))
    a.reserve("r1", "t", max_cost(PRICE, 1000, 100), T0)
    tokens = BillableTokens.from_openai(prompt=800, cached=200, completion=50)
    cost, tx = a.settle("x1", "r1", "t", PRICE, tokens, T0, T0)
    # 600 * 0.30 + 200 * 0.03 + 50 * 1.20 micro-USD = 180 + 6 + 60 = 246 micro-USD
    assert cost.nano == 246_000 and cost.pico == 246_000_000
    assert tx is not None and tx.request_id == "r1"
    assert a.held("t") == 0
    assert a.available("t", T0) == 1_000_000 - 246_000
    assert a.ledger.balance("revenue:usage") == 246_000


def test_free_model_holds_and_charges_nothing():
    a = accountant()
    free = a.quote("free", T0)
    assert a.reserve("r", "t", max_cost(free, 10**6, 10**6), T0) is None
    cost, tx = a.settle("x", "r", "t", free, BillableTokens(input=10**6, output=10**6), T0, T0)
    assert (cost.nano, tx) == (0, None)


def test_a_lot_expiring_mid_request_still_pays_for_it():
    a = accountant((1_000_000, True, T0 + timedelta(seconds=30)))
    a.reserve("r", "t", 500_000, T0)
    _, tx = a.settle("x", "r", "t", PRICE, BillableTokens(output=100), T0, T0 + timedelta(minutes=5))
    assert tx is not None and tx.entries[0].account == "lot:lot0"
    assert a.available("t", T0 + timedelta(minutes=5)) == 0  # expired afterwards


def test_a_too_small_hold_charges_the_receivable_never_loses_the_charge():
    a = accountant((100_000, False, None))
    cost, tx = a.settle("x", "r", "t", PRICE, BillableTokens(output=1000), T0, T0)  # 1_200_000 nano
    assert cost.nano == 1_200_000
    accounts = {e.account: e.amount for e in tx.entries}
    assert accounts == {"lot:lot0": -100_000, "receivable:t": -1_100_000, "revenue:usage": 1_200_000}
    assert verify(a.ledger.transactions, list(a.ledger.lots.values())) == []


def test_abandoned_holds_expire():
    a = accountant((1_000_000, False, None))
    a.reserve("r", "t", 900_000, T0)
    assert a.expire_holds(T0 + timedelta(minutes=29)) == 0
    assert a.expire_holds(T0 + timedelta(minutes=31)) == 1
    assert a.available("t", T0) == 1_000_000


@settings(max_examples=200, deadline=None)
@given(
    balance=st.integers(0, 5_000_000),
    requests=st.lists(
        st.tuples(st.integers(0, 4000), st.integers(1, 2000), st.floats(0, 1), st.booleans()),
        max_size=60,
    ),
)
def test_interleaved_requests_never_overdraw(balance, requests):
    """Requests reserve their maximum, then (in any interleaving) settle at most that or fail."""
    a = accountant(*([(balance, False, None)] if balance else []))
    admitted = []
    for i, (prompt, max_out, used, settle_now) in enumerate(requests):
        try:
            a.reserve(f"r{i}", "t", max_cost(PRICE, prompt, max_out), T0)
        except InsufficientQuota:
            assert max_cost(PRICE, prompt, max_out) > a.available("t", T0)
            continue
        admitted.append((i, prompt, int(max_out * used)))
        if settle_now and admitted:
            j, p, out = admitted.pop(0)
            a.settle(f"x{j}", f"r{j}", "t", PRICE, BillableTokens(input=p, output=out), T0, T0)
        assert a.available("t", T0) >= 0
    for j, p, out in admitted:
        a.settle(f"x{j}", f"r{j}", "t", PRICE, BillableTokens(input=p, output=out), T0, T0)
    assert a.held("t") == 0
    assert a.ledger.balance("receivable:t") == 0, "a hold was too small"
    assert verify(a.ledger.transactions, list(a.ledger.lots.values())) == []
    spent = sum(
        e.amount for tx in a.ledger.transactions if tx.kind == "usage" for e in tx.entries if e.amount > 0
    )
    assert a.ledger.tenant_balance("t") == balance - spent >= 0


def test_a_running_gateway_keeps_balances_not_history():
    """A restored ledger (what a gateway process holds) does not grow with every request, and
    still applies reversals made elsewhere (the store checked them)."""
    lot = Lot("lot0", "t", 10_000_000, False, T0)
    ledger = Ledger.restore([lot], {"lot:lot0": 10_000_000, "funding:paid": -10_000_000})
    a = Accountant(ledger, PriceBook([PRICE]))
    for i in range(100):
        a.reserve(f"r{i}", "t", 100_000, T0)
        a.settle(f"x{i}", f"r{i}", "t", PRICE, BillableTokens(output=10), T0, T0)
    assert ledger.transactions == [] and not ledger.charged("r0")
    assert ledger.balance("lot:lot0") == 10_000_000 - 100 * 12_000
    from tokenport.billing.ledger import Entry, Transaction

    original = Transaction(
        "x0", "usage", "t", (Entry("lot:lot0", -12_000), Entry("revenue:usage", 12_000)), T0, "r0"
    )
    ledger.post(reversal_tx("rev0", original, T0))
    assert ledger.balance("lot:lot0") == 10_000_000 - 99 * 12_000
