"""Per-key limits: tokens per minute and a USD budget per day or month.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("tpm_limit", sa.Integer, nullable=True))
        batch.add_column(sa.Column("budget_nano_usd", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("budget_period", sa.String(8), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("budget_period")
        batch.drop_column("budget_nano_usd")
        batch.drop_column("tpm_limit")
