"""Billing: price book, credit lots, double-entry ledger, the cost on each usage record.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from tokenport.store.schema import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_SEQ = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "prices",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("effective_from", UTCDateTime(), nullable=False),
        sa.Column("input", sa.BigInteger, nullable=False),
        sa.Column("cached", sa.BigInteger, nullable=False),
        sa.Column("output", sa.BigInteger, nullable=False),
        sa.Column("reasoning", sa.BigInteger, nullable=True),
        sa.Column("free", sa.Boolean, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("model", "effective_from", name="uq_prices_model_from"),
    )
    op.create_table(
        "credit_lots",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("tenant_id", sa.String(32), sa.ForeignKey("tenants.id"), nullable=False, index=True),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("promo", sa.Boolean, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
    )
    op.create_table(
        "ledger_transactions",
        sa.Column("seq", _SEQ, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(40), nullable=False, unique=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("tenant_id", sa.String(32), nullable=False, index=True),
        sa.Column("request_id", sa.String(40), nullable=True, unique=True),
        sa.Column("reverses", sa.String(40), nullable=True, unique=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "ledger_entries",
        sa.Column("id", _SEQ, primary_key=True, autoincrement=True),
        sa.Column(
            "tx_id", sa.String(40), sa.ForeignKey("ledger_transactions.id"), nullable=False, index=True
        ),
        sa.Column("account", sa.String(64), nullable=False, index=True),
        sa.Column("amount", sa.BigInteger, nullable=False),
    )

    with op.batch_alter_table("usage") as batch:
        batch.add_column(sa.Column("cost_nano_usd", sa.BigInteger, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("usage") as batch:
        batch.drop_column("cost_nano_usd")
    op.drop_table("ledger_entries")
    op.drop_table("ledger_transactions")
    op.drop_table("credit_lots")
    op.drop_table("prices")
