"""Repository for the audit log: append entries to a zone's tree (under the zone's lock, O(log n)
per entry from the stored right edge), read them back, store signed heads and public keys."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

from sqlalchemy import Connection, Engine, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from tokenport.audit.entries import admin_entry, canonical
from tokenport.audit.heads import TreeHead
from tokenport.audit.merkle import NODE_LEVEL, Frontier, leaf_hash, root
from tokenport.audit.verify import StoredEntry, StoredHead
from tokenport.store.db import advisory_lock, write_lock
from tokenport.store.schema import (
    audit_entries,
    audit_heads,
    audit_nodes,
    audit_state,
    signing_keys,
    tenants,
    zones,
)

T = TypeVar("T")


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
    rows, nodes = [], []
    for i, entry in enumerate(entries):
        leaf = leaf_hash(entry)
        for level, idx, h in frontier.append(leaf):
            if level >= NODE_LEVEL:
                nodes.append({"zone": zone, "level": level, "idx": idx, "hash": h.hex()})
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
    if nodes:
        conn.execute(insert(audit_nodes), nodes)
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


# Fixed statements (compiled once): the subtrees a proof names, the leaves of one block.
_NODES = select(audit_nodes.c.level, audit_nodes.c.idx, audit_nodes.c.hash).where(
    audit_nodes.c.zone == bindparam("z"),
    audit_nodes.c.level.in_(bindparam("lv", expanding=True)),
    audit_nodes.c.idx.in_(bindparam("ix", expanding=True)),
)
_LEAVES = select(audit_entries.c.idx, audit_entries.c.leaf).where(
    audit_entries.c.zone == bindparam("z"),
    audit_entries.c.idx >= bindparam("lo"),
    audit_entries.c.idx < bindparam("hi"),
)


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

    def proof_source(self, zone: str, size: int, build: Callable[[Callable[[int, int], bytes]], T]):
        """Run `build(subtree)` (a proof builder from audit/merkle.py) against the zone's stored
        subtrees: a dry run names the subtrees it needs; one query fetches the stored ones, one
        per 64-leaf block (one or two) the leaves of the small ones."""
        wanted: set[tuple[int, int]] = set()

        def record(level: int, index: int) -> bytes:
            if (index + 1) << level > size:
                raise IndexError(f"the zone's log has no complete subtree ({level}, {index}) below {size}")
            wanted.add((level, index))
            return bytes(32)

        build(record)
        stored = [(lv, i) for lv, i in wanted if lv >= NODE_LEVEL]
        spans = sorted((i << lv, (i + 1) << lv) for lv, i in wanted if lv < NODE_LEVEL)
        hashes: dict[tuple[int, int], bytes] = {}
        leaves: dict[int, bytes] = {}
        blocks = sorted({a >> NODE_LEVEL for a, _ in spans})  # each small span lies in one block
        with self.engine.connect() as conn:
            if stored:
                params = {
                    "z": zone,
                    "lv": sorted({lv for lv, _ in stored}),
                    "ix": sorted({i for _, i in stored}),
                }
                for r in conn.execute(_NODES, params):
                    hashes[(int(r.level), int(r.idx))] = bytes.fromhex(r.hash)
            for b in blocks:
                params = {"z": zone, "lo": b << NODE_LEVEL, "hi": (b + 1) << NODE_LEVEL}
                leaves.update((int(r.idx), bytes.fromhex(r.leaf)) for r in conn.execute(_LEAVES, params))

        def subtree(level: int, index: int) -> bytes:
            if level >= NODE_LEVEL:
                return hashes[(level, index)]
            return root([leaves[i] for i in range(index << level, (index + 1) << level)])

        return build(subtree)

    def nodes(self, zone: str) -> dict[tuple[int, int], str]:
        n = audit_nodes
        q = select(n.c.level, n.c.idx, n.c.hash).where(n.c.zone == zone)
        with self.engine.connect() as conn:
            return {(int(r.level), int(r.idx)): r.hash for r in conn.execute(q)}

    def size(self, zone: str) -> int:
        q = select(audit_state.c.size).where(audit_state.c.zone == zone)
        with self.engine.connect() as conn:
            return int(conn.execute(q).scalar() or 0)

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
