"""Repository for the energy reports: what requests and periods consumed (from the metered
windows and shares), the periods' PUE, electricity bought, green certificates and their
allocation. (The meter's side, writing windows and reading spans: `meter_store.py`.)"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from sqlalchemy import Engine, delete, func, insert, select
from sqlalchemy.exc import IntegrityError

from tokenport.billing.ledger import REVENUE_PLANS, REVENUE_USAGE
from tokenport.energy.calibration import Sample
from tokenport.energy.green import Grant
from tokenport.store.audit import audit_action
from tokenport.store.schema import (
    certificate_allocations,
    certificate_runs,
    certificates,
    electricity,
    energy_periods,
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

    def set_electricity(
        self, period: str, source: str, cny_micro: int, kwh_milli: int | None, at: datetime
    ) -> None:
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
        self, period: str, consumed_wh: int, retired_wh: int, grants: list[Grant], at: datetime
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
        self, tenant_id: str, group_by: str, start: datetime | None, end: datetime | None
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
