"""Device fleets: fleets, products, production batches (their keys sealed), devices, activation
challenges and the per-device daily counter; the device and product on usage records.

Revision ID: 0018
Revises: 0017
"""

import sqlalchemy as sa
from alembic import op

from tokenport.store.schema import UTCDateTime

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fleets",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("tenant_id", sa.String(32), sa.ForeignKey("tenants.id"), nullable=False, index=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("zone", sa.String(64), nullable=False),
        sa.Column("max_addresses_per_hour", sa.Integer, nullable=False),
        sa.Column("auto_quarantine", sa.Boolean, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "products",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("fleet_id", sa.String(32), sa.ForeignKey("fleets.id"), nullable=False, index=True),
        sa.Column("sku", sa.String(128), nullable=False),
        sa.Column("entitlement_days", sa.Integer, nullable=False),
        sa.Column("daily_tokens", sa.BigInteger, nullable=False),
        sa.Column("monthly_tokens", sa.BigInteger, nullable=False),
        sa.Column("rpm", sa.Integer, nullable=True),
        sa.Column("concurrency", sa.Integer, nullable=True),
        sa.Column("models", sa.Text, nullable=False),
        sa.Column("max_output", sa.Integer, nullable=True),
        sa.Column("reset_tz", sa.String(64), nullable=False),
        sa.Column("package_fee_nano", sa.BigInteger, nullable=False),
        sa.Column("multipliers", sa.Text, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("fleet_id", "sku", name="uq_products_fleet_sku"),
    )
    op.create_table(
        "device_batches",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("fleet_id", sa.String(32), sa.ForeignKey("fleets.id"), nullable=False),
        sa.Column("product_id", sa.String(32), sa.ForeignKey("products.id"), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("sealed_key", sa.LargeBinary, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("fleet_id", "name", name="uq_device_batches_fleet_name"),
    )
    op.create_table(
        "devices",
        sa.Column("serial", sa.String(64), primary_key=True),
        sa.Column("fleet_id", sa.String(32), nullable=False),
        sa.Column("product_id", sa.String(32), nullable=False),
        sa.Column("batch_id", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("activated_at", UTCDateTime(), nullable=True),
        sa.Column("entitlement_ends_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_devices_fleet_serial", "devices", ["fleet_id", "serial"])
    op.create_index("ix_devices_fleet_state", "devices", ["fleet_id", "state"])
    op.create_table(
        "device_nonces",
        sa.Column("nonce", sa.String(64), primary_key=True),
        sa.Column("serial", sa.String(64), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False, index=True),
        sa.Column("used_at", UTCDateTime(), nullable=True),
    )
    op.create_table(
        "device_days",
        sa.Column("serial", sa.String(64), primary_key=True),
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("units", sa.BigInteger, nullable=False),
    )
    with op.batch_alter_table("usage") as batch:
        batch.add_column(sa.Column("device_serial", sa.String(64), nullable=True))
        batch.add_column(sa.Column("product_id", sa.String(32), nullable=True))
        batch.add_column(sa.Column("device_units", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("device_day", sa.String(10), nullable=True))
    op.create_index("ix_usage_tenant_device", "usage", ["tenant_id", "device_serial"])
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("fleet_id", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("fleet_id")
    op.drop_index("ix_usage_tenant_device", "usage")
    with op.batch_alter_table("usage") as batch:
        for column in ("device_day", "device_units", "product_id", "device_serial"):
            batch.drop_column(column)
    op.drop_index("ix_devices_fleet_state", "devices")
    op.drop_index("ix_devices_fleet_serial", "devices")
    for table in ("device_days", "device_nonces", "devices", "device_batches", "products", "fleets"):
        op.drop_table(table)
