"""The ledger's invariants, recomputed from scratch (`tokenport ledger verify`): each transaction
well formed and unique, each request charged once, each reversal the exact negation of one
transaction, lots never below zero and never moved by another tenant, each lot granted once, and
the lots' cached balances equal to their entries."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from tokenport.billing.ledger import Lot, Transaction, receivable_account


@dataclass
class _Seen:
    """What the transactions before the current one established."""

    ids: set[str] = field(default_factory=set)
    charged: dict[str, str] = field(default_factory=dict)  # request id -> the transaction charging it
    by_id: dict[str, Transaction] = field(default_factory=dict)
    reversed_: set[str] = field(default_factory=set)
    balances: dict[str, int] = field(default_factory=lambda: defaultdict(int))


def verify(transactions: list[Transaction], lots: list[Lot]) -> list[str]:
    """Every invariant; an empty list means the ledger is sound."""
    problems: list[str] = []
    lot_by_id = {lot.id: lot for lot in lots}
    seen = _Seen()
    for tx in transactions:
        problems += _transaction_problems(tx, seen)
        problems += _entry_problems(tx, lot_by_id, seen.balances)
    return problems + _grant_problems(transactions, lots)


def _transaction_problems(tx: Transaction, seen: _Seen) -> list[str]:
    problems = [f"transaction {tx.id}: {p}" for p in tx.problems()]
    if tx.id in seen.ids:
        problems.append(f"transaction {tx.id} appears twice")
    seen.ids.add(tx.id)
    seen.by_id[tx.id] = tx
    if tx.request_id is not None:
        if tx.request_id in seen.charged:
            problems.append(f"request {tx.request_id} charged twice ({seen.charged[tx.request_id]}, {tx.id})")
        seen.charged[tx.request_id] = tx.id
    if tx.kind == "reversal":
        problems += _reversal_problems(tx, seen)
    return problems


def _reversal_problems(tx: Transaction, seen: _Seen) -> list[str]:
    problems = []
    original = seen.by_id.get(tx.reverses or "")
    if original is None:
        problems.append(f"reversal {tx.id} of unknown transaction {tx.reverses}")
    elif sorted((e.account, -e.amount) for e in original.entries) != sorted(
        (e.account, e.amount) for e in tx.entries
    ):
        problems.append(f"reversal {tx.id} does not negate {tx.reverses}")
    if tx.reverses in seen.reversed_:
        problems.append(f"transaction {tx.reverses} reversed twice")
    seen.reversed_.add(tx.reverses or "")
    return problems


def _entry_problems(tx: Transaction, lot_by_id: dict[str, Lot], balances: dict[str, int]) -> list[str]:
    problems = []
    for e in tx.entries:
        if e.account.startswith("lot:"):
            lot = lot_by_id.get(e.account[4:])
            if lot is None:
                problems.append(f"transaction {tx.id} names unknown {e.account}")
            elif lot.tenant_id != tx.tenant_id:
                problems.append(f"transaction {tx.id} moves {e.account} of another tenant")
        elif e.account.startswith("receivable:") and e.account != receivable_account(tx.tenant_id):
            problems.append(f"transaction {tx.id} moves another tenant's {e.account}")
        balances[e.account] += e.amount
        if e.account.startswith("lot:") and balances[e.account] < 0:
            problems.append(f"{e.account} went below zero at transaction {tx.id}")
    return problems


def _grant_problems(transactions: list[Transaction], lots: list[Lot]) -> list[str]:
    grants: dict[str, list[int]] = defaultdict(list)
    for tx in transactions:
        if tx.kind == "grant":
            for e in tx.entries:
                if e.account.startswith("lot:"):
                    grants[e.account].append(e.amount)
    return [
        f"lot {lot.id} does not have exactly one grant of its amount"
        for lot in lots
        if grants.get(lot.account) != [lot.amount]
    ]


def cache_problems(transactions: list[Transaction], cached: dict[str, int]) -> list[str]:
    """Where a lot's cached balance differs from the sum of its entries."""
    sums: dict[str, int] = defaultdict(int)
    for tx in transactions:
        for e in tx.entries:
            if e.account.startswith("lot:"):
                sums[e.account] += e.amount
    return [
        f"{account}: cached balance {value} but its entries sum to {sums.get(account, 0)}"
        for account, value in sorted(cached.items())
        if value != sums.get(account, 0)
    ]


def package_problems(transactions: list[Transaction], expected: dict[str, tuple[str, int]]) -> list[str]:
    """Each device's package fee once, as its product says (`expected`: transaction id -> (tenant,
    fee) of every device activated with a fee), and no package transaction without a device."""
    posted = {tx.id: tx for tx in transactions if tx.kind == "package"}
    problems = [
        f"package fee {tx_id} of an activated device is missing" for tx_id in expected.keys() - posted.keys()
    ]
    for tx_id, tx in sorted(posted.items()):
        if tx_id not in expected:
            problems.append(f"package transaction {tx_id} belongs to no activated device")
            continue
        tenant_id, fee = expected[tx_id]
        charged = -sum(e.amount for e in tx.entries if e.account.startswith("receivable:"))
        if (tx.tenant_id, charged) != (tenant_id, fee):
            problems.append(
                f"package transaction {tx_id} charges {charged} to {tx.tenant_id}, not {fee} to {tenant_id}"
            )
    return problems
