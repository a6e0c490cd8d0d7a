"""Usage records: idempotent batch insert and queries."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from pathlib import Path

import redis
from sqlalchemy import Connection, Date, Engine, Select, bindparam, cast, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from tokenport.audit.entries import canonical, request_entry
from tokenport.store.audit import append as audit_append
from tokenport.store.billing import lock_tenants, write_transactions
from tokenport.store.counters import count_usage
from tokenport.store.db import padded_chunks, write_lock
from tokenport.store.retention import insert_retained
from tokenport.store.schema import tenants, usage
from tokenport.store.shared import DB_DOWN, SharedStore
from tokenport.usage_record import ALLOWED_FIELDS, check_row

_TOTAL_COLUMNS = ("prompt_tokens", "cached_tokens", "completion_tokens")


class UsageStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        dialect = engine.dialect.name
        insert = pg_insert if dialect == "postgresql" else sqlite_insert
        # request_id is the idempotency key: a retried batch never duplicates a record.
        self._insert = insert(usage).on_conflict_do_nothing(index_elements=["request_id"])
        ids = bindparam("ids", expanding=True)
        self._known = select(usage.c.request_id).where(usage.c.request_id.in_(ids))
        self.shared = SharedStore(engine)
        self.mirror = None  # RedisState when admission runs in Redis: it mirrors what settles

    def insert_many(self, rows: list[dict]) -> None:
        if rows:
            self.write_settlements([{"usage": r} for r in rows])

    def write_settlements(self, items: list[dict]) -> None:
        """Usage records, their ledger transactions and counters, in one database transaction.
        Idempotent: a batch retried after a commit that did happen writes nothing twice."""
        rows = [i["usage"] for i in items]
        for r in rows:
            check_row(r)  # only the content-free schema's fields, whatever a caller passes
        charges = [i["charge"] for i in items if i.get("charge") is not None]
        release = None
        with self.engine.begin() as conn:
            new = self._insert_new(conn, rows)
            txs = [i["tx"] for i in items if i.get("tx") is not None and i["usage"]["request_id"] in new]
            write_transactions(conn, txs)
            fresh = [r for r in rows if r["request_id"] in new]
            count_usage(conn, fresh)
            audit_requests(conn, fresh)
            insert_retained(
                conn, [i["retained"] for i in items if "retained" in i and i["usage"]["request_id"] in new]
            )
            mirrored = {r["tenant_id"] for r in fresh if r.get("cost_nano_usd") or r.get("plan_units")}
            if charges or (self.mirror and mirrored):
                # Shared mode, last: the tenants' locks are held from here to the commit.
                lock_tenants(conn, {c.tenant_id for c in charges} | (mirrored if self.mirror else set()))
                settled = [c for c in charges if c.request_id in new]
                self.shared.settle(conn, settled)
                if self.mirror is not None:  # Redis: the new counters before the commit
                    release = self.mirror.settle(conn, fresh, charges)
        if release is not None:  # ... and the holds after it
            release()

    def _insert_new(self, conn: Connection, rows: list[dict]) -> set[str]:
        """Insert the records; the ids of those not written before. Look first, then insert:
        both statements keep one text whatever the batch's size (`padded_chunks`, executemany),
        where a multi-row RETURNING insert is a new statement for every batch size (and several
        times slower on PostgreSQL). SQLite takes its write lock before the read, so that the
        transaction's snapshot cannot be too old to write under concurrent writers."""
        ids = [r["request_id"] for r in rows]
        write_lock(conn)
        known: set[str] = set()
        for chunk in padded_chunks(ids):
            known.update(conn.execute(self._known, {"ids": chunk}).scalars())
        conn.execute(self._insert, rows)
        return set(ids) - known

    def query(
        self,
        tenant_name: str | None = None,
        since: datetime | None = None,
        limit: int | None = None,
        until: datetime | None = None,
    ) -> list[dict]:
        q = (
            select(usage, tenants.c.name.label("tenant"))
            .join(tenants, tenants.c.id == usage.c.tenant_id)
            .order_by(usage.c.started_at, usage.c.request_id)
        )
        q = _filter(q, tenant_name, since)
        if until is not None:
            q = q.where(usage.c.started_at < until)
        if limit:
            q = q.limit(limit)
        with self.engine.connect() as conn:
            return [{str(k): v for k, v in r._mapping.items()} for r in conn.execute(q)]

    def totals(self, tenant_name: str | None = None, since: datetime | None = None) -> dict:
        cols = [func.count().label("requests")] + [
            func.coalesce(func.sum(usage.c[c]), 0).label(c) for c in _TOTAL_COLUMNS
        ]
        q = _filter(
            select(*cols).select_from(usage.join(tenants, tenants.c.id == usage.c.tenant_id)),
            tenant_name,
            since,
        )
        with self.engine.connect() as conn:
            row = conn.execute(q).one()
        return {k: int(v) for k, v in row._mapping.items()}

    def grouped(
        self, tenant_id: str, group_by: str, start: datetime | None = None, end: datetime | None = None
    ) -> list[dict]:
        """One tenant's usage summed by day, model or key, over [start, end)."""
        q = grouped_query(self.engine.dialect.name, tenant_id, group_by, start, end)
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        return [
            {
                group_by: str(r[0]) if r[0] is not None else None,
                **{k: int(v) for k, v in r._mapping.items() if k != group_by},
            }
            for r in rows
        ]

    def spend_by_key(self, conn: Connection, since: datetime) -> dict[str, int]:
        q = (
            select(usage.c.key_id, func.sum(usage.c.cost_nano_usd))
            .where(usage.c.started_at >= since, usage.c.cost_nano_usd.is_not(None))
            .group_by(usage.c.key_id)
        )
        return {k: int(v) for k, v in conn.execute(q)}

    def count(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(usage)).scalar_one()


def audit_requests(conn: Connection, rows: list[dict]) -> None:
    """One audit entry per new usage record, in its zone's log (zones in a fixed order: no deadlock)."""
    by_zone: dict[str, list[dict]] = {}
    for r in rows:
        by_zone.setdefault(r["zone"], []).append(r)
    for zone, records in sorted(by_zone.items()):
        at = max(r["finished_at"] for r in records)
        entries = [canonical(request_entry(r)) for r in records]
        audit_append(conn, zone, entries, at, [r["request_id"] for r in records])


def _filter(q: Select, tenant_name: str | None, since: datetime | None):
    if tenant_name is not None:
        q = q.where(tenants.c.name == tenant_name)
    if since is not None:
        q = q.where(usage.c.started_at >= since)
    return q


def is_transient(exc: Exception) -> bool:
    """The database (or Redis, which mirrors settlements) was unreachable or busy (retry), as
    opposed to the database refusing the row."""
    return isinstance(exc, (*DB_DOWN, redis.RedisError))


class DeadLetterFile:
    """Usage rows (or energy windows) the database refused, kept as JSON lines for an operator
    (content-free)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, item: dict, exc: Exception) -> None:
        entry = {"error": type(exc).__name__, **item}
        if "usage" in item:
            entry["usage"] = {k: v for k, v in item["usage"].items() if k in ALLOWED_FIELDS}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(entry, default=_plain) + "\n")


def _plain(value: object):
    if isinstance(value, datetime):
        return value.isoformat()
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return str(value)


def _day(dialect: str):
    return func.date(usage.c.started_at) if dialect == "sqlite" else cast(usage.c.started_at, Date)


def group_key(dialect: str, group_by: str):
    columns = {
        "day": _day(dialect),
        "model": usage.c.model,
        "key": usage.c.key_id,
        "device": usage.c.device_serial,  # a fleet's device (null: not a device's request)
        "product": usage.c.product_id,
    }
    return columns[group_by].label(group_by)


def month(dialect: str):
    """A usage record's month, YYYY-MM (UTC)."""
    if dialect == "sqlite":
        return func.strftime("%Y-%m", usage.c.started_at)
    return func.to_char(func.timezone("UTC", usage.c.started_at), "YYYY-MM")


def grouped_query(dialect: str, tenant_id: str, group_by: str, start: datetime | None, end: datetime | None):
    key = group_key(dialect, group_by)
    q = select(
        key,
        func.count().label("requests"),
        func.coalesce(func.sum(usage.c.prompt_tokens), 0).label("prompt_tokens"),
        func.coalesce(func.sum(usage.c.cached_tokens), 0).label("cached_tokens"),
        func.coalesce(func.sum(usage.c.completion_tokens), 0).label("completion_tokens"),
        func.coalesce(func.sum(usage.c.cost_nano_usd), 0).label("cost_nano_usd"),
    ).where(usage.c.tenant_id == tenant_id)
    if start is not None:
        q = q.where(usage.c.started_at >= start)
    if end is not None:
        q = q.where(usage.c.started_at < end)
    return q.group_by(key).order_by(key)
