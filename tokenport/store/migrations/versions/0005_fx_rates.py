"""The CNY/USD rate per period.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

from tokenport.store.schema import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fx_rates",
        sa.Column("period", sa.String(7), primary_key=True),
        sa.Column("cny_per_usd_micro", sa.BigInteger, nullable=False),
        sa.Column("set_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("fx_rates")
