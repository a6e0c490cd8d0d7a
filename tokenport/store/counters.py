"""Counters kept with the usage records, in the same database transaction: what each key spent
per UTC day and month (budgets), each tenant's plan units per minute (plan windows) and each
device's weighted tokens per local day (device quotas). Shared admission reads them; keeping them
in every mode makes a switch to shared mode exact."""

from __future__ import annotations

from datetime import datetime
from functools import cache

from sqlalchemy import Connection, Table
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from tokenport.billing.budgets import period_start
from tokenport.billing.plans import minute_of
from tokenport.store.schema import device_days, key_spend, plan_minutes, token_seconds


def usage_counters(rows: list[dict]) -> tuple[dict[tuple, int], dict[tuple, int]]:
    """(key, period, period start) -> spend, and (tenant, minute) -> plan units, from usage rows."""
    spend: dict[tuple, int] = {}
    units: dict[tuple, int] = {}
    for r in rows:
        if cost := r.get("cost_nano_usd"):
            for period in ("day", "month"):
                k = (r["key_id"], period, period_start(period, r["started_at"]))
                spend[k] = spend.get(k, 0) + cost
        if n := r.get("plan_units"):
            k = (r["tenant_id"], minute_of(r["started_at"]))
            units[k] = units.get(k, 0) + n
    return spend, units


def add(conn: Connection, table: Table, values: dict[tuple, int]) -> None:
    """Add to counters, creating rows as needed; the last primary-key-less column is the count."""
    if not values:
        return
    stmt, keys, column = _upsert(conn.dialect.name, table)
    conn.execute(stmt, [{**dict(zip(keys, k, strict=True)), column: n} for k, n in sorted(values.items())])


@cache
def _upsert(dialect: str, table: Table) -> tuple:
    """The statement, built once: each build makes a cyclic alias (`excluded`) for the collector."""
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    keys = [c.name for c in table.primary_key.columns]
    column = next(c.name for c in table.c if c.name not in keys)
    stmt = insert(table)
    stmt = stmt.on_conflict_do_update(
        index_elements=keys, set_={column: table.c[column] + stmt.excluded[column]}
    )
    return stmt, keys, column


def device_counters(rows: list[dict]) -> dict[tuple, int]:
    """(serial, local day) -> weighted tokens, from the usage rows of fleets' devices."""
    units: dict[tuple, int] = {}
    for r in rows:
        serial, day, n = r.get("device_serial"), r.get("device_day"), r.get("device_units")
        if serial and day and n:
            units[(serial, day)] = units.get((serial, day), 0) + n
    return units


def count_usage(conn: Connection, rows: list[dict]) -> None:
    spend, units = usage_counters(rows)
    add(conn, key_spend, spend)
    add(conn, plan_minutes, units)
    add(conn, device_days, device_counters(rows))


def count_tokens(conn: Connection, items: list[tuple[str, datetime, int]]) -> None:
    """Tokens settled per key per second, for tokens-per-minute limits (shared mode)."""
    values: dict[tuple, int] = {}
    for key_id, at, n in items:
        if n > 0:
            k = (key_id, int(at.timestamp()))
            values[k] = values.get(k, 0) + n
    add(conn, token_seconds, values)
