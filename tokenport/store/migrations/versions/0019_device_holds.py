"""Device quotas in shared mode: a device's quota hold per request in flight, and its
requests-per-minute bucket, both shared by the gateway processes.

Revision ID: 0019
Revises: 0018
"""

import sqlalchemy as sa
from alembic import op

from tokenport.store.schema import UTCDateTime

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "device_holds",
        sa.Column("request_id", sa.String(40), primary_key=True),
        sa.Column("tenant_id", sa.String(32), nullable=False),
        sa.Column("serial", sa.String(64), nullable=False),
        sa.Column("units", sa.BigInteger, nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_device_holds_serial", "device_holds", ["serial"])
    op.create_table(
        "device_buckets",
        sa.Column("serial", sa.String(64), primary_key=True),
        sa.Column("micro", sa.BigInteger, nullable=False),
        sa.Column("at_us", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("device_buckets")
    op.drop_index("ix_device_holds_serial", table_name="device_holds")
    op.drop_table("device_holds")
