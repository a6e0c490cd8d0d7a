"""Admission and settlement of one request's money, in memory (the single-process fast path).

    quote → reserve (hold the most the request can cost) → … engine runs … → settle (post the
    actual cost, release the rest)

No database round trip: the ledger is held in memory (restored from the store at start, kept
current from the change feed); settlement returns the ledger transaction for the batched writer
to persist with the usage record. Holds that are never settled expire.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from tokenport.billing.ledger import Ledger, Transaction, charge_tx
from tokenport.billing.prices import BillableTokens, Cost, Price, PriceBook, cost_of
from tokenport.money import PICO_PER_NANO


class ModelNotPriced(LookupError):
    pass


class InsufficientQuota(Exception):
    def __init__(self, tenant_id: str, needed: int, available: int) -> None:
        super().__init__(f"tenant {tenant_id} needs {needed} nano-USD, has {available} available")
        self.needed = needed
        self.available = available


@dataclass(frozen=True)
class Hold:
    request_id: str
    tenant_id: str
    amount: int  # nano-USD
    expires_at: datetime


def max_cost(price: Price, max_input_tokens: int, max_output_tokens: int) -> int:
    """The most a request can cost, rounded up to the nano-USD: every input token uncached, every
    output token at the dearer of the output and reasoning prices."""
    if price.free:
        return 0
    out_price = max(price.output, price.reasoning or 0)
    pico = max_input_tokens * max(price.input, price.cached) + max_output_tokens * out_price
    return math.ceil(pico / PICO_PER_NANO)


def check_credit(tenant_id: str, amount: int, available: int) -> None:
    """The rule, in every admission mode: the request's most within the tenant's spendable credit
    (its balance less what its requests in flight hold)."""
    if amount > available:
        raise InsufficientQuota(tenant_id, amount, max(available, 0))


class Accountant:
    def __init__(self, ledger: Ledger, book: PriceBook, hold_ttl: timedelta = timedelta(minutes=30)) -> None:
        self.ledger = ledger
        self.book = book
        self.hold_ttl = hold_ttl
        self._holds: dict[str, Hold] = {}
        self._held: dict[str, int] = {}  # tenant id -> total held

    def quote(self, model: str, at: datetime) -> Price:
        price = self.book.at(model, at)
        if price is None:
            raise ModelNotPriced(model)
        return price

    def available(self, tenant_id: str, at: datetime) -> int:
        return self.ledger.tenant_balance(tenant_id, at) - self._held.get(tenant_id, 0)

    def reserve(self, request_id: str, tenant_id: str, amount: int, at: datetime) -> Hold | None:
        """Hold `amount` for the request, or refuse it. Free requests hold nothing."""
        if amount <= 0:
            return None
        check_credit(tenant_id, amount, self.available(tenant_id, at))
        hold = Hold(request_id, tenant_id, amount, at + self.hold_ttl)
        self._holds[request_id] = hold
        self._held[tenant_id] = self._held.get(tenant_id, 0) + amount
        return hold

    def release(self, request_id: str) -> None:
        hold = self._holds.pop(request_id, None)
        if hold is not None:
            self._held[hold.tenant_id] -= hold.amount

    def settle(
        self,
        tx_id: str,
        request_id: str,
        tenant_id: str,
        price: Price,
        tokens: BillableTokens,
        started_at: datetime,
        at: datetime,
    ) -> tuple[Cost, Transaction | None]:
        """Post the actual cost (`charge_tx`) and release the hold."""
        self.release(request_id)
        cost = cost_of(tokens, price)
        if cost.nano == 0:
            return cost, None
        tx = charge_tx(self.ledger, tx_id, tenant_id, request_id, cost.nano, started_at, at)
        self.ledger.post(tx)
        return cost, tx

    def expire_holds(self, now: datetime) -> int:
        stale = [h.request_id for h in self._holds.values() if h.expires_at <= now]
        for request_id in stale:
            self.release(request_id)
        return len(stale)

    def held(self, tenant_id: str) -> int:
        return self._held.get(tenant_id, 0)
