"""Stored subtree hashes of the audit log (levels >= 6), so that a proof reads O(log n) hashes.

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

from tokenport.audit.merkle import Frontier

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

NODE_LEVEL = 6  # as tokenport.audit.merkle.NODE_LEVEL when this was written


def upgrade() -> None:
    op.create_table(
        "audit_nodes",
        sa.Column("zone", sa.String(64), primary_key=True),
        sa.Column("level", sa.Integer, primary_key=True),
        sa.Column("idx", sa.BigInteger, primary_key=True),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    entries = sa.table("audit_entries", sa.column("zone"), sa.column("idx"), sa.column("leaf"))
    nodes = sa.table(
        "audit_nodes", sa.column("zone"), sa.column("level"), sa.column("idx"), sa.column("hash")
    )
    conn = op.get_bind()
    zones = conn.execute(sa.select(entries.c.zone).distinct()).scalars().all()
    for zone in zones:
        frontier, rows = Frontier(), []
        leaves = conn.execute(sa.select(entries.c.leaf).where(entries.c.zone == zone).order_by(entries.c.idx))
        for leaf in leaves.scalars():
            for level, i, h in frontier.append(bytes.fromhex(leaf)):
                if level >= NODE_LEVEL:
                    rows.append({"zone": zone, "level": level, "idx": i, "hash": h.hex()})
        if rows:
            conn.execute(nodes.insert(), rows)


def downgrade() -> None:
    op.drop_table("audit_nodes")
