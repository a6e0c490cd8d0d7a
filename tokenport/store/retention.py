"""Repository for retained (sealed) request and response bodies. Only ciphertext is stored; every
deletion (expiry or a tenant's purge) is an audit entry in the zone, in the same transaction."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, Engine, Row, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from tokenport.audit.entries import admin_entry, canonical
from tokenport.audit.receipts import ids_digest
from tokenport.store.audit import append as audit_append
from tokenport.store.db import write_lock
from tokenport.store.schema import retained
from tokenport.zones.retention import Sealed


def insert_retained(conn: Connection, rows: list[dict]) -> None:
    """Inside the usage writer's transaction; a retried batch inserts nothing twice."""
    if rows:
        insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
        conn.execute(insert(retained).on_conflict_do_nothing(index_elements=["request_id"]), rows)


class RetentionStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def get(self, request_id: str, tenant_id: str, now: datetime) -> tuple[str, datetime, Sealed] | None:
        """(zone, expires_at, sealed record) of one of the tenant's unexpired records."""
        r = retained.c
        q = select(retained).where(r.request_id == request_id, r.tenant_id == tenant_id, r.expires_at > now)
        with self.engine.connect() as conn:
            row = conn.execute(q).first()
        if row is None:
            return None
        return row.zone, row.expires_at, Sealed(row.kek_id, row.wrapped_key, row.ciphertext)

    def count(self, tenant_id: str | None = None) -> int:
        q = select(retained.c.request_id)
        if tenant_id is not None:
            q = q.where(retained.c.tenant_id == tenant_id)
        with self.engine.connect() as conn:
            return len(conn.execute(q).all())

    def purge_expired(self, now: datetime) -> int:
        """Delete every expired record; one audit entry per zone and tenant affected."""
        with self.engine.begin() as conn:
            write_lock(conn)
            rows = conn.execute(
                select(retained.c.request_id, retained.c.tenant_id, retained.c.zone).where(
                    retained.c.expires_at <= now
                )
            ).all()
            self._delete(conn, rows, "retention.expire", now)
        return len(rows)

    def purge_tenant(self, tenant_id: str, zone: str, now: datetime) -> tuple[list[str], int]:
        """Delete all of a tenant's retained records: their ids and the purge's audit index."""
        with self.engine.begin() as conn:
            write_lock(conn)
            rows = conn.execute(
                select(retained.c.request_id, retained.c.tenant_id, retained.c.zone).where(
                    retained.c.tenant_id == tenant_id
                )
            ).all()
            indexes = self._delete(conn, rows, "retention.purge", now, always=(tenant_id, zone))
        return [r.request_id for r in rows], indexes[(zone, tenant_id)]

    def _delete(
        self,
        conn: Connection,
        rows: list[Row],
        action: str,
        now: datetime,
        always: tuple[str, str] | None = None,
    ) -> dict[tuple[str, str], int]:
        groups: dict[tuple[str, str], list[str]] = {}
        if always is not None:
            groups[(always[1], always[0])] = []
        for r in rows:
            groups.setdefault((r.zone, r.tenant_id), []).append(r.request_id)
        indexes = {}
        for (zone, tenant_id), ids in sorted(groups.items()):
            for i in range(0, len(ids), 500):
                conn.execute(delete(retained).where(retained.c.request_id.in_(ids[i : i + 500])))
            entry = admin_entry(
                action,
                now,
                tenant_id=tenant_id,
                zone=zone,
                records=len(ids),
                request_ids_sha256=ids_digest(ids),
            )
            (indexes[(zone, tenant_id)],) = audit_append(conn, zone, [canonical(entry)], now)
        return indexes
