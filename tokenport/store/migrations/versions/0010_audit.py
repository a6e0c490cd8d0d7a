"""The audit log: per-zone Merkle tree state, entries, signed heads, signing keys.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

from tokenport.store.schema import UTCDateTime

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_state",
        sa.Column("zone", sa.String(64), primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("frontier", sa.Text, nullable=False),
    )
    op.create_table(
        "audit_entries",
        sa.Column("zone", sa.String(64), primary_key=True),
        sa.Column("idx", sa.BigInteger, primary_key=True),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("entry", sa.Text, nullable=False),
        sa.Column("leaf", sa.String(64), nullable=False),
        sa.Column("root", sa.String(64), nullable=False),
    )
    op.create_table(
        "audit_heads",
        sa.Column("zone", sa.String(64), primary_key=True),
        sa.Column("size", sa.BigInteger, primary_key=True),
        sa.Column("root", sa.String(64), nullable=False),
        sa.Column("at", sa.String(40), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("signature", sa.String(128), nullable=False),
    )
    op.create_table(
        "signing_keys",
        sa.Column("key_id", sa.String(32), primary_key=True),
        sa.Column("zone", sa.String(64), nullable=False),
        sa.Column("public_key", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    for table in ("signing_keys", "audit_heads", "audit_entries", "audit_state"):
        op.drop_table(table)
