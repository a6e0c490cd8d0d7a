"""The billing state of a gateway process: the accountant (prices, ledger balances, holds),
restored from the store at start and kept current by the change feed (grants, expiries,
reversals and price changes made by the CLI or the admin API)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from tokenport.store.redis_state import RedisState

import logging
from datetime import timedelta

from tokenport.billing.accountant import Accountant
from tokenport.billing.budgets import KeyBudgets, period_start
from tokenport.billing.ledger import Ledger, LedgerError
from tokenport.billing.plans import Plan, PlanUsage
from tokenport.billing.prices import PriceBook
from tokenport.clock import Clock
from tokenport.store.billing import BillingStore
from tokenport.store.plans import PlanStore
from tokenport.store.usage import UsageStore

log = logging.getLogger("tokenport.billing")


class BillingState:
    def __init__(self, store: BillingStore, usage: UsageStore, clock: Clock) -> None:
        self.store = store
        self.usage = usage
        self.plan_store = PlanStore(store.engine)
        self.clock = clock
        self.accountant = Accountant(Ledger(), PriceBook())
        self.budgets = KeyBudgets()
        self.plans: dict[str, Plan] = {}
        self.assigned: dict[str, str] = {}  # tenant id -> plan name
        self.plan_usage = PlanUsage()

    def plan_for(self, tenant_id: str) -> Plan | None:
        name = self.assigned.get(tenant_id)
        return self.plans.get(name) if name else None

    def load(self, conn: Connection) -> None:
        lots, balances = self.store.lot_balances(conn)
        self.accountant = Accountant(Ledger.restore(lots, balances), PriceBook(self.store.load_prices(conn)))
        now = self.clock.now()
        self.budgets = KeyBudgets()
        for period in ("day", "month"):  # what each key has spent so far this day and month
            start = period_start(period, now)
            for key_id, spent in self.usage.spend_by_key(conn, start).items():
                self.budgets.restore(key_id, period, start, spent)
        self.plans, self.assigned = self.plan_store.load(conn)
        self.plan_usage = PlanUsage()
        for tenant_id, at, units in self.plan_store.usage_since(conn, now - timedelta(days=7)):
            self.plan_usage.add(tenant_id, units, at)

    def apply(self, rows: list[tuple]):
        ledger_ids = [ref for _, kind, ref in rows if kind == "ledger"]
        prices = self.store.load_prices() if any(kind == "price" for _, kind, _ in rows) else None
        plans = self.plan_store.load() if any(kind == "plan" for _, kind, _ in rows) else None
        loaded = [self.store.load_transaction(tx_id) for tx_id in ledger_ids]
        if prices is None and plans is None and not loaded:
            return None

        def on_loop() -> None:  # the request path mutates the ledger on the loop: so do we
            acct = self.accountant
            if prices is not None:
                acct.book = PriceBook(prices)
            if plans is not None:
                self.plans, self.assigned = plans
            for tx, lot in loaded:
                if lot is not None and lot.id not in acct.ledger.lots:
                    acct.ledger.add_lot(lot)
                if tx is not None:  # the feed delivers each change once
                    try:
                        acct.ledger.post(tx)
                    except LedgerError as exc:  # verify will name it; keep serving
                        log.error("cannot apply ledger transaction %s: %s", tx.id, type(exc).__name__)

        return on_loop


class MirrorReloads:
    """Shared mode with Redis: a ledger change made outside settlement (credit granted, expired or
    reversed, a plan fee) reloads its tenant's mirror in Redis (`store/redis_state.py`)."""

    def __init__(self, mirror: RedisState, store: BillingStore, clock: Clock) -> None:
        self.mirror = mirror
        self.store = store
        self.clock = clock

    def load(self, conn: Connection) -> None:
        self.mirror.forget()  # changes made while no process was following the feed: reload all

    def apply(self, rows: list[tuple]) -> None:
        tx_ids = [ref for _, kind, ref in rows if kind == "ledger"]
        if tx_ids and (tenants := self.store.tenants_of(tx_ids)):
            self.mirror.load(sorted(tenants), self.clock.now())
