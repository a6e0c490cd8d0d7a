"""Repository for the audit log: append entries to a zone's tree (under the zone's lock, O(log n)
per entry from the stored right edge), read them back, store signed heads and public keys."""

from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import Connection, Engine, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from tokenport.audit.entries import admin_entry, canonical
from tokenport.audit.heads import TreeHead
from tokenport.audit.merkle import Frontier, leaf_hash
from tokenport.audit.verify import StoredEntry, StoredHead
from tokenport.store.db import advisory_lock, write_lock
from tokenport.store.schema import audit_entries, audit_heads, audit_state, signing_keys, tenants, zones


def lock_zone(conn: Connection, zone: str) -> None:
    """One appender per zone at a time, across processes (SQLite: its write lock does it)."""
    advisory_lock(conn, "tokenport.audit." + zone)


def append(
    conn: Connection, zone: str, entries: list[bytes], at: datetime, refs: list[str | None] | None = None
) -> list[int]:
    """Append canonical entries to the zone's log, inside the caller's transaction; their indexes.
    `refs`: the request id of each entry that has one (how a receipt finds its entry)."""
    if not entries:
        return []
    lock_zone(conn, zone)
    row = conn.execute(select(audit_state).where(audit_state.c.zone == zone)).first()
    frontier = (
        Frontier(row.size, [(h, bytes.fromhex(x)) for h, x in json.loads(row.frontier)])
        if row
        else Frontier()
    )
    first = frontier.size
    rows = []
    for i, entry in enumerate(entries):
        leaf = leaf_hash(entry)
        frontier.append(leaf)
        rows.append(
            {
                "zone": zone,
                "idx": frontier.size - 1,
                "at": at,
                "entry": entry.decode(),
                "leaf": leaf.hex(),
                "root": frontier.root().hex(),
                "ref": refs[i] if refs else None,
            }
        )
    conn.execute(insert(audit_entries), rows)
    state = {"size": frontier.size, "frontier": json.dumps([[h, x.hex()] for h, x in frontier.nodes])}
    if row is None:
        conn.execute(insert(audit_state).values(zone=zone, **state))
    else:
        conn.execute(update(audit_state).where(audit_state.c.zone == zone).values(**state))
    return list(range(first, frontier.size))


def audit_action(conn: Connection, action: str, at: datetime, zone: str | None = None, **refs) -> None:
    """An administrative action's entry, inside the caller's transaction: in `zone`, else in the
    zone of `refs["tenant_id"]`, else (prices, rates, plans: settings every zone is subject to)
    in every registered zone. Call it before the transaction's other writes: zone locks first,
    as the usage writer takes them, so no lock-order deadlock."""
    write_lock(conn)
    if zone is None and refs.get("tenant_id") is not None:
        zone = conn.execute(select(tenants.c.zone).where(tenants.c.id == refs["tenant_id"])).scalar()
    targets = [zone] if zone is not None else sorted(conn.execute(select(zones.c.name)).scalars())
    entry = canonical(admin_entry(action, at, **refs))
    for z in targets:
        append(conn, z, [entry], at)


class AuditStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def sizes(self) -> dict[str, tuple[int, str]]:
        """Each zone's size and current root (hex)."""
        q = select(audit_state.c.zone, audit_state.c.size, audit_entries.c.root).join(
            audit_entries,
            (audit_entries.c.zone == audit_state.c.zone) & (audit_entries.c.idx == audit_state.c.size - 1),
        )
        with self.engine.connect() as conn:
            return {r.zone: (int(r.size), r.root) for r in conn.execute(q)}

    def zones(self) -> list[str]:
        q = select(audit_entries.c.zone).distinct().union(select(audit_heads.c.zone).distinct())
        with self.engine.connect() as conn:
            return sorted(conn.execute(q).scalars())

    def entries(self, zone: str) -> list[StoredEntry]:
        e = audit_entries
        q = select(e.c.idx, e.c.entry, e.c.leaf, e.c.root).where(e.c.zone == zone).order_by(e.c.idx)
        with self.engine.connect() as conn:
            return [StoredEntry(int(r.idx), r.entry.encode(), r.leaf, r.root) for r in conn.execute(q)]

    def leaves(self, zone: str, size: int) -> list[bytes]:
        """The zone's first `size` leaf hashes."""
        e = audit_entries
        q = select(e.c.leaf).where(e.c.zone == zone, e.c.idx < size).order_by(e.c.idx)
        with self.engine.connect() as conn:
            return [bytes.fromhex(x) for x in conn.execute(q).scalars()]

    def find_request(self, request_id: str) -> tuple[str, int, bytes] | None:
        """A request's audit entry: its zone, index and canonical bytes."""
        e = audit_entries
        q = select(e.c.zone, e.c.idx, e.c.entry).where(e.c.ref == request_id)
        with self.engine.connect() as conn:
            row = conn.execute(q).first()
        return (row.zone, int(row.idx), row.entry.encode()) if row else None

    def head_covering(self, zone: str, index: int) -> StoredHead | None:
        """The zone's latest signed head, if it covers entry `index`."""
        h = audit_heads
        q = select(h).where(h.c.zone == zone).order_by(h.c.size.desc()).limit(1)
        with self.engine.connect() as conn:
            r = conn.execute(q).first()
        if r is None or r.size <= index:
            return None
        return StoredHead(TreeHead(r.zone, int(r.size), r.root, r.at), r.key_id, r.signature)

    def last_head_size(self, zone: str) -> int:
        q = select(func.coalesce(func.max(audit_heads.c.size), 0)).where(audit_heads.c.zone == zone)
        with self.engine.connect() as conn:
            return int(conn.execute(q).scalar_one())

    def heads(self, zone: str) -> list[StoredHead]:
        h = audit_heads
        q = select(h).where(h.c.zone == zone).order_by(h.c.size)
        with self.engine.connect() as conn:
            return [
                StoredHead(TreeHead(r.zone, int(r.size), r.root, r.at), r.key_id, r.signature)
                for r in conn.execute(q)
            ]

    def save_head(self, head: TreeHead, key_id: str, signature: str) -> bool:
        """False if a head of that size is already stored (another process signed it)."""
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(audit_heads).values(**head.__dict__, key_id=key_id, signature=signature))
        except IntegrityError:
            return False
        return True

    def register_key(self, key_id: str, zone: str, public_key: str, at: datetime) -> None:
        with self.engine.begin() as conn:
            if (
                conn.execute(select(signing_keys.c.key_id).where(signing_keys.c.key_id == key_id)).first()
                is None
            ):
                conn.execute(
                    insert(signing_keys).values(
                        key_id=key_id, zone=zone, public_key=public_key, created_at=at
                    )
                )

    def public_keys(self) -> list[dict]:
        with self.engine.connect() as conn:
            return [
                dict(r._mapping)
                for r in conn.execute(select(signing_keys).order_by(signing_keys.c.created_at))
            ]
