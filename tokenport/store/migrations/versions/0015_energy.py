"""Energy: metered windows and their per-request shares; in shared mode, which process meters a
node (a lease) and its readings waiting to be allocated; the periods' PUE, electricity bought
and green certificates, and the certificates' allocation to tenants.

Revision ID: 0015
Revises: 0014
"""

import sqlalchemy as sa
from alembic import op

from tokenport.store.schema import UTCDateTime

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "energy_windows",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("node", sa.String(64), nullable=False),
        sa.Column("zone", sa.String(64), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False, index=True),
        sa.Column("ended_at", UTCDateTime(), nullable=False),
        sa.Column("energy_mj", sa.BigInteger, nullable=False),
        sa.Column("idle_mj", sa.BigInteger, nullable=False),
        sa.Column("unattributed_mj", sa.BigInteger, nullable=False),
        sa.Column("static_mj", sa.BigInteger, nullable=False),
        sa.Column("prefill_milli", sa.BigInteger, nullable=False),
        sa.Column("decode_milli", sa.BigInteger, nullable=False),
        sa.Column("engine_units", sa.BigInteger, nullable=True),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("requests", sa.Integer, nullable=False),
    )
    op.create_table(
        "energy_shares",
        sa.Column("window_id", sa.String(128), primary_key=True),
        sa.Column("request_id", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(32), nullable=False, index=True),
        sa.Column("static_mj", sa.BigInteger, nullable=False),
        sa.Column("dynamic_mj", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_energy_shares_request_id", "energy_shares", ["request_id"])
    op.create_index("ix_usage_started", "usage", ["started_at"])  # requests by time, any tenant
    op.create_table(
        "energy_leases",
        sa.Column("node", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(64), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "energy_readings",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("node", sa.String(64), nullable=False, index=True),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("ended_at", UTCDateTime(), nullable=False),
        sa.Column("energy_mj", sa.BigInteger, nullable=True),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("engine_units", sa.BigInteger, nullable=True),
    )
    op.create_table(
        "energy_periods",
        sa.Column("period", sa.String(7), primary_key=True),
        sa.Column("pue_milli", sa.Integer, nullable=False),
        sa.Column("set_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "electricity",
        sa.Column("period", sa.String(7), primary_key=True),
        sa.Column("source", sa.String(64), primary_key=True),
        sa.Column("kwh_milli", sa.BigInteger, nullable=True),
        sa.Column("cny_per_kwh_micro", sa.BigInteger, nullable=False),
        sa.Column("set_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "certificates",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("wh", sa.BigInteger, nullable=False),
        sa.Column("period", sa.String(7), nullable=False, index=True),
        sa.Column("added_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "certificate_runs",
        sa.Column("period", sa.String(7), primary_key=True),
        sa.Column("consumed_wh", sa.BigInteger, nullable=False),
        sa.Column("retired_wh", sa.BigInteger, nullable=False),
        sa.Column("allocated_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "certificate_allocations",
        sa.Column("period", sa.String(7), primary_key=True),
        sa.Column("certificate_id", sa.String(128), primary_key=True),
        sa.Column("tenant_id", sa.String(32), primary_key=True),
        sa.Column("wh", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_index("ix_usage_started", "usage")
    for table in (
        "certificate_allocations",
        "certificate_runs",
        "certificates",
        "electricity",
        "energy_periods",
        "energy_readings",
        "energy_leases",
        "energy_shares",
        "energy_windows",
    ):
        op.drop_table(table)
