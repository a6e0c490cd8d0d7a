"""Zones as objects of their own (the zones already in use are registered).

Revision ID: 0009
Revises: 0008
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from tokenport.store.schema import UTCDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    zones = op.create_table(
        "zones",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    conn = op.get_bind()
    used = conn.execute(sa.text("SELECT zone FROM tenants UNION SELECT zone FROM api_keys")).scalars().all()
    if used:
        now = datetime.now(UTC)
        op.bulk_insert(zones, [{"name": z, "created_at": now} for z in sorted(set(used))])


def downgrade() -> None:
    op.drop_table("zones")
