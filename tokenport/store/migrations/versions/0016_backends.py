"""Backends registered at run time (`tokenport backends add`), besides the configured ones.

Revision ID: 0016
Revises: 0015
"""

import sqlalchemy as sa
from alembic import op

from tokenport.store.schema import UTCDateTime

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "backends",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("url", sa.String(512), nullable=False),
        sa.Column("zone", sa.String(64), nullable=False),
        sa.Column("models", sa.Text, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("weight", sa.Integer, nullable=False),
        sa.Column("max_inflight", sa.Integer, nullable=True),
        sa.Column("context", sa.Integer, nullable=False),
        sa.Column("embeddings", sa.Text, nullable=False),
        sa.Column("api_key_env", sa.String(128), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("backends")
