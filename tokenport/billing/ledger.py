"""Append-only double-entry ledger in nano-USD.

Accounts (the balance of an account is the sum of its entries):
- `lot:<id>`            one grant of credit to a tenant (what the tenant can spend); never < 0
- `funding:paid`        money received for paid credit (goes negative as credit is sold)
- `funding:promo`       promotional credit given away (goes negative as promos are granted)
- `revenue:usage`       tokens sold
- `revenue:breakage`    paid credit that expired unused
- `revenue:plans`       plan fees
- `revenue:packages`    device package fees (a maker's device activated for the first time)
- `receivable:<tenant>` what a tenant owes: plan fees, and usage beyond its credit (only if a
                        hold was too small)

Every transaction sums to zero. Mistakes are corrected by a reversal (the negated entries),
never by editing. A usage debit names its request id and can exist once.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime

FUNDING_PAID = "funding:paid"
FUNDING_PROMO = "funding:promo"
REVENUE_USAGE = "revenue:usage"
REVENUE_BREAKAGE = "revenue:breakage"
REVENUE_PLANS = "revenue:plans"
REVENUE_PACKAGES = "revenue:packages"
KINDS = ("grant", "usage", "expiry", "reversal", "fee", "package")
BILLED = {"fee": REVENUE_PLANS, "package": REVENUE_PACKAGES}  # owed by the tenant, billed on its invoice


class LedgerError(ValueError):
    pass


class InsufficientFunds(LedgerError):
    pass


class DuplicateCharge(LedgerError):
    pass


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # a placeholder sort key for "never expires"


def lot_account(lot_id: str) -> str:
    return f"lot:{lot_id}"


@dataclass(frozen=True)
class Entry:
    account: str
    amount: int  # nano-USD; positive adds to the account's balance


@dataclass(frozen=True)
class Transaction:
    id: str
    kind: str
    tenant_id: str
    entries: tuple[Entry, ...]
    created_at: datetime
    request_id: str | None = None  # usage: the request it charges (unique)
    reverses: str | None = None  # reversal: the transaction it cancels

    def problems(self) -> list[str]:
        p = []
        if self.kind not in KINDS:
            p.append(f"unknown kind {self.kind!r}")
        if not self.entries:
            p.append("no entries")
        if any(not isinstance(e.amount, int) or isinstance(e.amount, bool) for e in self.entries):
            p.append("non-integer amount")
        elif sum(e.amount for e in self.entries) != 0:
            p.append(f"entries sum to {sum(e.amount for e in self.entries)}, not 0")
        if any(e.amount == 0 for e in self.entries):
            p.append("zero entry")
        if self.kind == "usage" and not self.request_id:
            p.append("usage without a request id")
        if self.kind == "reversal" and not self.reverses:
            p.append("reversal without the transaction it reverses")
        if self.kind in BILLED and sorted(e.account for e in self.entries) != sorted(
            (BILLED[self.kind], receivable_account(self.tenant_id))
        ):
            p.append(f"a {self.kind} moves anything but the tenant's receivable and {BILLED[self.kind]}")
        return p

    def check(self) -> Transaction:
        if problems := self.problems():
            raise LedgerError(f"transaction {self.id}: " + "; ".join(problems))
        return self


@dataclass(frozen=True)
class Lot:
    """A grant of credit. Its balance lives in the ledger (account `lot:<id>`)."""

    id: str
    tenant_id: str
    amount: int
    promo: bool
    created_at: datetime
    expires_at: datetime | None = None

    @property
    def account(self) -> str:
        return lot_account(self.id)

    def burn_key(self) -> tuple:
        """Soonest expiry first (never-expiring last), promotional before paid, then oldest."""
        never = self.expires_at is None
        return (never, _EPOCH if never else self.expires_at, not self.promo, self.created_at, self.id)

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now


# --- building transactions ---------------------------------------------------------------------


def grant_tx(tx_id: str, lot: Lot) -> Transaction:
    if lot.amount <= 0:
        raise LedgerError("a grant must be positive")
    source = FUNDING_PROMO if lot.promo else FUNDING_PAID
    entries = (Entry(source, -lot.amount), Entry(lot.account, lot.amount))
    return Transaction(tx_id, "grant", lot.tenant_id, entries, lot.created_at).check()


def receivable_account(tenant_id: str) -> str:
    return f"receivable:{tenant_id}"


def usage_tx(
    tx_id: str,
    tenant_id: str,
    request_id: str,
    allocation: list[tuple[str, int]],
    at: datetime,
    shortfall: int = 0,
) -> Transaction:
    """Debit the lots (as allocated by `Ledger.allocate`), and the tenant's receivable for any
    shortfall, and credit usage revenue."""
    total = sum(amount for _, amount in allocation) + shortfall
    entries = tuple(Entry(lot_account(lot_id), -amount) for lot_id, amount in allocation if amount)
    if shortfall:
        entries += (Entry(receivable_account(tenant_id), -shortfall),)
    if total:
        entries += (Entry(REVENUE_USAGE, total),)
    return Transaction(tx_id, "usage", tenant_id, entries, at, request_id=request_id)


def charge_tx(
    ledger: Ledger,
    tx_id: str,
    tenant_id: str,
    request_id: str,
    amount: int,
    started_at: datetime,
    at: datetime,
) -> Transaction:
    """Charge `amount` to the lots usable when the request started, in burn order (one expiring
    meanwhile still pays). Should the lots hold less (a hold that was too small), the rest is
    charged to the tenant's receivable, never lost."""
    try:
        allocation, shortfall = ledger.allocate(tenant_id, amount, started_at), 0
    except InsufficientFunds:
        take = max(0, min(ledger.tenant_balance(tenant_id, started_at), amount))
        allocation = ledger.allocate(tenant_id, take, started_at) if take else []
        shortfall = amount - take
    return usage_tx(tx_id, tenant_id, request_id, allocation, at, shortfall=shortfall)


def fee_tx_id(tenant_id: str, period: str, plan: str) -> str:
    """The fixed id of a plan's fee for a month: posting it twice is refused by the store."""
    return "fee_" + hashlib.sha256(f"{tenant_id}|{period}|{plan}".encode()).hexdigest()[:28]


def fee_tx(tx_id: str, tenant_id: str, amount: int, at: datetime) -> Transaction:
    """A plan fee, billed: the tenant owes it (receivable), plan revenue earns it."""
    entries = (Entry(receivable_account(tenant_id), -amount), Entry(REVENUE_PLANS, amount))
    return Transaction(tx_id, "fee", tenant_id, entries, at).check()


def package_tx_id(serial: str, fleet_id: str) -> str:
    """The fixed id of a device's package fee: one per device, however often it activates."""
    return "pkg_" + hashlib.sha256(f"{fleet_id}|{serial}".encode()).hexdigest()[:28]


def package_tx(tx_id: str, tenant_id: str, amount: int, at: datetime) -> Transaction:
    """A device's package fee at its first activation: the maker owes it, package revenue earns it."""
    entries = (Entry(receivable_account(tenant_id), -amount), Entry(REVENUE_PACKAGES, amount))
    return Transaction(tx_id, "package", tenant_id, entries, at).check()


def expiry_tx(tx_id: str, lot: Lot, remaining: int, at: datetime) -> Transaction:
    sink = FUNDING_PROMO if lot.promo else REVENUE_BREAKAGE
    entries = (Entry(lot.account, -remaining), Entry(sink, remaining))
    return Transaction(tx_id, "expiry", lot.tenant_id, entries, at).check()


def reversal_tx(tx_id: str, original: Transaction, at: datetime) -> Transaction:
    entries = tuple(Entry(e.account, -e.amount) for e in original.entries)
    return Transaction(tx_id, "reversal", original.tenant_id, entries, at, reverses=original.id).check()


# --- the ledger --------------------------------------------------------------------------------


@dataclass
class Ledger:
    """Transactions, lots and the balances derived from them. The store persists both."""

    transactions: list[Transaction] = field(default_factory=list)
    lots: dict[str, Lot] = field(default_factory=dict)
    _balances: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    _by_request: dict[str, str] = field(default_factory=dict)
    _by_id: dict[str, Transaction] = field(default_factory=dict)
    _reversed: set[str] = field(default_factory=set)
    _lots_by_tenant: dict[str, list[Lot]] = field(default_factory=lambda: defaultdict(list))
    _granted: set[str] = field(default_factory=set)
    # False in a running gateway: balances only, so memory does not grow with every request.
    # Uniqueness of charges and reversals is then the store's job (unique constraints).
    history: bool = True

    @classmethod
    def restore(cls, lots: list[Lot], balances: dict[str, int]) -> Ledger:
        """A ledger resumed from stored balances (a gateway process starting up): the history
        stays in the store; only what is needed to admit and settle is in memory."""
        ledger = cls(history=False)
        for lot in lots:
            ledger.add_lot(lot)
        ledger._balances.update(balances)
        ledger._granted.update(lot.account for lot in lots)  # a lot is stored with its grant
        return ledger

    def add_lot(self, lot: Lot) -> None:
        if lot.id in self.lots:
            raise LedgerError(f"lot {lot.id} already exists")
        self.lots[lot.id] = lot
        self._lots_by_tenant[lot.tenant_id].append(lot)

    def post(self, tx: Transaction) -> None:
        """Apply a transaction; refuses anything that would break an invariant."""
        tx.check()
        self._check_new(tx)
        deltas: dict[str, int] = defaultdict(int)  # an account named twice is checked as a whole
        for e in tx.entries:
            deltas[e.account] += e.amount
        for account, delta in deltas.items():
            self._check_account(tx, account, delta)
        self._apply(tx)

    def _check_new(self, tx: Transaction) -> None:
        """Refuse a transaction, a charge of a request or a reversal that was posted before."""
        if tx.id in self._by_id:
            raise LedgerError(f"transaction {tx.id} already posted")
        if tx.request_id is not None and tx.request_id in self._by_request:
            raise DuplicateCharge(f"request {tx.request_id} is already charged")
        if tx.kind == "reversal" and self.history:
            original = self._by_id.get(tx.reverses or "")
            if original is None or tx.reverses in self._reversed:
                raise LedgerError(f"cannot reverse {tx.reverses}")

    def _check_account(self, tx: Transaction, account: str, delta: int) -> None:
        """Refuse moving `delta` on an account that is not the tenant's, or a lot below zero
        (or granted twice)."""
        if account.startswith("lot:"):
            lot = self.lots.get(account[4:])
            if lot is None or lot.tenant_id != tx.tenant_id:
                raise LedgerError(f"{account} is not a lot of tenant {tx.tenant_id}")
            if self._balances[account] + delta < 0:
                raise InsufficientFunds(f"{account} would go below zero")
            if tx.kind == "grant" and account in self._granted:
                raise LedgerError(f"{account} has already been granted")
        elif account.startswith("receivable:") and account != receivable_account(tx.tenant_id):
            raise LedgerError(f"{account} is not the receivable of tenant {tx.tenant_id}")

    def _apply(self, tx: Transaction) -> None:
        for e in tx.entries:
            self._balances[e.account] += e.amount
            if tx.kind == "grant" and e.account.startswith("lot:"):
                self._granted.add(e.account)
        if not self.history:
            return
        self.transactions.append(tx)
        self._by_id[tx.id] = tx
        if tx.request_id is not None:
            self._by_request[tx.request_id] = tx.id
        if tx.reverses:
            self._reversed.add(tx.reverses)

    def charged(self, request_id: str) -> bool:
        return request_id in self._by_request

    def balance(self, account: str) -> int:
        return self._balances.get(account, 0)

    def tenant_lots(self, tenant_id: str) -> list[Lot]:
        return list(self._lots_by_tenant.get(tenant_id, ()))

    def tenant_balance(self, tenant_id: str, now: datetime | None = None) -> int:
        """What the tenant can spend: unexpired lots' balances."""
        return sum(
            self.balance(lot.account)
            for lot in self.tenant_lots(tenant_id)
            if now is None or not lot.expired(now)
        )

    def allocate(self, tenant_id: str, amount: int, now: datetime) -> list[tuple[str, int]]:
        """Which lots pay `amount`, in burn order."""
        out: list[tuple[str, int]] = []
        left = amount
        for lot in sorted(self.tenant_lots(tenant_id), key=Lot.burn_key):
            if left <= 0:
                break
            available = self.balance(lot.account)
            if lot.expired(now) or available <= 0:
                continue
            take = min(available, left)
            out.append((lot.id, take))
            left -= take
        if left > 0:
            raise InsufficientFunds(f"tenant {tenant_id} is short by {left} nano-USD")
        return out

    def expiries_due(self, now: datetime) -> list[tuple[Lot, int]]:
        return [
            (lot, self.balance(lot.account))
            for lot in self.lots.values()
            if lot.expired(now) and self.balance(lot.account) > 0
        ]
