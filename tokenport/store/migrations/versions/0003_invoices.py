"""Invoices (immutable documents) and their voids.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

from tokenport.store.schema import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "invoices",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("tenant_id", sa.String(32), sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("period", sa.String(7), nullable=False),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("number", sa.String(64), nullable=False, unique=True),
        sa.Column("total_nano_usd", sa.BigInteger, nullable=False),
        sa.Column("document", sa.Text, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("issued_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("tenant_id", "period", "generation", name="uq_invoices_generation"),
    )
    op.create_table(
        "invoice_voids",
        sa.Column("invoice_id", sa.String(32), sa.ForeignKey("invoices.id"), primary_key=True),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("voided_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("invoice_voids")
    op.drop_table("invoices")
