"""Billing persistence against real databases: each test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import Engine, delete, func, insert, select, update

from tokenport.billing.ledger import (
    FUNDING_PAID,
    FUNDING_PROMO,
    REVENUE_BREAKAGE,
    REVENUE_USAGE,
    DuplicateCharge,
    Entry,
    LedgerError,
    Lot,
    Transaction,
    expiry_tx,
    grant_tx,
    reversal_tx,
    usage_tx,
)
from tokenport.billing.prices import Price, PriceBook
from tokenport.billing.service import BillingService
from tokenport.clock import FakeClock
from tokenport.store.billing import BillingStore
from tokenport.store.repositories import billing_repositories
from tokenport.store.schema import credit_lots, ledger_entries, ledger_transactions
from tokenport.store.tenants import Tenant, TenantStore
from tokenport.tenancy.service import InvalidInput, NotFound, TenancyService

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
USD = 10**9
DAY = timedelta(days=1)


@pytest.fixture
def tenancy(engine: Engine, clock: FakeClock) -> TenancyService:
    return TenancyService(TenantStore(engine), "overseas", clock)


@pytest.fixture
def store(engine: Engine) -> BillingStore:
    return BillingStore(engine)


@pytest.fixture
def billing(store: BillingStore, tenancy: TenancyService, clock: FakeClock) -> BillingService:
    return BillingService(billing_repositories(store.engine), tenancy, clock)


@pytest.fixture
def acme(tenancy: TenancyService) -> Tenant:
    return tenancy.create_tenant("acme")


@pytest.fixture
def globex(tenancy: TenancyService) -> Tenant:
    return tenancy.create_tenant("globex")


def is_utc(dt: datetime) -> bool:
    return dt.tzinfo is not None and dt.utcoffset() == timedelta(0)


def entry_rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(ledger_entries)).scalar_one()


def snapshot(store: BillingStore) -> tuple:
    return store.load_transactions(), entry_rows(store.engine), store.load_lots()


def _grant(store: BillingStore, tx_id: str, lot: Lot) -> Transaction:
    tx = grant_tx(tx_id, lot)
    store.post(tx, lot)
    return tx


# --- ledger round trip ----------------------------------------------------------------------------


def test_post_and_reload_round_trip(store: BillingStore, acme: Tenant, globex: Tenant) -> None:
    tokyo = timezone(timedelta(hours=9))
    a = Lot("lot_a", acme.id, 10 * USD, False, T0 + timedelta(microseconds=123_456), T0 + DAY)
    b = Lot("lot_b", acme.id, 2 * USD, True, (T0 + timedelta(seconds=1)).astimezone(tokyo))
    c = Lot("lot_c", globex.id, USD + 1, False, T0 + timedelta(seconds=2))
    posted = [_grant(store, "g_a", a), _grant(store, "g_b", b), _grant(store, "g_c", c)]
    u1 = usage_tx("u1", acme.id, "req-1", [("lot_b", 1_500_000_000), ("lot_a", 1_000_000_001)], T0 + DAY / 2)
    r1 = reversal_tx("r1", u1, T0 + DAY / 2 + timedelta(microseconds=7))
    u2 = usage_tx("u2", globex.id, "req-2", [("lot_c", 3)], T0 + DAY / 2)
    x1 = expiry_tx("x1", a, 10 * USD, T0 + 2 * DAY)
    for tx in (u1, r1, u2, x1):
        store.post(tx)
        posted.append(tx)

    loaded = store.load_transactions()
    assert [t.id for t in loaded] == ["g_a", "g_b", "g_c", "u1", "r1", "u2", "x1"]  # ledger order
    assert loaded == posted  # every field and every entry, in order
    for original, back in zip(posted, loaded, strict=True):
        assert back.entries == original.entries
        assert all(type(e.amount) is int for e in back.entries)
        assert is_utc(back.created_at) and back.created_at == original.created_at
    assert loaded[3].request_id == "req-1" and loaded[4].reverses == "u1"

    assert [t.id for t in store.load_transactions(globex.id)] == ["g_c", "u2"]
    lots = store.load_lots()
    assert lots == [a, b, c]  # by creation time
    assert all(is_utc(lot.created_at) for lot in lots)
    assert is_utc(lots[0].expires_at) and lots[1].expires_at is None
    assert all(type(lot.amount) is int for lot in lots)
    assert store.load_lots(acme.id) == [a, b]
    assert store.load_transaction("g_b") == (posted[1], b)
    assert store.load_transaction("u2") == (u2, None)
    assert store.load_transaction("nope") == (None, None)

    balances = store.account_balances(["lot:lot_a", "lot:lot_b", "lot:lot_c", REVENUE_USAGE, "lot:none"])
    assert balances == {
        "lot:lot_a": 0,
        "lot:lot_b": 2 * USD,
        "lot:lot_c": USD - 2,
        REVENUE_USAGE: 3,
        "lot:none": 0,
    }
    assert all(type(v) is int for v in balances.values())
    assert store.charged("req-1") and store.charged("req-2") and not store.charged("req-3")


def test_large_amounts_round_trip_exactly(store: BillingStore, acme: Tenant) -> None:
    big = 2**63 - 1  # the largest amount a column holds
    lot = Lot("lot_big", acme.id, big, False, T0)
    _grant(store, "g_big", lot)
    assert store.load_transactions()[0].entries == (Entry(FUNDING_PAID, -big), Entry("lot:lot_big", big))
    assert store.account_balances(["lot:lot_big"]) == {"lot:lot_big": big}


# --- uniqueness enforced by the database ----------------------------------------------------------


def test_second_charge_of_a_request_is_refused(
    store: BillingStore, billing: BillingService, acme: Tenant
) -> None:
    lot = Lot("lot_a", acme.id, 10 * USD, False, T0)
    _grant(store, "g_a", lot)
    u1 = usage_tx("u1", acme.id, "req-1", [("lot_a", 100)], T0)
    store.post(u1)
    before = snapshot(store)

    with pytest.raises(DuplicateCharge):
        store.post(u1)  # the very same transaction again
    with pytest.raises(DuplicateCharge):  # another transaction charging the same request
        store.post(usage_tx("u1-again", acme.id, "req-1", [("lot_a", 250)], T0 + timedelta(seconds=1)))

    assert snapshot(store) == before
    assert store.account_balances(["lot:lot_a"]) == {"lot:lot_a": 10 * USD - 100}
    assert billing.verify() == []
    # the database is still usable after the refused inserts
    store.post(usage_tx("u2", acme.id, "req-2", [("lot_a", 1)], T0))
    assert [t.id for t in store.load_transactions()] == ["g_a", "u1", "u2"]


def test_second_reversal_is_refused(store: BillingStore, billing: BillingService, acme: Tenant) -> None:
    lot = Lot("lot_a", acme.id, 10 * USD, False, T0)
    _grant(store, "g_a", lot)
    u1 = usage_tx("u1", acme.id, "req-1", [("lot_a", 100)], T0)
    store.post(u1)
    store.post(reversal_tx("r1", u1, T0))
    before = snapshot(store)
    with pytest.raises(LedgerError) as exc:
        store.post(reversal_tx("r2", u1, T0 + timedelta(seconds=1)))
    assert not isinstance(exc.value, DuplicateCharge)
    assert snapshot(store) == before
    assert store.account_balances(["lot:lot_a"]) == {"lot:lot_a": 10 * USD}
    assert billing.verify() == []


def test_a_lot_is_created_with_its_grant_or_not_at_all(store: BillingStore, acme: Tenant) -> None:
    lot = Lot("lot_a", acme.id, 10 * USD, False, T0)
    _grant(store, "g_a", lot)
    other = Lot("lot_b", acme.id, 5 * USD, False, T0)
    with pytest.raises(LedgerError):  # the transaction id is taken: the lot must not be stored either
        store.post(grant_tx("g_a", other), other)
    assert store.load_lots() == [lot]
    assert [t.id for t in store.load_transactions()] == ["g_a"]


# --- prices ---------------------------------------------------------------------------------------


def test_price_history_round_trip(store: BillingStore, billing: BillingService) -> None:
    m1 = Price("qwen3-32b", T0, 300_000, 1_200_000, 30_000)
    m0 = Price("qwen3-32b", T0 - 30 * DAY, 400_000, 1_600_000, 400_000, reasoning=2_000_000)
    free = Price("smollm2", T0, 0, 0, 0, free=True)
    big = Price("a-dear-model", T0, 2**62, 2**62 + 1, 7)
    for p in (m1, free, m0, big):
        store.insert_price(p, T0)

    loaded = store.load_prices()
    assert loaded == [big, m0, m1, free]  # by model, then effective_from
    for p in loaded:
        assert is_utc(p.effective_from)
        assert all(type(v) is int for v in (p.input, p.output, p.cached))
        assert type(p.free) is bool
    assert loaded[1].reasoning == 2_000_000 and loaded[2].reasoning is None

    book = billing.price_book()
    assert book.at("qwen3-32b", T0 - timedelta(microseconds=1)) == m0
    assert book.at("qwen3-32b", T0) == m1
    assert book.at("qwen3-32b", T0 - 31 * DAY) is None
    assert book.at("smollm2", T0).free


def test_duplicate_price_instant_is_refused(store: BillingStore, billing: BillingService) -> None:
    p = Price("m", T0, 300_000, 1_200_000, 30_000)
    store.insert_price(p, T0)
    with pytest.raises(LedgerError):
        store.insert_price(Price("m", T0, 1, 2, 3), T0)
    with pytest.raises(LedgerError):  # the same instant, written in another zone
        store.insert_price(Price("m", T0.astimezone(timezone(timedelta(hours=-7))), 1, 2, 3), T0)
    with pytest.raises(InvalidInput, match="already has a price"):
        billing.set_price("m", "1", "2", effective_from=T0)
    store.insert_price(Price("other", T0, 1, 2, 3), T0)  # another model at that instant is fine
    assert [(q.model, q.input) for q in store.load_prices()] == [("m", 300_000), ("other", 1)]


def test_set_price_parses_and_defaults(billing: BillingService, clock: FakeClock) -> None:
    p = billing.set_price("m", "0.30", "1.20")
    assert (p.input, p.output, p.cached, p.reasoning, p.free) == (300_000, 1_200_000, 300_000, None, False)
    assert p.effective_from == clock.now()
    q = billing.set_price("m", "0.25", "1", "0.025", "3", effective_from=T0 + DAY)
    assert (q.input, q.output, q.cached, q.reasoning) == (250_000, 1_000_000, 25_000, 3_000_000)
    f = billing.set_price("free-model", None, None, free=True)
    assert f.free and (f.input, f.output, f.cached) == (0, 0, 0)
    for bad in (("m", "0.0000001", "1"), ("m", "-1", "1"), ("m", "1", None), ("", "1", "1"), ("m", "x", "1")):
        with pytest.raises(InvalidInput):
            billing.set_price(*bad, effective_from=T0 + 2 * DAY)
    assert PriceBook(billing.store.load_prices()).history("m") == [p, q]


# --- credits, balance, expiry ---------------------------------------------------------------------


def test_grant_and_balance(
    billing: BillingService, store: BillingStore, clock: FakeClock, acme: Tenant
) -> None:
    paid_never = billing.grant("acme", "10")
    clock.advance(60)
    promo_2d = billing.grant("acme", "5", expires_at=clock.now() + 2 * DAY, promo=True)
    clock.advance(60)
    paid_1d = billing.grant("acme", "2.5", expires_at=clock.now() + DAY)
    clock.advance(60)
    paid_2d = billing.grant("acme", "0.000000001", expires_at=promo_2d.expires_at)

    assert paid_never.amount == 10 * USD and not paid_never.promo and paid_never.expires_at is None
    assert promo_2d.promo and promo_2d.amount == 5 * USD and promo_2d.tenant_id == acme.id
    assert paid_never.created_at == T0

    bal = billing.balance("acme")
    assert (bal.tenant, bal.tenant_id) == ("acme", acme.id)
    assert bal.available == 17_500_000_001
    # soonest expiry first, promotional before paid at equal expiry, never-expiring last
    assert [i.lot.id for i in bal.lots] == [paid_1d.id, promo_2d.id, paid_2d.id, paid_never.id]
    assert [i.remaining for i in bal.lots] == [2_500_000_000, 5 * USD, 1, 10 * USD]
    assert not any(i.expired for i in bal.lots)

    # spend from a lot: the balance follows the ledger
    store.post(usage_tx("u1", acme.id, "req-1", [(paid_1d.id, USD)], clock.now()))
    assert billing.balance("acme").available == 16_500_000_001

    clock.advance(DAY.total_seconds() - 60)  # exactly paid_1d's expiry
    assert clock.now() == paid_1d.expires_at
    bal = billing.balance("acme")
    assert bal.available == 15 * USD + 1  # the expired lot no longer counts ...
    expired = [i for i in bal.lots if i.expired]
    assert [(i.lot.id, i.remaining) for i in expired] == [(paid_1d.id, 1_500_000_000)]  # ... but is listed


def test_grant_refuses_bad_input(billing: BillingService, store: BillingStore, clock: FakeClock) -> None:
    billing.tenancy.create_tenant("acme")
    for amount in ("0", "-1", "abc", "0.0000000001", "NaN", "10000000000"):
        with pytest.raises(InvalidInput):
            billing.grant("acme", amount)
    with pytest.raises(InvalidInput):
        billing.grant("acme", "1", expires_at=clock.now())
    with pytest.raises(NotFound):
        billing.grant("nobody", "1")
    with pytest.raises(NotFound):
        billing.balance("nobody")
    assert store.load_transactions() == [] and store.load_lots() == []


def test_expire_due_posts_one_expiry_per_expired_lot(
    billing: BillingService, store: BillingStore, clock: FakeClock, acme: Tenant, globex: Tenant
) -> None:
    soon = clock.now() + DAY
    paid = billing.grant("acme", "10", expires_at=soon)
    promo = billing.grant("acme", "5", expires_at=soon, promo=True)
    spent = billing.grant("acme", "3", expires_at=soon)
    forever = billing.grant("acme", "1")
    later = billing.grant("acme", "4", expires_at=soon + timedelta(seconds=1))
    other = billing.grant("globex", "2", expires_at=clock.now() + timedelta(hours=2))
    store.post(usage_tx("u1", acme.id, "req-1", [(spent.id, 3 * USD), (paid.id, 4 * USD)], clock.now()))

    assert billing.expire_due() == []  # nothing due yet
    clock.advance(DAY.total_seconds())
    posted = billing.expire_due()
    assert len(posted) == 3

    txs = {t.id: t for t in store.load_transactions() if t.id in posted}
    assert set(txs) == set(posted)
    by_lot = {t.entries[0].account: t for t in txs.values()}
    assert set(by_lot) == {paid.account, promo.account, other.account}  # not the spent one, nor unexpired
    assert by_lot[paid.account].entries == (Entry(paid.account, -6 * USD), Entry(REVENUE_BREAKAGE, 6 * USD))
    assert by_lot[promo.account].entries == (Entry(promo.account, -5 * USD), Entry(FUNDING_PROMO, 5 * USD))
    assert by_lot[other.account].entries == (Entry(other.account, -2 * USD), Entry(REVENUE_BREAKAGE, 2 * USD))
    assert by_lot[other.account].tenant_id == globex.id
    assert all(t.kind == "expiry" and t.created_at == clock.now() for t in txs.values())

    assert billing.expire_due() == []  # idempotent
    assert len(store.load_transactions()) == 6 + 1 + 3
    bal = billing.balance("acme")
    assert bal.available == 5 * USD  # forever (1) + later (4)
    assert {i.lot.id: i.remaining for i in bal.lots} == {
        paid.id: 0,
        promo.id: 0,
        spent.id: 0,
        forever.id: USD,
        later.id: 4 * USD,
    }
    assert billing.verify() == []
    ledger = billing.ledger()  # the stored ledger replays through the in-memory checks
    assert ledger.tenant_balance(acme.id, clock.now()) == 5 * USD
    assert ledger.balance(REVENUE_USAGE) == 7 * USD

    clock.advance(1)
    assert billing.expire_due() != [] and billing.expire_due() == []  # `later` now, once


def test_expire_due_grace_and_unexpired_credit(
    billing: BillingService, store: BillingStore, clock: FakeClock, acme: Tenant
) -> None:
    """A negative grace is refused by the service itself (regression: only the CLI checked it,
    and expire_due(grace=-2h) expired credit valid for another hour)."""
    lot = billing.grant("acme", "5", expires_at=clock.now() + timedelta(hours=1))
    # a negative grace must not move the cut-off into the future and take credit still valid
    try:
        posted = billing.expire_due(grace=-timedelta(hours=2))
    except InvalidInput:
        posted = []
    assert posted == []
    assert billing.balance("acme").available == 5 * USD
    assert store.account_balances([lot.account]) == {lot.account: 5 * USD}

    clock.advance(3600 + 60)  # expired a minute ago
    assert billing.expire_due(grace=timedelta(minutes=31)) == []  # requests may still be settling
    assert store.account_balances([lot.account]) == {lot.account: 5 * USD}
    clock.advance(30 * 60 + 1)
    assert len(billing.expire_due(grace=timedelta(minutes=31))) == 1
    assert store.account_balances([lot.account]) == {lot.account: 0}


def test_a_lot_can_expire_again_after_its_expiry_was_reversed(
    engine: Engine,
    billing: BillingService,
    store: BillingStore,
    tenancy: TenancyService,
    clock: FakeClock,
    acme: Tenant,
) -> None:
    """BUG (billing/service.py BillingService.expire_due): the expiry transaction id is fixed
    (`exp_<lot id>`) and a conflict is swallowed (`except LedgerError: continue`), so once an
    expiry has been reversed (the documented way to correct a mistaken one, e.g. posted by a host
    whose clock ran ahead) the lot can never be expired again: its remainder stays in an expired
    lot for ever, neither spendable nor breakage, and expire_due reports nothing. Fix: derive
    the id from the lot and the number of its expiries already reversed (exp_<lot>, then
    exp_<lot>_2, ...), or look the existing expiry up and only skip when it is unreversed."""
    lot = billing.grant("acme", "5", expires_at=clock.now() + timedelta(hours=1))
    ahead = FakeClock(clock.now() + timedelta(hours=2))  # a host whose clock runs two hours ahead
    (mistake,) = BillingService(billing_repositories(engine), tenancy, ahead).expire_due()
    wrong, _ = store.load_transaction(mistake)
    store.post(reversal_tx("tx_undo", wrong, clock.now()))  # corrected by reversal
    assert billing.balance("acme").available == 5 * USD

    clock.advance(2 * 3600)  # now it really has expired
    assert len(billing.expire_due()) == 1
    assert store.account_balances([lot.account]) == {lot.account: 0}
    assert billing.verify() == []


# --- verify ---------------------------------------------------------------------------------------


@pytest.fixture
def sound(billing: BillingService, store: BillingStore, acme: Tenant) -> dict[str, str]:
    lot = billing.grant("acme", "10")
    store.post(usage_tx("u1", acme.id, "req-1", [(lot.id, 3 * USD)], T0))
    u2 = usage_tx("u2", acme.id, "req-2", [(lot.id, USD)], T0)
    store.post(u2)
    store.post(reversal_tx("r2", u2, T0))
    assert billing.verify() == []
    return {"lot": lot.id, "tenant": acme.id}


def _entry_id(engine: Engine, tx_id: str, account_prefix: str) -> int:
    with engine.connect() as conn:
        return conn.execute(
            select(ledger_entries.c.id).where(
                ledger_entries.c.tx_id == tx_id, ledger_entries.c.account.startswith(account_prefix)
            )
        ).scalar_one()


@pytest.mark.tampers
def test_verify_reports_a_changed_entry_amount(billing: BillingService, engine: Engine, sound) -> None:
    entry = _entry_id(engine, "u1", "lot:")
    with engine.begin() as conn:
        conn.execute(update(ledger_entries).where(ledger_entries.c.id == entry).values(amount=-USD))
    problems = billing.verify()
    assert any("u1" in p and "entries sum to" in p for p in problems), problems


@pytest.mark.tampers
def test_verify_reports_a_deleted_entry(billing: BillingService, engine: Engine, sound) -> None:
    entry = _entry_id(engine, "u1", "revenue:")
    with engine.begin() as conn:
        conn.execute(delete(ledger_entries).where(ledger_entries.c.id == entry))
    problems = billing.verify()
    assert any("u1" in p and "entries sum to" in p for p in problems), problems


@pytest.mark.tampers
def test_verify_reports_a_transaction_without_entries(billing: BillingService, engine: Engine, sound) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(ledger_transactions).values(
                id="tx_empty", kind="usage", tenant_id=sound["tenant"], request_id="req-9", created_at=T0
            )
        )
    assert billing.verify() == ["transaction tx_empty has no entries"]


@pytest.mark.tampers
def test_verify_reports_a_changed_lot_amount(billing: BillingService, engine: Engine, sound) -> None:
    with engine.begin() as conn:
        conn.execute(update(credit_lots).where(credit_lots.c.id == sound["lot"]).values(amount=100 * USD))
    problems = billing.verify()
    assert any(sound["lot"] in p and "exactly one grant" in p for p in problems), problems


def test_concurrent_expire_due_expires_each_lot_once(
    engine: Engine, tenancy: TenancyService, clock: FakeClock, acme: Tenant
) -> None:
    """Two `tokenport credits expire` runs at once (an overlapping cron, two hosts): both read the
    balances before either writes. Each lot must still be expired once, never driven below zero."""
    services = [BillingService(billing_repositories(engine), tenancy, clock) for _ in range(2)]
    lot = services[0].grant("acme", "10", expires_at=clock.now() + DAY)
    clock.advance(DAY.total_seconds())
    barrier = threading.Barrier(2, timeout=20)
    for svc in services:
        read = svc.store.account_balances

        def read_then_wait(accounts, _read=read):
            out = _read(accounts)
            barrier.wait()
            return out

        svc.store.account_balances = read_then_wait

    def run(svc: BillingService):
        try:
            return svc.expire_due()
        except LedgerError as exc:  # a clean refusal by the database is acceptable
            return exc

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run, services))
    posted = [tx for r in results if isinstance(r, list) for tx in r]
    store = BillingStore(engine)
    assert store.account_balances([lot.account]) == {lot.account: 0}
    assert len(posted) == 1, results
    assert BillingService(billing_repositories(engine), tenancy, clock).verify() == []
