"""Repository for prices, credit lots and the ledger."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from itertools import groupby

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    and_,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from tokenport.billing.ledger import DuplicateCharge, Entry, LedgerError, Lot, Transaction, expiry_tx
from tokenport.billing.prices import Price
from tokenport.store.audit import audit_action
from tokenport.store.db import advisory_lock, write_lock
from tokenport.store.schema import (
    changes,
    credit_lots,
    fx_rates,
    ledger_entries,
    ledger_transactions,
    prices,
)

# A lot as the domain knows it; `remaining` is the store's cache of its balance.
LOT_COLUMNS = [c for c in credit_lots.c if c.name != "remaining"]


class BillingStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # --- prices ---

    def insert_price(self, price: Price, at: datetime) -> None:
        try:
            with self.engine.begin() as conn:
                audit_action(conn, "price.set", at, **price.__dict__)
                conn.execute(insert(prices).values(**price.__dict__, created_at=at))
                conn.execute(insert(changes).values(kind="price", ref=price.model[:64], at=at))
        except IntegrityError as exc:
            raise LedgerError(
                f"{price.model} already has a price from {price.effective_from.isoformat()}"
            ) from exc

    def load_prices(self, conn: Connection | None = None) -> list[Price]:
        cols = [c for c in prices.c if c.name not in ("id", "created_at")]
        q = select(*cols).order_by(prices.c.model, prices.c.effective_from)
        with _conn(self.engine, conn) as c:
            return [Price(**r._mapping) for r in c.execute(q)]

    # --- ledger ---

    def post(self, tx: Transaction, lot: Lot | None = None) -> None:
        """One transaction (and the lot it creates), atomically, with a change-feed row so that
        running servers apply it. A second charge of the same request id, or a second reversal of
        the same transaction, is refused by the database."""
        tx.check()
        try:
            with self.engine.begin() as conn:
                audit_action(
                    conn,
                    f"ledger.{tx.kind}",
                    tx.created_at,
                    tx_id=tx.id,
                    tenant_id=tx.tenant_id,
                    **({"lot": lot.__dict__} if lot is not None else {}),
                )
                if lot is not None:
                    conn.execute(insert(credit_lots).values(**lot.__dict__))
                write_transactions(conn, [tx])
                conn.execute(insert(changes).values(kind="ledger", ref=tx.id, at=tx.created_at))
        except IntegrityError as exc:
            if tx.request_id is not None and self.charged(tx.request_id):
                raise DuplicateCharge(f"request {tx.request_id} is already charged") from exc
            raise LedgerError(f"transaction {tx.id} conflicts with the ledger") from exc

    def post_expiry(self, lot: Lot, tx_id: str, at: datetime) -> bool:
        """Expire what the lot holds now, read under its tenant's lock, so that no settlement of
        another process interleaves. False: nothing left to expire."""
        try:
            with self.engine.begin() as conn:
                lock_tenants(conn, [lot.tenant_id])
                remaining = conn.execute(
                    select(credit_lots.c.remaining).where(credit_lots.c.id == lot.id)
                ).scalar_one()
                if remaining <= 0:
                    return False
                write_transactions(conn, [expiry_tx(tx_id, lot, remaining, at)])
                conn.execute(insert(changes).values(kind="ledger", ref=tx_id, at=at))
        except IntegrityError as exc:
            raise LedgerError(f"transaction {tx_id} conflicts with the ledger") from exc
        return True

    def tenants_of(self, tx_ids: list[str]) -> set[str]:
        q = select(ledger_transactions.c.tenant_id).where(ledger_transactions.c.id.in_(tx_ids))
        with self.engine.connect() as conn:
            return {t for t in conn.execute(q).scalars() if t is not None}

    def is_reversed(self, tx_id: str) -> bool:
        q = select(ledger_transactions.c.id).where(ledger_transactions.c.reverses == tx_id)
        with self.engine.connect() as conn:
            return conn.execute(q).first() is not None

    def load_transaction(self, tx_id: str) -> tuple[Transaction | None, Lot | None]:
        """One transaction, and the lot it granted if it is a grant."""
        txs = self._transactions(ledger_transactions.c.id == tx_id)
        if not txs:
            return None, None
        lot = None
        if txs[0].kind == "grant":
            lot_ids = [e.account[4:] for e in txs[0].entries if e.account.startswith("lot:")]
            with self.engine.connect() as conn:
                row = conn.execute(select(*LOT_COLUMNS).where(credit_lots.c.id.in_(lot_ids))).first()
            lot = Lot(**row._mapping) if row else None
        return txs[0], lot

    def load_lots(self, tenant_id: str | None = None, conn: Connection | None = None) -> list[Lot]:
        q = select(*LOT_COLUMNS).order_by(credit_lots.c.created_at, credit_lots.c.id)
        if tenant_id is not None:
            q = q.where(credit_lots.c.tenant_id == tenant_id)
        with _conn(self.engine, conn) as c:
            return [Lot(**r._mapping) for r in c.execute(q)]

    def usage_charges(self, tenant_id: str, request_ids: set[str]) -> list[Transaction]:
        """The usage transactions charging these requests."""
        t = ledger_transactions
        txs = self._transactions((t.c.tenant_id == tenant_id) & (t.c.kind == "usage"))
        return [tx for tx in txs if tx.request_id in request_ids]

    def load_transactions(self, tenant_id: str | None = None) -> list[Transaction]:
        """In ledger order."""
        where = ledger_transactions.c.tenant_id == tenant_id if tenant_id is not None else None
        return self._transactions(where)

    def _transactions(self, where: ColumnElement[bool]) -> list[Transaction]:
        t, e = ledger_transactions, ledger_entries
        q = select(t, e.c.account, e.c.amount).join(e, e.c.tx_id == t.c.id).order_by(t.c.seq, e.c.id)
        if where is not None:
            q = q.where(where)
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        out = []
        for _, group in groupby(rows, key=lambda r: r.seq):
            group = list(group)
            first = group[0]
            out.append(
                Transaction(
                    id=first.id,
                    kind=first.kind,
                    tenant_id=first.tenant_id,
                    entries=tuple(Entry(r.account, int(r.amount)) for r in group),
                    created_at=first.created_at,
                    request_id=first.request_id,
                    reverses=first.reverses,
                )
            )
        return out

    def lot_balances(self, conn: Connection | None = None) -> tuple[list[Lot], dict[str, int]]:
        """Every lot and every account balance: what a gateway process starts from."""
        q = select(ledger_entries.c.account, func.sum(ledger_entries.c.amount)).group_by(
            ledger_entries.c.account
        )
        with _conn(self.engine, conn) as c:
            balances = {a: int(s) for a, s in c.execute(q)}
            return self.load_lots(conn=c), balances

    def cached_remaining(self) -> dict[str, int]:
        """Each lot's cached balance (`credit_lots.remaining`), by account."""
        with self.engine.connect() as conn:
            return {
                f"lot:{r.id}": int(r.remaining)
                for r in conn.execute(select(credit_lots.c.id, credit_lots.c.remaining))
            }

    def orphans(self) -> list[str]:
        """Transactions without entries (the join in load_transactions cannot see them)."""
        t, e = ledger_transactions, ledger_entries
        q = select(t.c.id).outerjoin(e, e.c.tx_id == t.c.id).where(e.c.id.is_(None))
        with self.engine.connect() as conn:
            return [r.id for r in conn.execute(q)]

    def account_balances(self, accounts: list[str]) -> dict[str, int]:
        if not accounts:
            return {}
        q = (
            select(ledger_entries.c.account, func.sum(ledger_entries.c.amount))
            .where(ledger_entries.c.account.in_(accounts))
            .group_by(ledger_entries.c.account)
        )
        with self.engine.connect() as conn:
            found = {a: int(s) for a, s in conn.execute(q)}
        return {a: found.get(a, 0) for a in accounts}

    def set_fx_rate(self, period: str, micro: int, at: datetime) -> None:
        """One rate per period; setting it again replaces it (documents already issued keep theirs)."""
        with self.engine.begin() as conn:
            audit_action(conn, "fx.set", at, period=period, cny_per_usd_micro=micro)
            conn.execute(delete(fx_rates).where(fx_rates.c.period == period))
            conn.execute(insert(fx_rates).values(period=period, cny_per_usd_micro=micro, set_at=at))

    def fx_rates(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            return {r.period: int(r.cny_per_usd_micro) for r in conn.execute(select(fx_rates))}

    def charged(self, request_id: str) -> bool:
        q = select(ledger_transactions.c.id).where(
            and_(ledger_transactions.c.request_id == request_id, ledger_transactions.c.kind == "usage")
        )
        with self.engine.connect() as conn:
            return conn.execute(q).first() is not None


def lock_tenants(conn: Connection, tenant_ids: Iterable[str]) -> None:
    """Serialise writers of these tenants' lots (admission, settlement and expiry in shared mode),
    always in the same order, so no deadlock. PostgreSQL: transaction-level advisory locks.
    SQLite: a write takes the database's write lock, so the lock is that first write."""
    if conn.dialect.name == "postgresql":
        for tenant_id in sorted(set(tenant_ids)):
            advisory_lock(conn, "tokenport.tenant." + tenant_id)
    else:
        write_lock(conn)


def write_transactions(conn: Connection, txs: list[Transaction]) -> None:
    """Insert transactions and their entries (inside the caller's database transaction)."""
    if not txs:
        return
    conn.execute(
        insert(ledger_transactions),
        [
            {
                "id": tx.id,
                "kind": tx.kind,
                "tenant_id": tx.tenant_id,
                "request_id": tx.request_id,
                "reverses": tx.reverses,
                "created_at": tx.created_at,
            }
            for tx in txs
        ],
    )
    conn.execute(
        insert(ledger_entries),
        [{"tx_id": tx.id, "account": e.account, "amount": e.amount} for tx in txs for e in tx.entries],
    )
    deltas: dict[str, int] = {}  # the lots' cached balances move with their entries
    for tx in txs:
        for e in tx.entries:
            if e.account.startswith("lot:"):
                deltas[e.account[4:]] = deltas.get(e.account[4:], 0) + e.amount
    moves = [{"lot": lot, "delta": d} for lot, d in sorted(deltas.items()) if d]
    if moves:
        conn.execute(
            update(credit_lots)
            .where(credit_lots.c.id == bindparam("lot"))
            .values(remaining=credit_lots.c.remaining + bindparam("delta")),
            moves,
        )


@contextmanager
def _conn(engine: Engine, conn: Connection | None) -> Iterator[Connection]:
    """The caller's connection (a snapshot), or a fresh one."""
    if conn is not None:
        yield conn
    else:
        with engine.connect() as fresh:
            yield fresh
