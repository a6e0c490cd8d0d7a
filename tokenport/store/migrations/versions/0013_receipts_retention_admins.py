"""Receipts find their audit entry by request id; opt-in retention (encrypted, per zone);
zone-scoped admin tokens.

Revision ID: 0013
Revises: 0012
"""

import json

import sqlalchemy as sa
from alembic import op

from tokenport.store.schema import UTCDateTime

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_entries") as batch:
        batch.add_column(sa.Column("ref", sa.String(64), nullable=True))
        batch.create_index("ix_audit_entries_ref", ["ref"])
    entries = sa.table(
        "audit_entries", sa.column("zone"), sa.column("idx"), sa.column("entry"), sa.column("ref")
    )
    conn = op.get_bind()
    rows = conn.execute(sa.select(entries.c.zone, entries.c.idx, entries.c.entry)).all()
    for r in rows:
        ref = json.loads(r.entry).get("request_id")
        if ref:
            conn.execute(
                entries.update().where((entries.c.zone == r.zone) & (entries.c.idx == r.idx)).values(ref=ref)
            )
    with op.batch_alter_table("usage") as batch:
        batch.add_column(sa.Column("retention", sa.String(32), nullable=True))
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("retention_ttl_s", sa.BigInteger, nullable=True))
    op.create_table(
        "retained",
        sa.Column("request_id", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(32), nullable=False, index=True),
        sa.Column("zone", sa.String(64), nullable=False),
        sa.Column("kek_id", sa.String(32), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False, index=True),
        sa.Column("wrapped_key", sa.LargeBinary, nullable=False),
        sa.Column("ciphertext", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "admin_tokens",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("zones", sa.Text, nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("admin_tokens")
    op.drop_table("retained")
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("retention_ttl_s")
    with op.batch_alter_table("usage") as batch:
        batch.drop_column("retention")
    with op.batch_alter_table("audit_entries") as batch:
        batch.drop_index("ix_audit_entries_ref")
        batch.drop_column("ref")
