"""Shared admission across gateway processes: lot balance cache, holds, key spend, rate buckets,
token and plan counters.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

from tokenport.store.schema import UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("credit_lots") as batch:
        batch.add_column(sa.Column("remaining", sa.BigInteger, nullable=False, server_default="0"))
    op.execute(
        "UPDATE credit_lots SET remaining = COALESCE((SELECT SUM(amount) FROM ledger_entries "
        "WHERE ledger_entries.account = 'lot:' || credit_lots.id), 0)"
    )
    op.create_table(
        "holds",
        sa.Column("request_id", sa.String(40), primary_key=True),
        sa.Column("tenant_id", sa.String(32), nullable=False, index=True),
        sa.Column("key_id", sa.String(32), nullable=False, index=True),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("budget_period", sa.String(8), nullable=True),
        sa.Column("budget_start", UTCDateTime(), nullable=True),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "key_spend",
        sa.Column("key_id", sa.String(32), primary_key=True),
        sa.Column("period", sa.String(8), primary_key=True),
        sa.Column("period_start", UTCDateTime(), primary_key=True),
        sa.Column("spent", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "rate_buckets",
        sa.Column("key_id", sa.String(32), primary_key=True),
        sa.Column("micro", sa.BigInteger, nullable=False),
        sa.Column("at_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "token_seconds",
        sa.Column("key_id", sa.String(32), primary_key=True),
        sa.Column("second", sa.BigInteger, primary_key=True),
        sa.Column("tokens", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "plan_minutes",
        sa.Column("tenant_id", sa.String(32), primary_key=True),
        sa.Column("minute", sa.BigInteger, primary_key=True),
        sa.Column("units", sa.BigInteger, nullable=False),
    )

    _backfill()


def _backfill() -> None:
    """The counters kept with the usage records, from the records already written."""
    from tokenport.store.counters import usage_counters

    conn = op.get_bind()
    usage = sa.table(
        "usage",
        sa.column("tenant_id"),
        sa.column("key_id"),
        sa.column("cost_nano_usd"),
        sa.column("plan_units"),
        sa.column("started_at", UTCDateTime()),
    )
    q = sa.select(usage).where(sa.or_(usage.c.cost_nano_usd.is_not(None), usage.c.plan_units.is_not(None)))
    spend, units = usage_counters([dict(r._mapping) for r in conn.execute(q)])
    key_spend = sa.table(
        "key_spend",
        sa.column("key_id"),
        sa.column("period"),
        sa.column("period_start", UTCDateTime()),
        sa.column("spent"),
    )
    plan_minutes = sa.table("plan_minutes", sa.column("tenant_id"), sa.column("minute"), sa.column("units"))
    if spend:
        conn.execute(
            sa.insert(key_spend),
            [{"key_id": k, "period": p, "period_start": s, "spent": n} for (k, p, s), n in spend.items()],
        )
    if units:
        conn.execute(
            sa.insert(plan_minutes),
            [{"tenant_id": t, "minute": m, "units": n} for (t, m), n in units.items()],
        )


def downgrade() -> None:
    for table in ("plan_minutes", "token_seconds", "rate_buckets", "key_spend", "holds"):
        op.drop_table(table)
    with op.batch_alter_table("credit_lots") as batch:
        batch.drop_column("remaining")
