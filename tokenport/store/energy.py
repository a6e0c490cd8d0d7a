"""Repository for energy: metered windows and shares (each window an audit entry in its zone, in
the same transaction), the periods' PUE, electricity bought, green certificates."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import Engine, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from tokenport.audit.entries import canonical, energy_entry
from tokenport.billing.ledger import REVENUE_PLANS, REVENUE_USAGE
from tokenport.energy.allocation import Span
from tokenport.energy.calibration import Sample
from tokenport.energy.green import Grant
from tokenport.energy.meter import MAX_WAIT_S, Allocated, RequestMeta
from tokenport.store.audit import append as audit_append
from tokenport.store.audit import audit_action
from tokenport.store.db import write_lock
from tokenport.store.schema import (
    certificate_allocations,
    certificate_runs,
    certificates,
    electricity,
    energy_leases,
    energy_periods,
    energy_readings,
    energy_shares,
    energy_windows,
    ledger_entries,
    ledger_transactions,
    usage,
)
from tokenport.store.usage import group_key, month


class DuplicateCertificate(Exception):
    pass


class EnergyStore:
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

    def request_energy(self, request_ids: list[str]) -> dict[str, dict]:
        """Per request: IT energy (mJ), the windows it was metered in and their method."""
        s, w = energy_shares, energy_windows
        energy = func.sum(s.c.static_mj + s.c.dynamic_mj)
        cols = (s.c.request_id, energy, func.min(w.c.method), func.max(w.c.method), func.count())
        out = {}
        with self.engine.connect() as conn:
            for i in range(0, len(request_ids), 500):
                q = (
                    select(*cols)
                    .join(w, w.c.id == s.c.window_id)
                    .where(s.c.request_id.in_(request_ids[i : i + 500]))
                    .group_by(s.c.request_id)
                )
                for rid, mj, lo, hi, n in conn.execute(q):
                    out[rid] = {
                        "energy_mj": int(mj),
                        "method": lo if lo == hi else "mixed",
                        "windows": int(n),
                    }
        return out

    def window_totals(self, since: datetime | None = None) -> dict:
        w = energy_windows
        q = select(
            func.count(), func.coalesce(func.sum(w.c.energy_mj), 0), func.coalesce(func.sum(w.c.idle_mj), 0)
        )
        if since is not None:
            q = q.where(w.c.started_at >= since)
        with self.engine.connect() as conn:
            n, energy, idle = conn.execute(q).one()
        return {"windows": int(n), "energy_mj": int(energy), "idle_mj": int(idle)}

    # --- supply: PUE, electricity bought, certificates (each change audited in every zone) ---

    def set_pue(self, period: str, pue_milli: int, at: datetime) -> None:
        with self.engine.begin() as conn:
            audit_action(conn, "energy.pue", at, period=period, pue_milli=pue_milli)
            conn.execute(delete(energy_periods).where(energy_periods.c.period == period))
            conn.execute(insert(energy_periods).values(period=period, pue_milli=pue_milli, set_at=at))

    def pue(self, period: str) -> int | None:
        q = select(energy_periods.c.pue_milli).where(energy_periods.c.period == period)
        with self.engine.connect() as conn:
            return conn.execute(q).scalar()

    def set_electricity(self, period: str, source: str, cny_micro: int, kwh_milli: int | None, at) -> None:
        e = electricity
        with self.engine.begin() as conn:
            audit_action(
                conn,
                "energy.tariff",
                at,
                period=period,
                source=source,
                cny_per_kwh_micro=cny_micro,
                kwh_milli=kwh_milli,
            )
            conn.execute(delete(e).where(e.c.period == period, e.c.source == source))
            conn.execute(
                insert(e).values(
                    period=period, source=source, kwh_milli=kwh_milli, cny_per_kwh_micro=cny_micro, set_at=at
                )
            )

    def electricity(self, period: str) -> list[dict]:
        e = electricity
        with self.engine.connect() as conn:
            rows = conn.execute(select(e).where(e.c.period == period).order_by(e.c.source))
            return [dict(r._mapping) for r in rows]

    def add_certificate(self, cert_id: str, source: str, wh: int, period: str, at: datetime) -> None:
        try:
            with self.engine.begin() as conn:
                audit_action(
                    conn, "certificate.add", at, certificate_id=cert_id, source=source, wh=wh, period=period
                )
                conn.execute(
                    insert(certificates).values(id=cert_id, source=source, wh=wh, period=period, added_at=at)
                )
        except IntegrityError as exc:
            raise DuplicateCertificate(f"certificate {cert_id!r} is already recorded") from exc

    def certificates(self, period: str | None = None) -> list[dict]:
        c, a = certificates, certificate_allocations
        allocated = (
            select(a.c.certificate_id, func.sum(a.c.wh).label("allocated_wh"))
            .group_by(a.c.certificate_id)
            .subquery()
        )
        q = (
            select(c, func.coalesce(allocated.c.allocated_wh, 0).label("allocated_wh"))
            .outerjoin(allocated, allocated.c.certificate_id == c.c.id)
            .order_by(c.c.period, c.c.id)
        )
        if period is not None:
            q = q.where(c.c.period == period)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    # --- a period's figures ---

    def metered(self, start: datetime, end: datetime) -> dict:
        """The windows that started in [start, end): energy, idle, and the part estimated."""
        w = energy_windows
        estimated = func.sum(w.c.energy_mj).filter(w.c.method == "estimated")
        q = select(
            func.coalesce(func.sum(w.c.energy_mj), 0),
            func.coalesce(func.sum(w.c.idle_mj), 0),
            func.coalesce(estimated, 0),
        ).where(w.c.started_at >= start, w.c.started_at < end)
        with self.engine.connect() as conn:
            energy, idle, est = conn.execute(q).one()
        return {"energy_mj": int(energy), "idle_mj": int(idle), "estimated_mj": int(est)}

    def tenant_energy(self, start: datetime, end: datetime) -> dict[str, int]:
        s, w = energy_shares, energy_windows
        q = (
            select(s.c.tenant_id, func.sum(s.c.static_mj + s.c.dynamic_mj))
            .join(w, w.c.id == s.c.window_id)
            .where(w.c.started_at >= start, w.c.started_at < end)
            .group_by(s.c.tenant_id)
        )
        with self.engine.connect() as conn:
            return {t: int(v) for t, v in conn.execute(q)}

    def model_energy(self, start: datetime, end: datetime) -> dict[str, int]:
        s, w = energy_shares, energy_windows
        q = (
            select(usage.c.model, func.sum(s.c.static_mj + s.c.dynamic_mj))
            .join(w, w.c.id == s.c.window_id)
            .join(usage, usage.c.request_id == s.c.request_id)
            .where(w.c.started_at >= start, w.c.started_at < end)
            .group_by(usage.c.model)
        )
        with self.engine.connect() as conn:
            return {m: int(v) for m, v in conn.execute(q)}

    def tokens(self, start: datetime, end: datetime, by: Literal["tenant", "model"]) -> dict[str, int]:
        """Tokens served (prompt + completion) in [start, end), by tenant id or by model."""
        by = usage.c.tenant_id if by == "tenant" else usage.c.model
        q = (
            select(by, func.sum(usage.c.prompt_tokens + usage.c.completion_tokens))
            .where(usage.c.started_at >= start, usage.c.started_at < end)
            .group_by(by)
        )
        with self.engine.connect() as conn:
            return {k: int(v or 0) for k, v in conn.execute(q)}

    def revenue(self, start: datetime, end: datetime) -> list[tuple[str, str | None, int]]:
        """Revenue recognised in the ledger in [start, end): (tenant id, model or None for plan
        fees, nano-USD), from the usage and plan revenue accounts."""
        t, e = ledger_transactions, ledger_entries
        q = (
            select(t.c.tenant_id, usage.c.model, func.sum(e.c.amount))
            .join(e, e.c.tx_id == t.c.id)
            .outerjoin(usage, usage.c.request_id == t.c.request_id)
            .where(
                e.c.account.in_([REVENUE_USAGE, REVENUE_PLANS]), t.c.created_at >= start, t.c.created_at < end
            )
            .group_by(t.c.tenant_id, usage.c.model)
        )
        with self.engine.connect() as conn:
            return [(tenant, model, int(v)) for tenant, model, v in conn.execute(q)]

    # --- certificate allocation: computed once per closed period ---

    def allocation(self, period: str) -> tuple[dict, list[Grant]] | None:
        with self.engine.connect() as conn:
            run = conn.execute(select(certificate_runs).where(certificate_runs.c.period == period)).first()
            if run is None:
                return None
            a = certificate_allocations
            rows = conn.execute(
                select(a).where(a.c.period == period).order_by(a.c.certificate_id, a.c.tenant_id)
            )
            return dict(run._mapping), [Grant(r.certificate_id, r.tenant_id, int(r.wh)) for r in rows]

    def freeze_allocation(
        self, period: str, consumed_wh: int, retired_wh: int, grants: list[Grant], at
    ) -> bool:
        """Store a period's allocation; False if another run stored one first (then use that)."""
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(certificate_runs).values(
                        period=period, consumed_wh=consumed_wh, retired_wh=retired_wh, allocated_at=at
                    )
                )
                if grants:
                    conn.execute(
                        insert(certificate_allocations),
                        [
                            {
                                "period": period,
                                "certificate_id": g.certificate_id,
                                "tenant_id": g.tenant_id,
                                "wh": g.wh,
                            }
                            for g in grants
                        ],
                    )
                audit_action(
                    conn, "certificate.allocate", at, period=period, grants=len(grants), retired_wh=retired_wh
                )
        except IntegrityError:
            return False
        return True

    def grouped_energy(
        self, tenant_id: str, group_by: str, start, end
    ) -> list[tuple[str | None, str, str, int]]:
        """A tenant's IT energy (mJ) by (group, zone, month), for the usage API's groups."""
        dialect = self.engine.dialect.name
        key, mon = group_key(dialect, group_by), month(dialect)
        s = energy_shares
        q = (
            select(key, usage.c.zone, mon, func.sum(s.c.static_mj + s.c.dynamic_mj))
            .join(usage, usage.c.request_id == s.c.request_id)
            .where(usage.c.tenant_id == tenant_id)
        )
        if start is not None:
            q = q.where(usage.c.started_at >= start)
        if end is not None:
            q = q.where(usage.c.started_at < end)
        with self.engine.connect() as conn:
            rows = conn.execute(q.group_by(key, usage.c.zone, mon)).all()
        return [(str(k) if k is not None else None, zone, m, int(v)) for k, zone, m, v in rows]

    def metered_since(self, zone: str, at: datetime) -> bool:
        """Whether a window of the zone started at or after `at` (then every window before it
        has been allocated and written)."""
        q = (
            select(energy_windows.c.id)
            .where(energy_windows.c.zone == zone, energy_windows.c.started_at >= at)
            .limit(1)
        )
        with self.engine.connect() as conn:
            return conn.execute(q).first() is not None

    def calibration_samples(self, node: str | None = None, since: datetime | None = None) -> list:
        """Measured windows in which only this process's requests ran (none unattributed)."""
        w = energy_windows
        q = select(w.c.energy_mj, w.c.static_mj, w.c.prefill_milli, w.c.decode_milli).where(
            w.c.method == "measured", w.c.unattributed_mj == 0, w.c.requests > 0
        )
        if node is not None:
            q = q.where(w.c.node == node)
        if since is not None:
            q = q.where(w.c.started_at >= since)
        with self.engine.connect() as conn:
            return [Sample(int(e - st), int(p), int(d)) for e, st, p, d in conn.execute(q)]

    # --- shared mode: one process meters each node ---

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
