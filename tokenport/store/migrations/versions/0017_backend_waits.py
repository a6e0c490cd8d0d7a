"""A registered backend's own bounds on waiting for it (`tokenport backends add --idle-timeout`…).

Revision ID: 0017
Revises: 0016
"""

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("backends") as t:
        t.add_column(sa.Column("waits", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("backends") as t:
        t.drop_column("waits")
