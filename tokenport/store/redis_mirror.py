"""The database-to-Redis mirror: what the database says of a tenant's counters (its lots'
balances, each key's spend per budget period, the plan's units per minute, each key's tokens per
second; its devices' units per local day and month), read under the tenant's lock, and written
into its Redis keys as absolute values."""

from __future__ import annotations

from datetime import datetime

from redis.client import Pipeline
from sqlalchemy import Connection, select, tuple_

from tokenport.billing.budgets import period_start
from tokenport.billing.ledger import Lot
from tokenport.billing.plans import SEVEN_DAYS, minute_of
from tokenport.store.billing import LOT_COLUMNS
from tokenport.store.redis_keys import (
    DEVICE_TTL_S,
    PLAN_TTL_S,
    TOKENS_TTL_S,
    Keys,
    device_fields,
    lot_value,
    spend_field,
    ts,
)
from tokenport.store.schema import api_keys, credit_lots, device_days, key_spend, plan_minutes, token_seconds


def write_mirror(
    pipe: Pipeline,
    keys: Keys,
    lots: list[tuple[Lot, int]],
    spend: dict[tuple, int],
    plan: dict[tuple, int],
    tokens: dict[tuple, int],
) -> None:
    if lots:
        pipe.hset(keys.lots, mapping={lot.id: lot_value(lot, n) for lot, n in lots})
    if spend:
        pipe.hset(keys.spend, mapping={spend_field(*k): v for k, v in spend.items()})
    if plan:
        pipe.hset(keys.plan, mapping={str(m): u for m, u in plan.items()})
        pipe.expire(keys.plan, PLAN_TTL_S)
    if tokens:
        pipe.hset(keys.tokens, mapping={f"{k}|{s}": n for (k, s), n in tokens.items()})
        pipe.expire(keys.tokens, TOKENS_TTL_S)


def read_tenant(conn: Connection, tenant_id: str, at: datetime):
    """Everything the mirror holds for one tenant, from the database."""
    key_ids = select(api_keys.c.id).where(api_keys.c.tenant_id == tenant_id)
    starts = [period_start(p, at) for p in ("day", "month")]
    ks = key_spend
    spend = {
        (r.key_id, r.period, r.period_start): int(r.spent)
        for r in conn.execute(
            select(ks.c.key_id, ks.c.period, ks.c.period_start, ks.c.spent).where(
                ks.c.key_id.in_(key_ids), ks.c.period_start.in_(starts)
            )
        )
    }
    pm = plan_minutes
    plan = {
        int(m): int(u)
        for m, u in conn.execute(
            select(pm.c.minute, pm.c.units).where(
                pm.c.tenant_id == tenant_id, pm.c.minute > minute_of(at) - SEVEN_DAYS
            )
        )
    }
    t = token_seconds
    tokens = {
        (k, int(s)): int(n)
        for k, s, n in conn.execute(
            select(t.c.key_id, t.c.second, t.c.tokens).where(
                t.c.key_id.in_(key_ids), t.c.second > ts(at) - 60
            )
        )
    }
    return lots_of(conn, [tenant_id]).get(tenant_id, []), spend, plan, tokens


def lots_of(conn: Connection, tenant_ids: list[str]) -> dict[str, list[tuple[Lot, int]]]:
    out: dict[str, list[tuple[Lot, int]]] = {}
    if not tenant_ids:
        return out
    q = select(*LOT_COLUMNS, credit_lots.c.remaining).where(credit_lots.c.tenant_id.in_(tenant_ids))
    for r in conn.execute(q):
        m = dict(r._mapping)
        remaining = int(m.pop("remaining"))
        out.setdefault(m["tenant_id"], []).append((Lot(**m), remaining))
    return out


def spend_of(conn: Connection, wanted: set[tuple[str, str, datetime]]) -> dict[tuple, int]:
    if not wanted:
        return {}
    ks = key_spend
    match = tuple_(ks.c.key_id, ks.c.period, ks.c.period_start).in_(sorted(wanted))
    q = select(ks.c.key_id, ks.c.period, ks.c.period_start, ks.c.spent).where(match)
    return {(r.key_id, r.period, r.period_start): int(r.spent) for r in conn.execute(q)}


def plan_of(conn: Connection, wanted: set[tuple[str, int]]) -> dict[tuple[str, int], int]:
    if not wanted:
        return {}
    pm = plan_minutes
    q = select(pm.c.tenant_id, pm.c.minute, pm.c.units).where(
        tuple_(pm.c.tenant_id, pm.c.minute).in_(sorted(wanted))
    )
    return {(t, int(m)): int(u) for t, m, u in conn.execute(q)}


def tokens_of(conn: Connection, wanted: set[tuple[str, int]]) -> dict[tuple[str, int], int]:
    if not wanted:
        return {}
    t = token_seconds
    q = select(t.c.key_id, t.c.second, t.c.tokens).where(tuple_(t.c.key_id, t.c.second).in_(sorted(wanted)))
    return {(k, int(s)): int(n) for k, s, n in conn.execute(q)}


def device_usage(conn: Connection, wanted: set[tuple[str, str]]) -> dict[tuple[str, str], tuple[int, int]]:
    """(serial, local day) -> (units settled that day, units settled in its month), from
    `device_days` (the usage writer's counter)."""
    if not wanted:
        return {}
    d = device_days.c
    months = {day[:7] for _, day in wanted}
    q = select(d.serial, d.day, d.units).where(
        d.serial.in_(sorted({serial for serial, _ in wanted})),
        d.day.between(min(months) + "-01", max(months) + "-31"),
    )
    days: dict[tuple[str, str], int] = {}
    month: dict[tuple[str, str], int] = {}
    for serial, day, units in conn.execute(q):
        days[(serial, day)] = int(units)
        month[(serial, day[:7])] = month.get((serial, day[:7]), 0) + int(units)
    return {(s, day): (days.get((s, day), 0), month.get((s, day[:7]), 0)) for s, day in wanted}


def write_device(
    pipe: Pipeline, keys: Keys, serial: str, usage: dict[str, tuple[int, int]], loaded: bool
) -> None:
    """A device's units per local day (`usage`: day -> (day's units, month's units)); `loaded`:
    those days are now complete in Redis (a load), else only their counters are brought up to
    date (a settlement)."""
    mapping: dict[str, int | str] = {}
    for day, (day_units, month_units) in usage.items():
        flag, units_field, month_field = device_fields(day)
        mapping[units_field], mapping[month_field] = day_units, month_units
        if loaded:
            mapping[flag] = "1"
    key = keys.device(serial)
    pipe.hset(key, mapping=mapping)
    pipe.expire(key, DEVICE_TTL_S)
