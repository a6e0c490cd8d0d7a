"""Billing administration shared by the CLI and (later) the admin API: prices, credits, balances,
expiry and verification."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from tokenport.billing.ledger import (
    Ledger,
    LedgerError,
    Lot,
    expiry_tx,
    grant_tx,
    lot_account,
    verify,
)
from tokenport.billing.money import MoneyError, usd_per_m_to_price, usd_to_nano
from tokenport.billing.prices import Price, PriceBook
from tokenport.clock import Clock, SystemClock
from tokenport.store.billing import BillingStore
from tokenport.tenancy.keys import new_id
from tokenport.tenancy.service import InvalidInput, TenancyService


@dataclass(frozen=True)
class LotBalance:
    lot: Lot
    remaining: int
    expired: bool


@dataclass(frozen=True)
class Balance:
    tenant: str
    tenant_id: str
    available: int  # nano-USD spendable now
    lots: list[LotBalance]


class BillingService:
    def __init__(self, store: BillingStore, tenancy: TenancyService, clock: Clock | None = None) -> None:
        self.store = store
        self.tenancy = tenancy
        self.clock = clock or SystemClock()

    # --- prices ---

    def set_price(
        self,
        model: str,
        input_usd_per_m: str | None,
        output_usd_per_m: str | None,
        cached_usd_per_m: str | None = None,
        reasoning_usd_per_m: str | None = None,
        free: bool = False,
        effective_from: datetime | None = None,
    ) -> Price:
        if not isinstance(model, str) or not 0 < len(model) <= 128:
            raise InvalidInput("model must be 1 to 128 characters")
        if free:
            values = (0, 0, 0, None)
        else:
            if input_usd_per_m is None or output_usd_per_m is None:
                raise InvalidInput("--input and --output are required (or --free)")
            try:
                inp = usd_per_m_to_price(input_usd_per_m, "input price")
                out = usd_per_m_to_price(output_usd_per_m, "output price")
                cached = usd_per_m_to_price(cached_usd_per_m, "cached price") if cached_usd_per_m else inp
                reasoning = (
                    usd_per_m_to_price(reasoning_usd_per_m, "reasoning price")
                    if reasoning_usd_per_m
                    else None
                )
            except MoneyError as exc:
                raise InvalidInput(str(exc)) from None
            values = (inp, out, cached, reasoning)
        now = self.clock.now()
        price = Price(
            model, effective_from or now, *values[:2], cached=values[2], reasoning=values[3], free=free
        )
        try:
            self.store.insert_price(price, now)
        except LedgerError as exc:
            raise InvalidInput(str(exc)) from None
        return price

    def price_book(self) -> PriceBook:
        return PriceBook(self.store.load_prices())

    # --- credits ---

    def grant(
        self, tenant_name: str, amount_usd: str, expires_at: datetime | None = None, promo: bool = False
    ) -> Lot:
        tenant = self.tenancy.tenant(tenant_name)
        try:
            amount = usd_to_nano(amount_usd)
        except MoneyError as exc:
            raise InvalidInput(str(exc)) from None
        if amount <= 0:
            raise InvalidInput("the amount must be positive")
        now = self.clock.now()
        if expires_at is not None and expires_at <= now:
            raise InvalidInput("the expiry must be in the future")
        lot = Lot(new_id("lot"), tenant.id, amount, promo, now, expires_at)
        self.store.post(grant_tx(new_id("tx"), lot), lot)
        return lot

    def balance(self, tenant_name: str) -> Balance:
        tenant = self.tenancy.tenant(tenant_name)
        now = self.clock.now()
        lots = self.store.load_lots(tenant.id)
        balances = self.store.account_balances([lot.account for lot in lots])
        items = [LotBalance(lot, balances[lot.account], lot.expired(now)) for lot in lots]
        available = sum(i.remaining for i in items if not i.expired)
        items.sort(key=lambda i: i.lot.burn_key())
        return Balance(tenant.name, tenant.id, available, items)

    def expire_due(self, grace: timedelta = timedelta(0)) -> list[str]:
        """Move the remainder of every lot expired more than `grace` ago out of the tenant's reach,
        by ledger entry. Each lot's expiry has a fixed transaction id, so overlapping runs expire a
        lot once. A grace period lets requests that started before the expiry settle first."""
        if grace < timedelta(0):
            raise InvalidInput("the grace period cannot be negative")
        now = self.clock.now()
        lots = self.store.load_lots()
        balances = self.store.account_balances([lot_account(lot.id) for lot in lots])
        posted = []
        for lot in lots:
            remaining = balances[lot.account]
            if lot.expired(now - grace) and remaining > 0 and (tx_id := self._expire(lot, remaining, now)):
                posted.append(tx_id)
        return posted

    def _expire(self, lot: Lot, remaining: int, now: datetime) -> str | None:
        """Post the lot's expiry. Its id is fixed (`exp_<lot>`, then `exp_<lot>_2`, … after a
        reversal), so a concurrent run conflicts instead of expiring the lot twice."""
        n = 1
        while True:
            tx_id = f"exp_{lot.id}" if n == 1 else f"exp_{lot.id}_{n}"
            try:
                self.store.post(expiry_tx(tx_id, lot, remaining, now))
                return tx_id
            except LedgerError:
                if not self.store.is_reversed(tx_id):
                    return None  # another run expired it first
                n += 1

    # --- integrity ---

    def verify(self) -> list[str]:
        problems = [f"transaction {t} has no entries" for t in self.store.orphans()]
        return problems + verify(self.store.load_transactions(), self.store.load_lots())

    def ledger(self) -> Ledger:
        """The whole ledger in memory (what a gateway process keeps for its fast path)."""
        ledger = Ledger()
        for lot in self.store.load_lots():
            ledger.add_lot(lot)
        for tx in self.store.load_transactions():
            ledger.post(tx)
        return ledger
