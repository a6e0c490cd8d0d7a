"""Clone detection: a device's flags (seen from too many addresses, too many streams at once).

Revision ID: 0020
Revises: 0019
"""

import sqlalchemy as sa
from alembic import op

from tokenport.store.schema import UTCDateTime

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "device_flags",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
        ),
        sa.Column("serial", sa.String(64), nullable=False),
        sa.Column("fleet_id", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("detail", sa.String(200), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_device_flags_fleet_at", "device_flags", ["fleet_id", "at"])


def downgrade() -> None:
    op.drop_index("ix_device_flags_fleet_at", table_name="device_flags")
    op.drop_table("device_flags")
