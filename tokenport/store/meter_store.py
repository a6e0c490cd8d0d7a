"""Repository for the energy meter: allocated windows and their shares written (each window an
audit entry in its zone, in the same transaction), and, in shared mode, the per-node lease, the
raw readings and the requests' spans that every process's meter reads."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from tokenport.audit.entries import canonical, energy_entry
from tokenport.energy.allocation import Span
from tokenport.energy.meter import MAX_WAIT_S, Allocated, RequestMeta
from tokenport.store.audit import append as audit_append
from tokenport.store.db import write_lock
from tokenport.store.schema import energy_leases, energy_readings, energy_shares, energy_windows, usage


class MeterStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def write(self, allocated: list[Allocated], readings_done: list[str] = ()) -> None:
        """Windows, their shares and audit entries, atomically (and, in shared mode, the readings
        they came from deleted); a window written before (a retry after a commit that did
        happen) is skipped."""
        if not allocated:
            return
        with self.engine.begin() as conn:
            write_lock(conn)
            if readings_done:
                conn.execute(delete(energy_readings).where(energy_readings.c.id.in_(list(readings_done))))
            ids = [a.window.id for a in allocated]
            known = set(
                conn.execute(select(energy_windows.c.id).where(energy_windows.c.id.in_(ids))).scalars()
            )
            fresh = [a for a in allocated if a.window.id not in known]
            windows, shares = [], []
            for a in fresh:
                w = a.window
                row = {
                    "id": w.id,
                    "node": w.node,
                    "zone": w.zone,
                    "started_at": w.started_at,
                    "ended_at": w.ended_at,
                    "energy_mj": w.energy_mj,
                    "idle_mj": a.allocation.idle_mj,
                    "unattributed_mj": a.allocation.unattributed_mj,
                    "static_mj": a.allocation.static_mj,
                    "prefill_milli": a.allocation.prefill_milli,
                    "decode_milli": a.allocation.decode_milli,
                    "engine_units": w.engine_units,
                    "method": w.method,
                    "requests": len(a.allocation.shares),
                }
                own = [
                    {
                        "window_id": w.id,
                        "request_id": s.request_id,
                        "tenant_id": a.meta[s.request_id].tenant_id,
                        "static_mj": s.static_mj,
                        "dynamic_mj": s.dynamic_mj,
                    }
                    for s in a.allocation.shares
                ]
                digest_rows = [{k: r[k] for k in ("request_id", "static_mj", "dynamic_mj")} for r in own]
                audit_append(conn, w.zone, [canonical(energy_entry(row, digest_rows))], w.ended_at)
                windows.append(row)
                shares += own
            if windows:
                conn.execute(insert(energy_windows), windows)
            if shares:
                conn.execute(insert(energy_shares), shares)

    def take_lease(self, node: str, holder: str, now: datetime, ttl_s: float) -> bool:
        """Hold (or renew) the right to meter `node`; False while another live process holds it."""
        le = energy_leases
        until = now + timedelta(seconds=ttl_s)
        try:
            with self.engine.begin() as conn:
                write_lock(conn)
                row = conn.execute(select(le).where(le.c.node == node)).first()
                if row is None:
                    conn.execute(insert(le).values(node=node, holder=holder, expires_at=until))
                    return True
                if row.holder != holder and row.expires_at > now:
                    return False
                conn.execute(update(le).where(le.c.node == node).values(holder=holder, expires_at=until))
                return True
        except IntegrityError:  # another process inserted it first
            return False

    def add_reading(self, row: dict) -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(energy_readings).values(**row))

    def due_readings(self, node: str, ended_before: datetime) -> list[dict]:
        r = energy_readings
        q = select(r).where(r.c.node == node, r.c.ended_at <= ended_before).order_by(r.c.started_at)
        with self.engine.connect() as conn:
            return [dict(x._mapping) for x in conn.execute(q)]

    def spans(self, backends: list[str], lo: datetime, hi: datetime) -> list[tuple[Span, RequestMeta]]:
        """Every process's requests to these backends that overlap [lo, hi) and made the engine
        work, from their usage records (times as epoch seconds)."""
        u = usage
        q = select(
            u.c.request_id,
            u.c.tenant_id,
            u.c.started_at,
            u.c.finished_at,
            u.c.ttft_ms,
            u.c.prompt_tokens,
            u.c.cached_tokens,
            u.c.completion_tokens,
        ).where(
            u.c.backend.in_(backends),
            u.c.started_at < hi,
            u.c.started_at > lo - timedelta(seconds=MAX_WAIT_S),  # the index's range
            u.c.finished_at > lo,
            u.c.prompt_tokens + u.c.completion_tokens > 0,
        )
        out = []
        with self.engine.connect() as conn:
            for r in conn.execute(q):
                start = r.started_at.timestamp()
                first = start + r.ttft_ms / 1000 if r.ttft_ms is not None else None
                prefill = r.prompt_tokens - r.cached_tokens
                span = Span(
                    r.request_id, start, first, r.finished_at.timestamp(), prefill, r.completion_tokens
                )
                out.append((span, RequestMeta(r.tenant_id)))
        return out
