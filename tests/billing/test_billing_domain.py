"""Billing domain, no I/O: integer money, token conventions, the price book, and the ledger
(including a stateful property test of its invariants)."""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tokenport.billing.ledger import (
    FUNDING_PAID,
    FUNDING_PROMO,
    REVENUE_BREAKAGE,
    REVENUE_PLANS,
    REVENUE_USAGE,
    DuplicateCharge,
    Entry,
    InsufficientFunds,
    Ledger,
    LedgerError,
    Lot,
    Transaction,
    expiry_tx,
    fee_tx,
    fee_tx_id,
    grant_tx,
    reversal_tx,
    usage_tx,
)
from tokenport.billing.ledger_verify import verify
from tokenport.billing.prices import BillableTokens, Cost, Price, PriceBook, cost_of
from tokenport.money import (
    MoneyError,
    nano_to_usd,
    pico_to_nano,
    price_to_usd_per_m,
    usd_per_m_to_price,
    usd_to_nano,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
MAX_DT = datetime.max.replace(tzinfo=UTC)
INT64_MAX = 2**63 - 1


def exact_nano(pico: int) -> int:
    """Reference rounding: Python rounds a Fraction half to even."""
    return round(Fraction(pico, 1000))


# --- money ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "nano"),
    [
        ("12.5", 12_500_000_000),
        ("12.50", 12_500_000_000),
        ("10", 10_000_000_000),
        ("0.000000001", 1),
        ("0.123456789", 123_456_789),
        ("-3.25", -3_250_000_000),
        ("1E+2", 100_000_000_000),
        ("0", 0),
        (7, 7_000_000_000),
        (Decimal("0.1"), 100_000_000),
    ],
)
def test_usd_to_nano_parses_exactly(text, nano: int) -> None:
    got = usd_to_nano(text)
    assert got == nano
    assert type(got) is int


@pytest.mark.parametrize(
    "text", ["0.0000000001", "12.0000000005", "abc", "", "1.2.3", "NaN", "nan", "sNaN", "Infinity", "-Inf"]
)
def test_usd_to_nano_refuses(text: str) -> None:
    with pytest.raises(MoneyError):
        usd_to_nano(text)


def test_usd_to_nano_never_rounds_silently() -> None:
    # more significant digits than Decimal's default 28-digit context: must be refused, not rounded
    with pytest.raises(MoneyError):
        usd_to_nano("1000000000000000000.0000000001")
    with pytest.raises(MoneyError):
        usd_to_nano("1.0000000000000000000000000000001")


def test_amounts_and_prices_fit_a_signed_64_bit_column() -> None:
    assert usd_to_nano("9223372036.854775807") == INT64_MAX
    with pytest.raises(MoneyError):
        usd_to_nano("9223372036.854775808")
    with pytest.raises(MoneyError):
        usd_to_nano("10000000000")  # $10 billion
    with pytest.raises(MoneyError):
        usd_to_nano("1e400")
    assert usd_per_m_to_price("9223372036854.775807") == INT64_MAX
    with pytest.raises(MoneyError):
        usd_per_m_to_price("1e30")


@given(st.integers(min_value=-INT64_MAX, max_value=INT64_MAX))
def test_nano_round_trips_through_usd_string(nano: int) -> None:
    text = nano_to_usd(nano)
    assert usd_to_nano(text) == nano
    whole, frac = text.lstrip("-").split(".")
    assert len(frac) == 9 and whole.isdigit()


@pytest.mark.parametrize(
    ("nano", "text"),
    [
        (12_500_000_000, "12.500000000"),
        (0, "0.000000000"),
        (1, "0.000000001"),
        (-1, "-0.000000001"),
        (-12_500_000_000, "-12.500000000"),
        (-1_000_000_000, "-1.000000000"),
        (123_456_789_012, "123.456789012"),
    ],
)
def test_nano_to_usd_formats(nano: int, text: str) -> None:
    assert nano_to_usd(nano) == text


@pytest.mark.parametrize(
    ("text", "price"),
    [("0.30", 300_000), ("0.3", 300_000), ("1.20", 1_200_000), ("0.000001", 1), ("15", 15_000_000), ("0", 0)],
)
def test_usd_per_m_to_price(text: str, price: int) -> None:
    got = usd_per_m_to_price(text)
    assert got == price
    assert type(got) is int
    assert usd_per_m_to_price(price_to_usd_per_m(got)) == got


@pytest.mark.parametrize("text", ["0.0000001", "0.3000001", "-0.01", "-1", "abc", "NaN", "Infinity"])
def test_usd_per_m_to_price_refuses(text: str) -> None:
    with pytest.raises(MoneyError):
        usd_per_m_to_price(text)


@pytest.mark.parametrize(
    ("pico", "nano"),
    [
        (1500, 2),
        (2500, 2),
        (2501, 3),
        (3500, 4),
        (499, 0),
        (500, 0),
        (501, 1),
        (1499, 1),
        (0, 0),
        (-1500, -2),
        (-2500, -2),
        (-2501, -3),
    ],
)
def test_pico_to_nano_rounds_half_to_even(pico: int, nano: int) -> None:
    assert pico_to_nano(pico) == nano


@given(st.integers(min_value=-(2**63) * 1000, max_value=INT64_MAX * 1000))
def test_pico_to_nano_matches_exact_rounding(pico: int) -> None:
    got = pico_to_nano(pico)
    assert type(got) is int
    assert got == exact_nano(pico)


# --- token conventions ------------------------------------------------------------------------------


def test_from_openai_splits_cached_and_reasoning() -> None:
    t = BillableTokens.from_openai(prompt=100, cached=30, completion=50, reasoning=20)
    assert t == BillableTokens(input=70, cached=30, output=30, reasoning=20)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((100, 130, 50, 0), BillableTokens(input=0, cached=100, output=50)),  # cached > prompt
        ((100, -5, 50, 0), BillableTokens(input=100, cached=0, output=50)),  # negative cached
        ((100, 0, 50, 80), BillableTokens(input=100, output=0, reasoning=50)),  # reasoning > completion
        ((100, 0, 50, -3), BillableTokens(input=100, output=50)),  # negative reasoning
    ],
)
def test_from_openai_clamps(args, expected: BillableTokens) -> None:
    assert BillableTokens.from_openai(*args) == expected


@given(
    prompt=st.integers(0, 10**7),
    cached=st.integers(-(10**7), 2 * 10**7),
    completion=st.integers(0, 10**7),
    reasoning=st.integers(-(10**7), 2 * 10**7),
)
def test_from_openai_classes_are_disjoint_and_complete(prompt, cached, completion, reasoning) -> None:
    t = BillableTokens.from_openai(prompt, cached, completion, reasoning)
    assert min(t.input, t.cached, t.output, t.reasoning) >= 0
    assert t.input + t.cached == prompt
    assert t.output + t.reasoning == completion


@given(
    prompt=st.integers(-(10**6), 10**6),
    cached=st.integers(-(10**6), 10**6),
    completion=st.integers(-(10**6), 10**6),
    reasoning=st.integers(-(10**6), 10**6),
)
def test_from_openai_never_yields_negative_tokens(prompt, cached, completion, reasoning) -> None:
    """Negative counts from a misbehaving upstream are clamped to 0 too (a negative prompt once
    gave cached=-5 and a negative cost, because only cached/reasoning were clamped)."""
    t = BillableTokens.from_openai(prompt, cached, completion, reasoning)
    assert min(t.input, t.cached, t.output, t.reasoning) >= 0
    assert cost_of(t, Price("m", T0, 300_000, 1_200_000, 30_000)).nano >= 0


def test_from_anthropic_bills_cache_writes_as_input() -> None:
    t = BillableTokens.from_anthropic(input_tokens=70, cache_read=30, cache_creation=10, output=50)
    assert t == BillableTokens(input=80, cached=30, output=50, reasoning=0)


@given(
    uncached=st.integers(0, 10**7),
    cache_read=st.integers(0, 10**7),
    cache_write=st.integers(0, 10**7),
    output=st.integers(0, 10**7),
    price_in=st.integers(0, 10**8),
    price_cached=st.integers(0, 10**8),
    price_out=st.integers(0, 10**8),
)
def test_both_conventions_price_the_same_usage_identically(
    uncached, cache_read, cache_write, output, price_in, price_cached, price_out
) -> None:
    """One real request, reported both ways: OpenAI's prompt_tokens counts every input token
    (cache reads included); Anthropic's input_tokens excludes reads and writes."""
    openai = BillableTokens.from_openai(uncached + cache_read + cache_write, cache_read, output)
    anthropic = BillableTokens.from_anthropic(uncached, cache_read, cache_write, output)
    assert openai == anthropic
    # nothing billed twice, nothing dropped
    assert openai.input + openai.cached + openai.output + openai.reasoning == (
        uncached + cache_read + cache_write + output
    )
    price = Price("m", T0, price_in, price_out, price_cached)
    assert cost_of(openai, price) == cost_of(anthropic, price)
    expected = (uncached + cache_write) * price_in + cache_read * price_cached + output * price_out
    assert cost_of(openai, price).pico == expected


# --- cost -----------------------------------------------------------------------------------------


token_counts = st.integers(0, 10**7)
prices_pico = st.integers(0, 10**9)  # up to $1000 per million tokens


@given(
    tokens=st.builds(BillableTokens, token_counts, token_counts, token_counts, token_counts),
    inp=prices_pico,
    out=prices_pico,
    cached=prices_pico,
    reasoning=st.none() | prices_pico,
)
def test_cost_is_exact_in_pico_and_rounded_once(tokens, inp, out, cached, reasoning) -> None:
    price = Price("m", T0, inp, out, cached, reasoning)
    cost = cost_of(tokens, price)
    reasoning_price = out if reasoning is None else reasoning
    pico = (
        tokens.input * inp + tokens.cached * cached + tokens.output * out + tokens.reasoning * reasoning_price
    )
    assert cost == Cost(nano=exact_nano(pico), pico=pico)
    assert type(cost.nano) is int and type(cost.pico) is int


def test_cost_rounds_the_total_not_each_class() -> None:
    # 0.5 nano for input + 0.5 nano for output: per-class rounding (half to even) would give 0
    price = Price("m", T0, input=500, output=500, cached=0)
    assert cost_of(BillableTokens(input=1, output=1), price) == Cost(nano=1, pico=1000)
    # 1.5 nano rounds to 2, 2.5 nano rounds to 2
    assert cost_of(BillableTokens(input=3), price).nano == 2
    assert cost_of(BillableTokens(input=5), price).nano == 2


def test_reasoning_price_defaults_to_output() -> None:
    tokens = BillableTokens(reasoning=1_000_000)
    assert cost_of(tokens, Price("m", T0, 1, 2_000_000, 1)).nano == 2_000_000_000
    assert cost_of(tokens, Price("m", T0, 1, 2_000_000, 1, reasoning=5_000_000)).nano == 5_000_000_000


def test_free_price_costs_nothing() -> None:
    tokens = BillableTokens(input=10**6, cached=10**6, output=10**6, reasoning=10**6)
    free = Price("m", T0, 300_000, 1_200_000, 30_000, free=True)
    assert cost_of(tokens, free) == Cost(0, 0)
    assert cost_of(tokens, dataclasses.replace(free, free=False)).nano > 0


# --- price book -----------------------------------------------------------------------------------


def _price(model: str, at: datetime, inp: int, out: int | None = None) -> Price:
    return Price(model, at, inp, out if out is not None else 4 * inp, inp // 10)


def test_price_change_applies_from_its_timestamp_exactly() -> None:
    t1, t2 = T0, T0 + timedelta(days=30)
    old, new = _price("m", t1, 300_000), _price("m", t2, 500_000)
    book = PriceBook([new, old])  # insertion order does not matter
    µs = timedelta(microseconds=1)
    assert book.at("m", t1 - µs) is None  # before the first price
    assert book.at("m", t1) == old
    assert book.at("m", t2 - µs) == old
    assert book.at("m", t2) == new
    assert book.at("m", t2 + µs) == new
    assert book.at("m", t2 + timedelta(days=3650)) == new
    assert book.history("m") == [old, new]  # history kept, in order
    assert book.at("other", t2) is None
    # the same instant expressed in another zone is the same instant
    assert book.at("m", t2.astimezone(timezone(timedelta(hours=-5)))) == new


def test_same_instant_replaces_and_models_are_listed() -> None:
    book = PriceBook()
    a1 = _price("a", T0, 100)
    a2 = _price("a", T0 + timedelta(hours=1), 200)
    book.add(a1)
    book.add(a2)
    book.add(_price("b", T0, 7))
    fix = _price("a", (T0 + timedelta(hours=1)).astimezone(timezone(timedelta(hours=9))), 250)
    book.add(fix)
    assert book.history("a") == [a1, fix]
    assert book.at("a", T0 + timedelta(hours=2)) == fix
    assert book.models() == ["a", "b"]
    book.history("a").clear()  # a copy: the book is not changed through it
    assert len(book.history("a")) == 2


@given(st.lists(st.integers(0, 1000), min_size=1, max_size=20, unique=True), st.integers(-10, 1010))
def test_price_book_at_is_latest_not_after(starts: list[int], probe: int) -> None:
    book = PriceBook()
    for s in starts:
        book.add(_price("m", T0 + timedelta(minutes=s), s + 1))
    when = T0 + timedelta(minutes=probe)
    eligible = [s for s in starts if s <= probe]
    got = book.at("m", when)
    if not eligible:
        assert got is None
    else:
        assert got is not None and got.input == max(eligible) + 1
    assert [p.effective_from for p in book.history("m")] == sorted(T0 + timedelta(minutes=s) for s in starts)


# --- ledger: burn order ---------------------------------------------------------------------------


def _funded(*lots: Lot) -> Ledger:
    ledger = Ledger()
    for i, lot in enumerate(lots):
        ledger.add_lot(lot)
        ledger.post(grant_tx(f"g{i}", lot))
    return ledger


def _lot(lot_id, amount=100, promo=False, created=T0, expires=None, tenant="t1") -> Lot:
    return Lot(lot_id, tenant, amount, promo, created, expires)


def test_burn_order_soonest_expiry_first() -> None:
    d = timedelta(days=1)
    ledger = _funded(
        _lot("never_promo", promo=True, created=T0 - 5 * d),
        _lot("late_promo", promo=True, expires=T0 + 5 * d),
        _lot("soon_paid", expires=T0 + 2 * d),
    )
    assert ledger.allocate("t1", 250, T0) == [("soon_paid", 100), ("late_promo", 100), ("never_promo", 50)]


def test_burn_order_promo_before_paid_at_equal_expiry_then_oldest() -> None:
    exp = T0 + timedelta(days=3)
    h = timedelta(hours=1)
    ledger = _funded(
        _lot("paid_old", created=T0 - 2 * h, expires=exp),
        _lot("promo_new", promo=True, created=T0 - h, expires=exp),
        _lot("paid_new", created=T0 - h, expires=exp),
        _lot("promo_old", promo=True, created=T0 - 2 * h, expires=exp),
        _lot("never_new", created=T0 - h),
        _lot("never_old", created=T0 - 2 * h),
    )
    order = [lot_id for lot_id, _ in ledger.allocate("t1", 600, T0)]
    assert order == ["promo_old", "promo_new", "paid_old", "paid_new", "never_old", "never_new"]
    assert ledger.allocate("t1", 150, T0) == [("promo_old", 100), ("promo_new", 50)]


def test_burn_order_promo_before_paid_among_never_expiring_lots() -> None:
    """Two never-expiring lots have equal expiry, so promotional burns first even when newer.
    (Regression: the key once used created_at in place of a missing expiry, so age won.)"""
    ledger = _funded(
        _lot("paid_old", created=T0 - timedelta(days=2)),
        _lot("promo_new", promo=True, created=T0 - timedelta(days=1)),
    )
    assert ledger.allocate("t1", 150, T0) == [("promo_new", 100), ("paid_old", 50)]


def test_allocation_skips_expired_and_empty_lots() -> None:
    ledger = _funded(
        _lot("expired", expires=T0),  # expires_at == now counts as expired
        _lot("empty", expires=T0 + timedelta(hours=1)),
        _lot("other_tenant", tenant="t2"),
        _lot("good", expires=T0 + timedelta(days=1)),
    )
    ledger.post(usage_tx("u0", "t1", "r0", [("empty", 100)], T0))
    assert ledger.allocate("t1", 60, T0) == [("good", 60)]
    assert ledger.tenant_balance("t1", T0) == 100
    assert ledger.tenant_balance("t1") == 200  # without `now`: expired lots count
    with pytest.raises(InsufficientFunds):
        ledger.allocate("t1", 101, T0)
    # a moment earlier the first lot was still good
    assert ledger.allocate("t1", 150, T0 - timedelta(microseconds=1)) == [("expired", 100), ("good", 50)]


def test_post_refuses_foreign_lots_and_unknown_reversals() -> None:
    ledger = _funded(_lot("a"), _lot("b", tenant="t2"))
    before = list(ledger.transactions)
    with pytest.raises(LedgerError, match="not a lot of tenant"):
        ledger.post(usage_tx("u1", "t1", "r1", [("b", 10)], T0))
    with pytest.raises(LedgerError, match="not a lot of tenant"):
        ledger.post(usage_tx("u1", "t1", "r1", [("missing", 10)], T0))
    with pytest.raises(LedgerError, match="cannot reverse"):
        ghost = Transaction("nope", "usage", "t1", (Entry("lot:a", -1), Entry(REVENUE_USAGE, 1)), T0, "rX")
        ledger.post(reversal_tx("x", ghost, T0))
    with pytest.raises(LedgerError, match="no entries"):
        ledger.post(usage_tx("u1", "t1", "r1", [], T0))
    with pytest.raises(LedgerError, match="already posted"):
        ledger.post(usage_tx("g0", "t1", "r9", [("a", 1)], T0))
    assert ledger.transactions == before
    assert ledger.balance("lot:a") == 100 and not ledger.charged("r1")


def test_post_refuses_a_transaction_that_debits_one_lot_twice() -> None:
    """A lot named twice in one transaction is checked as a whole (regression: each entry was
    checked against the balance from before the transaction, so 5 + 5 from a lot of 5 passed
    and left it at -5)."""
    ledger = _funded(_lot("a", amount=5))
    with pytest.raises(InsufficientFunds):
        ledger.post(usage_tx("u1", "t1", "r1", [("a", 5), ("a", 5)], T0))
    assert ledger.balance("lot:a") == 5


def test_post_refuses_a_second_grant_of_a_lot() -> None:
    """post() refuses what verify() rejects: a lot has exactly one grant (regression: a second
    grant transaction doubled the lot's balance)."""
    lot = _lot("a", amount=5)
    ledger = _funded(lot)
    with pytest.raises(LedgerError):
        ledger.post(grant_tx("g-again", lot))
    assert ledger.balance("lot:a") == 5


# --- ledger: the stateful property test -----------------------------------------------------------

TENANTS = ("t1", "t2")
MODEL = "m"


def burn_key_reference(lot: Lot) -> tuple:
    return (lot.expires_at or MAX_DT, 0 if lot.promo else 1, lot.created_at, lot.id)


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.ledger = Ledger()
        self.now = T0
        self.book = PriceBook([Price(MODEL, T0 - timedelta(days=1), 300_000, 1_200_000, 30_000)])
        self.price_log: list[Price] = list(self.book.history(MODEL))
        self.n = 0
        self.charged: dict[str, str] = {}  # request id -> tx id
        self.reversed: set[str] = set()

    def _id(self, kind: str) -> str:
        self.n += 1
        return f"{kind}{self.n}"

    def _snapshot(self):
        return list(self.ledger.transactions), {a: self.ledger.balance(a) for a in self._accounts()}

    def _accounts(self) -> set[str]:
        return {e.account for tx in self.ledger.transactions for e in tx.entries}

    # rules

    @rule(
        tenant=st.sampled_from(TENANTS),
        amount=st.integers(1, 3_000_000),
        promo=st.booleans(),
        expiry=st.one_of(
            st.none(),
            st.tuples(st.just("at"), st.integers(1, 12)),  # a shared grid: ties in burn order
            st.tuples(st.just("in"), st.integers(-1, 48)),  # relative to now (-1: already expired)
        ),
    )
    def grant(self, tenant, amount, promo, expiry) -> None:
        if expiry is None:
            expires = None
        elif expiry[0] == "at":
            expires = T0 + timedelta(hours=expiry[1])
        else:
            expires = self.now + timedelta(hours=expiry[1])
        lot = Lot(self._id("lot"), tenant, amount, promo, self.now, expires)
        before = self.ledger.tenant_balance(tenant, self.now)
        self.ledger.add_lot(lot)
        self.ledger.post(grant_tx(self._id("g"), lot))
        assert self.ledger.balance(lot.account) == amount
        gained = 0 if lot.expired(self.now) else amount
        assert self.ledger.tenant_balance(tenant, self.now) == before + gained

    @rule(
        tenant=st.sampled_from(TENANTS),
        prompt=st.integers(0, 10_000),
        cached=st.integers(0, 10_000),
        completion=st.integers(0, 2_000),
        reasoning=st.integers(0, 2_000),
    )
    def charge(self, tenant, prompt, cached, completion, reasoning) -> None:
        price = self.book.at(MODEL, self.now)
        expected = max(
            (p for p in self.price_log if p.effective_from <= self.now), key=lambda p: p.effective_from
        )
        assert price == expected
        tokens = BillableTokens.from_openai(prompt, cached, completion, reasoning)
        cost = cost_of(tokens, price).nano
        if cost == 0:
            return  # a free request moves no money (usage_tx would have no entries)
        available = self.ledger.tenant_balance(tenant, self.now)
        request_id = self._id("req")
        before = self._snapshot()
        if cost > available:
            with pytest.raises(InsufficientFunds):
                self.ledger.allocate(tenant, cost, self.now)
            lots = self.ledger.tenant_lots(tenant)
            if lots:  # a hand-made allocation overdrawing a lot is refused by post() as well
                lot = lots[cost % len(lots)]
                overdraw = [(lot.id, self.ledger.balance(lot.account) + 1)]
                with pytest.raises(InsufficientFunds):
                    self.ledger.post(usage_tx(self._id("u"), tenant, request_id, overdraw, self.now))
            assert self._snapshot() == before
            assert not self.ledger.charged(request_id)
            return
        allocation = self.ledger.allocate(tenant, cost, self.now)
        self._check_allocation(tenant, allocation, cost)
        tx = usage_tx(self._id("u"), tenant, request_id, allocation, self.now)
        self.ledger.post(tx)
        self.charged[request_id] = tx.id
        assert self.ledger.charged(request_id)
        assert self.ledger.tenant_balance(tenant, self.now) == available - cost
        assert self.ledger.balance(REVENUE_USAGE) == before[1].get(REVENUE_USAGE, 0) + cost

    def _check_allocation(self, tenant: str, allocation: list[tuple[str, int]], cost: int) -> None:
        assert sum(a for _, a in allocation) == cost
        assert len({lot_id for lot_id, _ in allocation}) == len(allocation)
        spendable = sorted(
            (
                lot
                for lot in self.ledger.lots.values()
                if lot.tenant_id == tenant
                and not lot.expired(self.now)
                and self.ledger.balance(lot.account) > 0
            ),
            key=burn_key_reference,
        )
        # burn order: whole lots from the front of the order, the last one possibly in part
        assert [lot_id for lot_id, _ in allocation] == [lot.id for lot in spendable[: len(allocation)]]
        for i, (lot_id, amount) in enumerate(allocation):
            held = self.ledger.balance(f"lot:{lot_id}")
            assert 0 < amount <= held
            if i < len(allocation) - 1:
                assert amount == held

    @precondition(lambda self: self.charged)
    @rule(pick=st.integers(0, 10**6))
    def charge_again(self, pick) -> None:
        request_id = sorted(self.charged)[pick % len(self.charged)]
        original = next(tx for tx in self.ledger.transactions if tx.id == self.charged[request_id])
        allocation = [(e.account[4:], -e.amount) for e in original.entries if e.account.startswith("lot:")]
        before = self._snapshot()
        with pytest.raises(DuplicateCharge):
            self.ledger.post(usage_tx(self._id("u"), original.tenant_id, request_id, allocation, self.now))
        assert self._snapshot() == before

    @rule()
    def expire(self) -> None:
        spendable = {t: self.ledger.tenant_balance(t, self.now) for t in TENANTS}
        due = self.ledger.expiries_due(self.now)
        for lot, remaining in due:
            assert lot.expired(self.now) and remaining == self.ledger.balance(lot.account) > 0
            self.ledger.post(expiry_tx(self._id("x"), lot, remaining, self.now))
            sink = FUNDING_PROMO if lot.promo else REVENUE_BREAKAGE
            assert self.ledger.transactions[-1].entries == (
                Entry(lot.account, -remaining),
                Entry(sink, remaining),
            )
        assert self.ledger.expiries_due(self.now) == []
        for lot in self.ledger.lots.values():
            if lot.expired(self.now):
                assert self.ledger.balance(lot.account) == 0
        assert {t: self.ledger.tenant_balance(t, self.now) for t in TENANTS} == spendable

    @precondition(lambda self: any(tx.kind in ("usage", "grant") for tx in self.ledger.transactions))
    @rule(pick=st.integers(0, 10**6))
    def reverse(self, pick) -> None:
        candidates = [tx for tx in self.ledger.transactions if tx.kind in ("usage", "grant")]
        original = candidates[pick % len(candidates)]
        rev = reversal_tx(self._id("r"), original, self.now)
        before = self._snapshot()
        if original.id in self.reversed:
            with pytest.raises(LedgerError, match="cannot reverse"):
                self.ledger.post(rev)
            assert self._snapshot() == before
            return
        short = [
            e
            for e in original.entries
            if e.account.startswith("lot:") and self.ledger.balance(e.account) < e.amount
        ]
        if short:  # a grant whose lot has been (partly) spent or expired
            assert original.kind == "grant"
            with pytest.raises(InsufficientFunds):
                self.ledger.post(rev)
            assert self._snapshot() == before
            return
        self.ledger.post(rev)
        self.reversed.add(original.id)
        for e in original.entries:
            assert self.ledger.balance(e.account) == before[1][e.account] - e.amount
        with pytest.raises(LedgerError):  # once only
            self.ledger.post(reversal_tx(self._id("r"), original, self.now))

    @rule(seconds=st.sampled_from([0, 1, 1800, 3600, 2 * 3600, 6 * 3600, 86400]))
    def advance(self, seconds) -> None:
        self.now += timedelta(seconds=seconds)

    @rule(
        inp=st.integers(0, 1_000_000),
        out=st.integers(0, 4_000_000),
        free=st.sampled_from([False, False, False, True]),
        starts_in_h=st.integers(-1, 24),
    )
    def change_price(self, inp, out, free, starts_in_h) -> None:
        start = self.now + timedelta(hours=starts_in_h)
        price = Price(MODEL, start, inp, out, inp // 10, free=free)
        self.book.add(price)
        self.price_log = [p for p in self.price_log if p.effective_from != start] + [price]

    # invariants

    @invariant()
    def sound(self) -> None:
        assert verify(self.ledger.transactions, list(self.ledger.lots.values())) == []

    @invariant()
    def balances_are_sums_of_entries(self) -> None:
        sums: dict[str, int] = defaultdict(int)
        for tx in self.ledger.transactions:
            assert sum(e.amount for e in tx.entries) == 0
            for e in tx.entries:
                assert type(e.amount) is int
                sums[e.account] += e.amount
        for account, total in sums.items():
            assert self.ledger.balance(account) == total
        assert sum(sums.values()) == 0
        assert sum(self.ledger.balance(a) for a in sums) == 0
        for lot in self.ledger.lots.values():
            assert sums[lot.account] >= 0
        for tenant in TENANTS:
            unexpired = sum(
                sums[lot.account]
                for lot in self.ledger.lots.values()
                if lot.tenant_id == tenant and not (lot.expires_at is not None and lot.expires_at <= self.now)
            )
            assert self.ledger.tenant_balance(tenant, self.now) == unexpired
        # funding accounts only ever give, revenue only ever receives (net)
        assert sums[FUNDING_PAID] <= 0 and sums[FUNDING_PROMO] <= 0
        assert sums[REVENUE_USAGE] >= 0 and sums[REVENUE_BREAKAGE] >= 0

    @invariant()
    def allocation_follows_burn_order(self) -> None:
        """Probe (allocate does not post): spending everything takes every spendable lot, whole,
        in burn order; one nano more is refused."""
        for tenant in TENANTS:
            spendable = sorted(
                (
                    lot
                    for lot in self.ledger.lots.values()
                    if lot.tenant_id == tenant
                    and not (lot.expires_at is not None and lot.expires_at <= self.now)
                    and self.ledger.balance(lot.account) > 0
                ),
                key=burn_key_reference,
            )
            everything = sum(self.ledger.balance(lot.account) for lot in spendable)
            assert self.ledger.allocate(tenant, everything, self.now) == [
                (lot.id, self.ledger.balance(lot.account)) for lot in spendable
            ]
            with pytest.raises(InsufficientFunds):
                self.ledger.allocate(tenant, everything + 1, self.now)

    @invariant()
    def each_request_charged_once(self) -> None:
        counts = Counter(tx.request_id for tx in self.ledger.transactions if tx.request_id is not None)
        assert all(n == 1 for n in counts.values())
        assert set(counts) == set(self.charged)


TestLedgerStateMachine = LedgerMachine.TestCase
TestLedgerStateMachine.settings = settings(
    max_examples=100, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


# --- verify() catches tampering -------------------------------------------------------------------


def _sound() -> tuple[list[Transaction], list[Lot]]:
    """grant a(10) to t1, b(4) to t2; u1 8 from a; r1 reverses u1; u2 9 from a; u3 3 from b."""
    a, b = _lot("a", amount=10), _lot("b", amount=4, tenant="t2", promo=True)
    ledger = _funded(a, b)
    u1 = usage_tx("u1", "t1", "req1", [("a", 8)], T0)
    ledger.post(u1)
    ledger.post(reversal_tx("r1", u1, T0))
    ledger.post(usage_tx("u2", "t1", "req2", [("a", 9)], T0))
    ledger.post(usage_tx("u3", "t2", "req3", [("b", 3)], T0))
    txs = list(ledger.transactions)
    assert [t.id for t in txs] == ["g0", "g1", "u1", "r1", "u2", "u3"]
    assert verify(txs, [a, b]) == []
    return txs, [a, b]


def _by_id(txs: list[Transaction], tx_id: str) -> int:
    return next(i for i, t in enumerate(txs) if t.id == tx_id)


def _final_balances(txs: list[Transaction]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for t in txs:
        for e in t.entries:
            out[e.account] += e.amount
    return dict(out)


def _problems_with(txs, lots, needle: str) -> list[str]:
    problems = verify(txs, lots)
    assert any(needle in p for p in problems), problems
    return problems


def test_verify_catches_a_changed_entry_amount() -> None:
    txs, lots = _sound()
    i = _by_id(txs, "u2")
    txs[i] = dataclasses.replace(txs[i], entries=(Entry("lot:a", -1), Entry(REVENUE_USAGE, 9)))
    _problems_with(txs, lots, "entries sum to 8, not 0")


def test_verify_catches_a_consistently_changed_grant() -> None:
    txs, lots = _sound()
    txs[0] = dataclasses.replace(txs[0], entries=(Entry(FUNDING_PAID, -100), Entry("lot:a", 100)))
    _problems_with(txs, lots, "lot a does not have exactly one grant")


def test_verify_catches_a_dropped_transaction() -> None:
    txs, lots = _sound()
    _problems_with([t for t in txs if t.id != "g0"], lots, "lot:a went below zero")
    _problems_with([t for t in txs if t.id != "g0"], lots, "lot a does not have exactly one grant")
    _problems_with([t for t in txs if t.id != "u1"], lots, "reversal r1 of unknown transaction u1")


def test_verify_catches_a_reordering_that_overdraws_in_between() -> None:
    txs, lots = _sound()
    i, j = _by_id(txs, "r1"), _by_id(txs, "u2")
    swapped = list(txs)
    swapped[i], swapped[j] = swapped[j], swapped[i]
    # the final balances are the same; only the order is wrong (a: 10 - 8 - 9 < 0, then + 8)
    assert _final_balances(swapped) == _final_balances(txs)
    problems = _problems_with(swapped, lots, "lot:a went below zero at transaction u2")
    assert len(problems) == 1


def test_verify_catches_a_duplicated_usage_charge() -> None:
    txs, lots = _sound()
    u3 = txs[_by_id(txs, "u3")]
    dup = dataclasses.replace(u3, id="u3-copy", entries=(Entry("lot:b", -1), Entry(REVENUE_USAGE, 1)))
    problems = _problems_with([*txs, dup], lots, "request req3 charged twice (u3, u3-copy)")
    assert len(problems) == 1  # funded, balanced: only the double charge is wrong
    _problems_with([*txs, u3], lots, "transaction u3 appears twice")


def test_verify_catches_a_reversal_that_does_not_negate() -> None:
    txs, lots = _sound()
    i = _by_id(txs, "r1")
    txs[i] = dataclasses.replace(txs[i], entries=(Entry("lot:a", 7), Entry(REVENUE_USAGE, -7)))
    _problems_with(txs, lots, "reversal r1 does not negate u1")
    # a second, correct reversal of the same transaction
    txs2, _ = _sound()
    again = reversal_tx("r1-again", txs2[_by_id(txs2, "u1")], T0)
    _problems_with([*txs2, again], lots, "transaction u1 reversed twice")


def test_verify_catches_moving_another_tenants_lot() -> None:
    txs, lots = _sound()
    theft = Transaction("steal", "usage", "t1", (Entry("lot:b", -1), Entry(REVENUE_USAGE, 1)), T0, "req9")
    problems = _problems_with([*txs, theft], lots, "transaction steal moves lot:b of another tenant")
    assert len(problems) == 1


def test_verify_catches_a_lot_without_its_grant() -> None:
    txs, lots = _sound()
    orphan = _lot("c", amount=5)
    _problems_with(txs, [*lots, orphan], "lot c does not have exactly one grant of its amount")
    _problems_with(txs, [lots[1]], "names unknown lot:a")  # entries for a lot that is gone


def test_a_plan_fee_is_owed_by_its_tenant_and_earns_plan_revenue() -> None:
    txs, lots = _sound()
    fee = fee_tx(fee_tx_id("t1", "2026-11", "pro"), "t1", 200, T0)
    assert fee_tx_id("t1", "2026-11", "pro") == fee.id != fee_tx_id("t1", "2026-12", "pro")
    assert verify([*txs, fee], lots) == []
    assert _final_balances([fee]) == {"receivable:t1": -200, REVENUE_PLANS: 200}
    paid_from_credit = dataclasses.replace(
        fee, id="f2", entries=(Entry("lot:a", -1), Entry(REVENUE_PLANS, 1))
    )
    _problems_with([*txs, paid_from_credit], lots, "a fee moves anything but the tenant's receivable")
    with pytest.raises(LedgerError):
        fee_tx("f3", "t1", 0, T0)
