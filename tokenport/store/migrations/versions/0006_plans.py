"""Plans and their assignment to tenants; plan units on usage records.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

from tokenport.store.schema import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "plans",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("fee_nano", sa.BigInteger, nullable=False),
        sa.Column("unit", sa.String(16), nullable=False),
        sa.Column("five_hour_limit", sa.BigInteger, nullable=False),
        sa.Column("weekly_limit", sa.BigInteger, nullable=False),
        sa.Column("multipliers", sa.Text, nullable=False),
        sa.Column("overage", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "plan_assignments",
        sa.Column("tenant_id", sa.String(32), sa.ForeignKey("tenants.id"), primary_key=True),
        sa.Column("plan", sa.String(64), sa.ForeignKey("plans.name"), nullable=False),
        sa.Column("assigned_at", UTCDateTime(), nullable=False),
    )
    with op.batch_alter_table("usage") as batch:
        batch.add_column(sa.Column("plan_units", sa.BigInteger, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("usage") as batch:
        batch.drop_column("plan_units")
    op.drop_table("plan_assignments")
    op.drop_table("plans")
