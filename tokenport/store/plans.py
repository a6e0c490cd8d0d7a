"""Repository for plans, their assignments, and the plan usage a gateway restores at start."""

from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import Connection, Engine, delete, insert, select
from sqlalchemy.exc import IntegrityError

from tokenport.billing.plans import Plan, PlanConflict
from tokenport.store.audit import audit_action
from tokenport.store.schema import changes, plan_assignment_log, plan_assignments, plans, usage


class PlanStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create(self, plan: Plan, at: datetime) -> None:
        values = {
            **plan.__dict__,
            "multipliers": json.dumps([list(m) for m in plan.multipliers]),
            "created_at": at,
        }
        try:
            with self.engine.begin() as conn:
                audit_action(conn, "plan.create", at, **plan.__dict__)
                conn.execute(insert(plans).values(**values))
                conn.execute(insert(changes).values(kind="plan", ref=plan.name, at=at))
        except IntegrityError as exc:
            raise PlanConflict(f"plan {plan.name!r} already exists") from exc

    def assign(self, tenant_id: str, plan_name: str | None, at: datetime) -> None:
        with self.engine.begin() as conn:
            audit_action(conn, "plan.assign", at, tenant_id=tenant_id, plan=plan_name)
            conn.execute(delete(plan_assignments).where(plan_assignments.c.tenant_id == tenant_id))
            if plan_name is not None:
                conn.execute(
                    insert(plan_assignments).values(tenant_id=tenant_id, plan=plan_name, assigned_at=at)
                )
            conn.execute(insert(plan_assignment_log).values(tenant_id=tenant_id, plan=plan_name, at=at))
            conn.execute(insert(changes).values(kind="plan", ref=tenant_id, at=at))

    def load(self, conn: Connection | None = None) -> tuple[dict[str, Plan], dict[str, str]]:
        """(plans by name, plan name by tenant id)."""
        own = conn is None
        conn = conn or self.engine.connect()
        try:
            by_name = {
                r.name: Plan(
                    r.name,
                    int(r.fee_nano),
                    r.unit,
                    int(r.five_hour_limit),
                    int(r.weekly_limit),
                    tuple((m, int(p)) for m, p in json.loads(r.multipliers)),
                    r.overage,
                )
                for r in conn.execute(select(plans))
            }
            assigned = {r.tenant_id: r.plan for r in conn.execute(select(plan_assignments))}
            return by_name, assigned
        finally:
            if own:
                conn.close()

    def plans_in_force(self, tenant_id: str, start: datetime, end: datetime) -> list[str]:
        """Every plan the tenant was on at some moment of [start, end), in order."""
        q = (
            select(plan_assignment_log.c.plan, plan_assignment_log.c.at)
            .where(plan_assignment_log.c.tenant_id == tenant_id, plan_assignment_log.c.at < end)
            .order_by(plan_assignment_log.c.at, plan_assignment_log.c.id)
        )
        with self.engine.connect() as conn:
            log = conn.execute(q).all()
        before = [r.plan for r in log if r.at <= start]
        during = [r.plan for r in log if r.at > start]
        names = ([before[-1]] if before else []) + during
        return list(dict.fromkeys(n for n in names if n is not None))

    def usage_since(self, conn: Connection, since: datetime) -> list[tuple[str, datetime, int]]:
        q = select(usage.c.tenant_id, usage.c.started_at, usage.c.plan_units).where(
            usage.c.started_at >= since, usage.c.plan_units > 0
        )
        return [(r.tenant_id, r.started_at, int(r.plan_units)) for r in conn.execute(q)]
