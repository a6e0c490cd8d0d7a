"""Admission state shared by several gateway processes, in the database (shared mode).

One tenant's admissions and settlements are serialised by a lock per tenant: a transaction-level
advisory lock on PostgreSQL; on SQLite the first statement of each transaction is a write, which
takes the database's write lock. Under it, admission reads what it needs (the lots' cached
balances, the holds, the key's spend and rate counters, the plan's usage; for a fleet's device
its settled units on its local day and month, its holds and its rate bucket), lets the caller
decide, and writes the holds; settlement allocates each charge over the lots as they are then,
posts it and deletes the holds, in the same database transaction as the usage records (whose
counters, `device_days` among them, are written there too).
"""

from __future__ import annotations

from sqlalchemy import ColumnElement

__all__ = ["DB_DOWN", "Ask", "Charge", "Grant", "SharedStore", "Unavailable", "View"]

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, delete, func, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SATimeoutError

from tokenport.billing.admission import Ask, Charge, Grant, Unavailable, View
from tokenport.billing.ledger import Ledger, Lot, charge_tx
from tokenport.billing.plans import SEVEN_DAYS, minute_of
from tokenport.store.billing import LOT_COLUMNS, lock_tenants, write_transactions
from tokenport.store.counters import count_tokens
from tokenport.store.db import padded_chunks
from tokenport.store.schema import (
    credit_lots,
    device_buckets,
    device_days,
    device_holds,
    holds,
    key_spend,
    plan_minutes,
    rate_buckets,
    token_seconds,
)

DB_DOWN = (OperationalError, InterfaceError, DisconnectionError, SATimeoutError)


def _sum(column: ColumnElement[int], *where):
    return select(func.coalesce(func.sum(column), 0)).where(*where).scalar_subquery()


class SharedStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.pg = engine.dialect.name == "postgresql"
        self._insert = pg_insert if self.pg else sqlite_insert
        ids = bindparam("ids", expanding=True)
        self._release = delete(holds).where(holds.c.request_id.in_(ids))
        self._release_devices = delete(device_holds).where(device_holds.c.request_id.in_(ids))

    # --- admission ---

    def admit_many(self, items: list[tuple[Ask, Callable[[View], Grant]]]) -> list[Grant | Exception]:
        """Admit one tenant's requests in one database transaction, under its lock: each is read,
        decided (`decide` grants or raises to refuse) and written in turn, so each sees the holds
        of those before it. A refusal writes nothing; the others stand. Round trips on
        PostgreSQL: the lock and the lots once, then a read and a write per request, one commit."""
        try:
            return self._admit_many(items)
        except DB_DOWN as exc:  # the database unreachable: 503 for now, not a refusal
            raise Unavailable(type(exc).__name__) from exc

    def _admit_many(self, items: list[tuple[Ask, Callable[[View], Grant]]]) -> list[Grant | Exception]:
        tenant_id = items[0][0].tenant_id
        assert all(ask.tenant_id == tenant_id for ask, _ in items)
        out: list[Grant | Exception] = []
        with self.engine.begin() as conn:
            if self.pg:
                lock_tenants(conn, [tenant_id])
            else:  # a write first takes SQLite's write lock (and expired holds go)
                conn.execute(
                    delete(holds).where(holds.c.tenant_id == tenant_id, holds.c.expires_at <= items[0][0].at)
                )
            lots = self._lots(conn, [tenant_id]) if any(ask.money for ask, _ in items) else []
            for ask, decide in items:
                try:
                    grant = decide(self._view(conn, ask, lots))
                except Exception as exc:  # refused (or a bug): this request only
                    out.append(exc)
                    continue
                self._write(conn, ask, grant)
                out.append(grant)
        return out

    def release(self, request_ids: list[str]) -> None:
        """Drop holds nobody will settle (their requests went away while being admitted, or their
        settlement failed): the money's and the devices'."""
        with self.engine.begin() as conn:
            conn.execute(delete(holds).where(holds.c.request_id.in_(request_ids)))
            conn.execute(delete(device_holds).where(device_holds.c.request_id.in_(request_ids)))

    def _write(self, conn: Connection, ask: Ask, grant: Grant) -> None:
        if grant.bucket is not None:
            micro, at_us = grant.bucket
            stmt = self._insert(rate_buckets).values(key_id=ask.key_id, micro=micro, at_us=at_us)
            conn.execute(
                stmt.on_conflict_do_update(index_elements=["key_id"], set_={"micro": micro, "at_us": at_us})
            )
        if grant.hold > 0:
            period, start = ask.budget or (None, None)
            conn.execute(
                insert(holds).values(
                    request_id=ask.request_id,
                    tenant_id=ask.tenant_id,
                    key_id=ask.key_id,
                    amount=grant.hold,
                    budget_period=period,
                    budget_start=start,
                    expires_at=grant.expires_at,
                )
            )
        if ask.device is not None and grant.device_hold is not None:
            self._write_device(conn, ask, grant)

    def _write_device(self, conn: Connection, ask: Ask, grant: Grant) -> None:
        """The device's hold (one stream, its most units on its local day) and rate bucket."""
        device = ask.device
        assert device is not None and grant.device_hold is not None
        conn.execute(
            insert(device_holds).values(
                request_id=ask.request_id,
                tenant_id=ask.tenant_id,
                serial=device.serial,
                units=grant.device_hold,
                day=device.day,
                expires_at=grant.expires_at,
            )
        )
        if grant.device_bucket is not None:
            micro, at_us = grant.device_bucket
            stmt = self._insert(device_buckets).values(serial=device.serial, micro=micro, at_us=at_us)
            conn.execute(
                stmt.on_conflict_do_update(index_elements=["serial"], set_={"micro": micro, "at_us": at_us})
            )

    def _view(self, conn: Connection, ask: Ask, lots: list[tuple[Lot, int]]) -> View:
        """What `ask` needs; `lots` were read under the lock (holds do not change them)."""
        view = View()
        scalars = _scalars(ask)  # one statement for every single number the ask needs
        if scalars:
            row = conn.execute(select(*(q.label(k) for k, q in scalars.items()))).one()._mapping
            view.held = int(row.get("held") or 0)
            view.key_used = int(row.get("spent") or 0) + int(row.get("key_held") or 0)
            if ask.rpm and row["micro"] is not None:
                view.bucket = (int(row["micro"]), int(row["at_us"]))
            if ask.device is not None:
                _device_view(view, row)
        if ask.money:
            view.lots = lots
        if ask.tpm:
            t = token_seconds
            q = select(t.c.second, t.c.tokens).where(
                t.c.key_id == ask.key_id, t.c.second > int(ask.at.timestamp()) - 60
            )
            view.tokens = [(int(s), int(n)) for s, n in conn.execute(q)]
        if ask.plan:
            p = plan_minutes
            floor = minute_of(ask.at) - SEVEN_DAYS
            q = select(p.c.minute, p.c.units).where(p.c.tenant_id == ask.tenant_id, p.c.minute > floor)
            view.plan_minutes = [(int(m), int(u)) for m, u in conn.execute(q)]
        return view

    def _lots(self, conn: Connection, tenant_ids: list[str]) -> list[tuple[Lot, int]]:
        q = select(*LOT_COLUMNS, credit_lots.c.remaining).where(credit_lots.c.tenant_id.in_(tenant_ids))
        out = []
        for r in conn.execute(q):
            m = dict(r._mapping)
            remaining = int(m.pop("remaining"))
            out.append((Lot(**m), remaining))
        return out

    def held(self, tenant_id: str, at: datetime) -> int:
        q = select(func.coalesce(func.sum(holds.c.amount), 0)).where(
            holds.c.tenant_id == tenant_id, holds.c.expires_at > at
        )
        with self.engine.connect() as conn:
            return int(conn.execute(q).scalar_one())

    def purge(self, at: datetime) -> None:
        """Drop expired holds and counters no window can see (admission also drops its own), and
        devices' rate buckets a minute old (full again: the same as none)."""
        with self.engine.begin() as conn:
            conn.execute(delete(holds).where(holds.c.expires_at <= at))
            conn.execute(delete(device_holds).where(device_holds.c.expires_at <= at))
            floor_us = int(at.timestamp() * 1_000_000) - 60_000_000
            conn.execute(delete(device_buckets).where(device_buckets.c.at_us <= floor_us))
            conn.execute(delete(token_seconds).where(token_seconds.c.second <= int(at.timestamp()) - 60))
            conn.execute(delete(plan_minutes).where(plan_minutes.c.minute <= minute_of(at) - SEVEN_DAYS))

    # --- settlement, inside the usage writer's database transaction ---

    def settle(self, conn: Connection, charges: list[Charge]) -> None:
        """Post each charge against the lots as they are now, release the holds, count the tokens.
        The caller holds the tenants' locks and passes only charges whose record is new."""
        for chunk in padded_chunks([c.request_id for c in charges]):
            conn.execute(self._release, {"ids": chunk})
        for chunk in padded_chunks([c.request_id for c in charges if c.device_serial is not None]):
            conn.execute(self._release_devices, {"ids": chunk})
        money = [c for c in charges if c.tx_id is not None and c.cost > 0]
        lots: dict[str, list[tuple[Lot, int]]] = {c.tenant_id: [] for c in money}
        for lot, remaining in self._lots(conn, sorted(lots)) if money else []:
            lots[lot.tenant_id].append((lot, remaining))
        ledgers = {
            t: Ledger.restore([lot for lot, _ in ls], {lot.account: n for lot, n in ls})
            for t, ls in lots.items()
        }
        txs = []
        for c in money:
            tx = charge_tx(
                ledgers[c.tenant_id], c.tx_id, c.tenant_id, c.request_id, c.cost, c.started_at, c.finished_at
            )
            ledgers[c.tenant_id].post(tx)
            txs.append(tx)
        write_transactions(conn, txs)
        count_tokens(conn, [(c.key_id, c.finished_at, c.tokens) for c in charges if c.tokens])


def _scalars(ask: Ask) -> dict[str, ColumnElement]:
    """The single numbers `ask` needs, each a scalar subquery (read in one statement)."""
    active = holds.c.expires_at > ask.at
    scalars = {}
    if ask.money:
        scalars["held"] = _sum(holds.c.amount, holds.c.tenant_id == ask.tenant_id, active)
    if ask.budget is not None:
        period, start = ask.budget
        scalars["spent"] = _sum(
            key_spend.c.spent,
            key_spend.c.key_id == ask.key_id,
            key_spend.c.period == period,
            key_spend.c.period_start == start,
        )
        scalars["key_held"] = _sum(
            holds.c.amount,
            holds.c.key_id == ask.key_id,
            holds.c.budget_period == period,
            holds.c.budget_start == start,
            active,
        )
    if ask.rpm:
        r = rate_buckets
        for col in ("micro", "at_us"):
            scalars[col] = select(r.c[col]).where(r.c.key_id == ask.key_id).scalar_subquery()
    if ask.device is not None:
        scalars.update(_device_scalars(ask))
    return scalars


def _device_scalars(ask: Ask) -> dict[str, ColumnElement]:
    """A device's units settled on its local day and month to date, its active holds there, its
    requests in flight and its rate bucket."""
    device = ask.device
    assert device is not None
    d, h, b = device_days.c, device_holds.c, device_buckets.c
    mine = h.serial == device.serial
    active = h.expires_at > ask.at
    in_month = (device.month_first, device.month_last)
    return {
        "dev_day": _sum(d.units, d.serial == device.serial, d.day == device.day),
        "dev_month": _sum(d.units, d.serial == device.serial, d.day.between(*in_month)),
        "dev_day_held": _sum(h.units, mine, active, h.day == device.day),
        "dev_month_held": _sum(h.units, mine, active, h.day.between(*in_month)),
        "dev_streams": select(func.count()).where(mine, active).scalar_subquery(),
        "dev_micro": select(b.micro).where(b.serial == device.serial).scalar_subquery(),
        "dev_at_us": select(b.at_us).where(b.serial == device.serial).scalar_subquery(),
    }


def _device_view(view: View, row: Mapping[str, Any]) -> None:
    view.device_day_used = int(row["dev_day"] or 0) + int(row["dev_day_held"] or 0)
    view.device_month_used = int(row["dev_month"] or 0) + int(row["dev_month_held"] or 0)
    view.device_streams = int(row["dev_streams"] or 0)
    if row["dev_micro"] is not None:
        view.device_bucket = (int(row["dev_micro"]), int(row["dev_at_us"]))
