"""Tables. Content-free by construction: ids, counts, timestamps, never prompt or completion text."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC in and out, on SQLite (which drops the zone) as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData()

# Zones (e.g. `overseas`, `domestic`, `overseas-sea`): every tenant, key and backend is in one.
zones = Table(
    "zones",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("created_at", UTCDateTime(), nullable=False),
)

tenants = Table(
    "tenants",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("zone", String(64), nullable=False),  # immutable after creation
    Column("created_at", UTCDateTime(), nullable=False),
    Column("retention_ttl_s", BigInteger, nullable=True),  # null: zero retention (the default)
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant_id", String(32), ForeignKey("tenants.id"), nullable=False, index=True),
    Column("zone", String(64), nullable=False),
    Column("label", String(256), nullable=True),
    Column("prefix", String(32), nullable=False),  # shown in listings; the secret is never stored
    Column("key_hash", String(64), nullable=False, unique=True),  # SHA-256 hex of the secret
    Column("rpm_limit", Integer, nullable=True),
    Column("tpm_limit", Integer, nullable=True),  # tokens per minute
    Column("budget_nano_usd", BigInteger, nullable=True),  # spend cap per budget period
    Column("budget_period", String(8), nullable=True),  # "day" | "month" (UTC)
    Column("created_at", UTCDateTime(), nullable=False),
    Column("revoked_at", UTCDateTime(), nullable=True),
    Column("fleet_id", String(32), nullable=True),  # a fleet key (tpf_...): names that fleet's devices
)

# One row per request that got past authentication. request_id is the idempotency key.
usage = Table(
    "usage",
    metadata,
    Column("request_id", String(40), primary_key=True),
    Column("tenant_id", String(32), nullable=False),
    Column("key_id", String(32), nullable=False),
    Column("zone", String(64), nullable=False),
    Column("other_zone", String(200), nullable=True),  # a refused cross-zone attempt reached for it
    Column("endpoint", String(32), nullable=False),
    Column("model", String(128), nullable=True),
    Column("backend", String(128), nullable=True),
    Column("stream", Boolean, nullable=False),
    Column("prompt_tokens", Integer, nullable=False),
    Column("cached_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("usage_source", String(16), nullable=False),
    Column("finish_reason", String(32), nullable=True),
    Column("status", Integer, nullable=False),
    Column("error_code", String(64), nullable=True),
    Column("ttft_ms", Integer, nullable=True),
    Column("duration_ms", Integer, nullable=False),
    Column("client_disconnected", Boolean, nullable=False),
    Column("cost_nano_usd", BigInteger, nullable=True),  # what was charged; null: not billed
    Column("plan_units", BigInteger, nullable=True),  # counted against the tenant's plan instead
    Column("request_sha256", String(64), nullable=True),  # hashes, never the bodies
    Column("response_sha256", String(64), nullable=True),
    Column("retention", String(32), nullable=True),  # "none" or "encrypted:<ttl seconds>"
    Column("started_at", UTCDateTime(), nullable=False),
    Column("finished_at", UTCDateTime(), nullable=False),
    # A fleet's device (docs/fleets.md): its serial and product, the weighted tokens counted
    # against its quotas, and the local day (the product's time zone) they count on.
    Column("device_serial", String(64), nullable=True),
    Column("product_id", String(32), nullable=True),
    Column("device_units", BigInteger, nullable=True),
    Column("device_day", String(10), nullable=True),  # YYYY-MM-DD
    Index("ix_usage_tenant_started", "tenant_id", "started_at"),
    Index("ix_usage_started", "started_at"),
    Index("ix_usage_tenant_device", "tenant_id", "device_serial"),
)

# Append-only feed of administrative changes; running servers poll it (key revocation < 1 s).
changes = Table(
    "changes",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("kind", String(32), nullable=False),
    Column("ref", String(64), nullable=False),
    Column("at", UTCDateTime(), nullable=False),
)

# --- billing ------------------------------------------------------------------------------------

# Effective-dated prices; history kept. Prices are pico-USD per token (= micro-USD per M tokens).
prices = Table(
    "prices",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model", String(128), nullable=False),
    Column("effective_from", UTCDateTime(), nullable=False),
    Column("input", BigInteger, nullable=False),
    Column("cached", BigInteger, nullable=False),
    Column("output", BigInteger, nullable=False),
    Column("reasoning", BigInteger, nullable=True),
    Column("free", Boolean, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    UniqueConstraint("model", "effective_from", name="uq_prices_model_from"),
)

credit_lots = Table(
    "credit_lots",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant_id", String(32), ForeignKey("tenants.id"), nullable=False, index=True),
    Column("amount", BigInteger, nullable=False),  # nano-USD granted
    Column("promo", Boolean, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=True),
    # A cache of the lot's balance (the sum of its entries), kept in the same database transaction
    # as every entry; `ledger verify` checks it. Shared admission reads it under the tenant's lock.
    Column("remaining", BigInteger, nullable=False, server_default="0"),
)

# Append-only. seq orders the ledger; request_id makes a usage charge unique; reverses makes a
# reversal unique per original.
ledger_transactions = Table(
    "ledger_transactions",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("id", String(40), nullable=False, unique=True),
    Column("kind", String(16), nullable=False),
    Column("tenant_id", String(32), nullable=False, index=True),
    Column("request_id", String(40), nullable=True, unique=True),
    Column("reverses", String(40), nullable=True, unique=True),
    Column("created_at", UTCDateTime(), nullable=False),
)

ledger_entries = Table(
    "ledger_entries",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("tx_id", String(40), ForeignKey("ledger_transactions.id"), nullable=False, index=True),
    Column("account", String(64), nullable=False, index=True),
    Column("amount", BigInteger, nullable=False),  # nano-USD
)

# Issued documents are immutable; a void is a document of its own (never an edit).
invoices = Table(
    "invoices",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant_id", String(32), ForeignKey("tenants.id"), nullable=False),
    Column("period", String(7), nullable=False),
    Column("generation", Integer, nullable=False),  # 1, then 2 after a void, ...
    Column("number", String(64), nullable=False, unique=True),
    Column("total_nano_usd", BigInteger, nullable=False),
    Column("document", Text, nullable=False),  # canonical JSON
    Column("sha256", String(64), nullable=False),
    Column("issued_at", UTCDateTime(), nullable=False),
    UniqueConstraint("tenant_id", "period", "generation", name="uq_invoices_generation"),
)

invoice_voids = Table(
    "invoice_voids",
    metadata,
    Column("invoice_id", String(32), ForeignKey("invoices.id"), primary_key=True),
    Column("reason", String(500), nullable=False),
    Column("voided_at", UTCDateTime(), nullable=False),
)

# The operator's CNY/USD rate per month, for internal cost reports (electricity is paid in CNY).
fx_rates = Table(
    "fx_rates",
    metadata,
    Column("period", String(7), primary_key=True),
    Column("cny_per_usd_micro", BigInteger, nullable=False),  # 7.123456 CNY per USD = 7_123_456
    Column("set_at", UTCDateTime(), nullable=False),
)

plans = Table(
    "plans",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("fee_nano", BigInteger, nullable=False),
    Column("unit", String(16), nullable=False),
    Column("five_hour_limit", BigInteger, nullable=False),
    Column("weekly_limit", BigInteger, nullable=False),
    Column("multipliers", Text, nullable=False),  # JSON [[model, per-mille], ...]
    Column("overage", String(16), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
)

plan_assignments = Table(
    "plan_assignments",
    metadata,
    Column("tenant_id", String(32), ForeignKey("tenants.id"), primary_key=True),
    Column("plan", String(64), ForeignKey("plans.name"), nullable=False),
    Column("assigned_at", UTCDateTime(), nullable=False),
)

# Every assignment, in order (the current one is in plan_assignments): invoices need the history.
plan_assignment_log = Table(
    "plan_assignment_log",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("tenant_id", String(32), ForeignKey("tenants.id"), nullable=False, index=True),
    Column("plan", String(64), nullable=True),  # null: taken off its plan
    Column("at", UTCDateTime(), nullable=False),
)


# --- shared admission: state several gateway processes agree on (see store/shared.py) -----------

# Money held by requests in flight (credit, and the key's budget when it has one), in shared mode.
holds = Table(
    "holds",
    metadata,
    Column("request_id", String(40), primary_key=True),
    Column("tenant_id", String(32), nullable=False, index=True),
    Column("key_id", String(32), nullable=False, index=True),
    Column("amount", BigInteger, nullable=False),  # nano-USD
    Column("budget_period", String(8), nullable=True),  # the key budget period it counts in
    Column("budget_start", UTCDateTime(), nullable=True),
    Column("expires_at", UTCDateTime(), nullable=False),
)

# What each key spent per UTC day and month: a cache of its usage records' cost, kept in the same
# database transaction as the records (in every mode, so that switching to shared mode is exact).
key_spend = Table(
    "key_spend",
    metadata,
    Column("key_id", String(32), primary_key=True),
    Column("period", String(8), primary_key=True),  # "day" | "month"
    Column("period_start", UTCDateTime(), primary_key=True),
    Column("spent", BigInteger, nullable=False),
)

# Requests-per-minute token buckets: micro-requests left, as of a time in microseconds.
rate_buckets = Table(
    "rate_buckets",
    metadata,
    Column("key_id", String(32), primary_key=True),
    Column("micro", BigInteger, nullable=False),
    Column("at_us", BigInteger, nullable=False),
)

# Tokens settled per key per second (tokens-per-minute limits); rows older than a minute go.
token_seconds = Table(
    "token_seconds",
    metadata,
    Column("key_id", String(32), primary_key=True),
    Column("second", BigInteger, primary_key=True),
    Column("tokens", BigInteger, nullable=False),
)

# Plan usage per tenant per minute (weighted units), for the 5-hour and 7-day windows; kept with
# the usage records in every mode.
plan_minutes = Table(
    "plan_minutes",
    metadata,
    Column("tenant_id", String(32), primary_key=True),
    Column("minute", BigInteger, primary_key=True),
    Column("units", BigInteger, nullable=False),
)


# --- audit log (see tokenport/audit/) -------------------------------------------------------------

# Each zone's tree: its size and right edge (JSON [[height, hex], ...]), to append in O(log n).
audit_state = Table(
    "audit_state",
    metadata,
    Column("zone", String(64), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("frontier", Text, nullable=False),
)

# Append-only, content-free entries (canonical JSON), with their leaf hash and the root after them.
audit_entries = Table(
    "audit_entries",
    metadata,
    Column("zone", String(64), primary_key=True),
    Column("idx", BigInteger, primary_key=True),
    Column("at", UTCDateTime(), nullable=False),
    Column("entry", Text, nullable=False),
    Column("leaf", String(64), nullable=False),
    Column("root", String(64), nullable=False),
    Column("ref", String(64), nullable=True, index=True),  # a request entry's request id
)

# Hashes of the audit log's perfect subtrees from level 6 up (64 leaves and more): a proof reads
# O(log n) of them and at most about 128 leaves, not the whole log.
audit_nodes = Table(
    "audit_nodes",
    metadata,
    Column("zone", String(64), primary_key=True),
    Column("level", Integer, primary_key=True),
    Column("idx", BigInteger, primary_key=True),
    Column("hash", String(64), nullable=False),
)

# Signed tree heads.
audit_heads = Table(
    "audit_heads",
    metadata,
    Column("zone", String(64), primary_key=True),
    Column("size", BigInteger, primary_key=True),
    Column("root", String(64), nullable=False),
    Column("at", String(40), nullable=False),  # as signed (ISO 8601)
    Column("key_id", String(32), nullable=False),
    Column("signature", String(128), nullable=False),
)

# Every zone's signing keys (public halves; the private ones stay in the server's key files).
signing_keys = Table(
    "signing_keys",
    metadata,
    Column("key_id", String(32), primary_key=True),
    Column("zone", String(64), nullable=False),
    Column("public_key", String(64), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
)


# Opt-in retention: request and response bodies, AES-GCM under a per-record key wrapped with the
# zone's key; zone, tenant and request id are bound in as associated data.
retained = Table(
    "retained",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("tenant_id", String(32), nullable=False, index=True),
    Column("zone", String(64), nullable=False),
    Column("kek_id", String(32), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False, index=True),
    Column("wrapped_key", LargeBinary, nullable=False),
    Column("ciphertext", LargeBinary, nullable=False),
)

# Admin tokens scoped to zones (the configured server.admin_token acts on every zone).
admin_tokens = Table(
    "admin_tokens",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("zones", Text, nullable=False),  # comma-separated
    Column("token_hash", String(64), nullable=False, unique=True),  # SHA-256; the token is never stored
    Column("created_at", UTCDateTime(), nullable=False),
    Column("revoked_at", UTCDateTime(), nullable=True),
)

# Energy: a node's metered window (millijoules), and each request's share of it.
energy_windows = Table(
    "energy_windows",
    metadata,
    Column("id", String(128), primary_key=True),  # "<node>@<start, ISO 8601>"
    Column("node", String(64), nullable=False),
    Column("zone", String(64), nullable=False),
    Column("started_at", UTCDateTime(), nullable=False, index=True),
    Column("ended_at", UTCDateTime(), nullable=False),
    Column("energy_mj", BigInteger, nullable=False),
    Column("idle_mj", BigInteger, nullable=False),  # nobody in flight: spread over the period
    Column("unattributed_mj", BigInteger, nullable=False),  # the engine's work for others
    Column("static_mj", BigInteger, nullable=False),  # idle power x length (capped): for calibration
    Column("prefill_milli", BigInteger, nullable=False),  # prompt tokens computed, thousandths
    Column("decode_milli", BigInteger, nullable=False),  # tokens generated, thousandths
    Column("engine_units", BigInteger, nullable=True),  # the engines' own counters, if read
    Column("method", String(16), nullable=False),  # measured | estimated
    Column("requests", Integer, nullable=False),
)

energy_shares = Table(
    "energy_shares",
    metadata,
    Column("window_id", String(128), primary_key=True),
    Column("request_id", String(64), primary_key=True, index=True),
    Column("tenant_id", String(32), nullable=False, index=True),
    Column("static_mj", BigInteger, nullable=False),
    Column("dynamic_mj", BigInteger, nullable=False),
)

# Shared mode: one process meters each node (a lease it renews), and writes its readings here;
# they are allocated once the usage records of every process's requests in them are written.
energy_leases = Table(
    "energy_leases",
    metadata,
    Column("node", String(64), primary_key=True),
    Column("holder", String(64), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
)

energy_readings = Table(
    "energy_readings",
    metadata,
    Column("id", String(128), primary_key=True),  # the window's id
    Column("node", String(64), nullable=False, index=True),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("ended_at", UTCDateTime(), nullable=False),
    Column("energy_mj", BigInteger, nullable=True),  # null: a power model, evaluated at allocation
    Column("method", String(16), nullable=False),
    Column("engine_units", BigInteger, nullable=True),
)

# Per month: the PUE, the electricity bought (per source), the green certificates retired.
energy_periods = Table(
    "energy_periods",
    metadata,
    Column("period", String(7), primary_key=True),  # YYYY-MM
    Column("pue_milli", Integer, nullable=False),
    Column("set_at", UTCDateTime(), nullable=False),
)

electricity = Table(
    "electricity",
    metadata,
    Column("period", String(7), primary_key=True),
    Column("source", String(64), primary_key=True),
    Column("kwh_milli", BigInteger, nullable=True),  # null: the metered facility energy
    Column("cny_per_kwh_micro", BigInteger, nullable=False),
    Column("set_at", UTCDateTime(), nullable=False),
)

certificates = Table(
    "certificates",
    metadata,
    Column("id", String(128), primary_key=True),  # e.g. the GEC's number
    Column("source", String(64), nullable=False),
    Column("wh", BigInteger, nullable=False),
    Column("period", String(7), nullable=False, index=True),  # retired for this site, this month
    Column("added_at", UTCDateTime(), nullable=False),
)

# A period's certificates are allocated to tenants once (the first run wins, under a unique key).
certificate_runs = Table(
    "certificate_runs",
    metadata,
    Column("period", String(7), primary_key=True),
    Column("consumed_wh", BigInteger, nullable=False),
    Column("retired_wh", BigInteger, nullable=False),
    Column("allocated_at", UTCDateTime(), nullable=False),
)

certificate_allocations = Table(
    "certificate_allocations",
    metadata,
    Column("period", String(7), primary_key=True),
    Column("certificate_id", String(128), primary_key=True),
    Column("tenant_id", String(32), primary_key=True),
    Column("wh", BigInteger, nullable=False),
)

# Backends registered at run time (`tokenport backends add`); configured ones live in the file.
backends = Table(
    "backends",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("url", String(512), nullable=False),
    Column("zone", String(64), nullable=False),  # immutable: remove and add again to move it
    Column("models", Text, nullable=False),  # comma-separated
    Column("kind", String(16), nullable=False),
    Column("weight", Integer, nullable=False),
    Column("max_inflight", Integer, nullable=True),
    Column("context", Integer, nullable=False),
    Column("embeddings", Text, nullable=False),  # comma-separated
    Column("api_key_env", String(128), nullable=True),  # the variable holding its key, not the key
    Column("created_at", UTCDateTime(), nullable=False),
    Column("waits", Text, nullable=True),  # JSON: the Waits fields it sets (the rest: [upstream]'s)
)


# --- device fleets (tokenport/fleets/, docs/fleets.md) --------------------------------------------

# A maker's fleet of devices; it belongs to the maker's tenant, and so to its zone.
fleets = Table(
    "fleets",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant_id", String(32), ForeignKey("tenants.id"), nullable=False, index=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("zone", String(64), nullable=False),  # the tenant's, at creation (immutable)
    Column("max_addresses_per_hour", Integer, nullable=False),
    Column("auto_quarantine", Boolean, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
)

# A product (SKU): the service package sold with the hardware.
products = Table(
    "products",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("fleet_id", String(32), ForeignKey("fleets.id"), nullable=False, index=True),
    Column("sku", String(128), nullable=False),
    Column("entitlement_days", Integer, nullable=False),
    Column("daily_tokens", BigInteger, nullable=False),
    Column("monthly_tokens", BigInteger, nullable=False),
    Column("rpm", Integer, nullable=True),
    Column("concurrency", Integer, nullable=True),
    Column("models", Text, nullable=False),  # JSON [model, ...]; empty: every model of the zone
    Column("max_output", Integer, nullable=True),
    Column("reset_tz", String(64), nullable=False),  # IANA zone of the daily and monthly resets
    Column("package_fee_nano", BigInteger, nullable=False),
    Column("multipliers", Text, nullable=False),  # JSON [[model, per-mille], ...]
    Column("created_at", UTCDateTime(), nullable=False),
    UniqueConstraint("fleet_id", "sku", name="uq_products_fleet_sku"),
)

# A production batch: its random key, sealed under the zone's key (fleets/identity.py). Nothing
# secret is stored per device: a device's secret is derived from its batch key and serial.
device_batches = Table(
    "device_batches",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("fleet_id", String(32), ForeignKey("fleets.id"), nullable=False),
    Column("product_id", String(32), ForeignKey("products.id"), nullable=False),
    Column("name", String(128), nullable=False),
    Column("sealed_key", LargeBinary, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    UniqueConstraint("fleet_id", "name", name="uq_device_batches_fleet_name"),
)

# Devices by serial (a serial is registered to one fleet only). No foreign keys: a million rows
# are imported at a time.
devices = Table(
    "devices",
    metadata,
    Column("serial", String(64), primary_key=True),
    Column("fleet_id", String(32), nullable=False),
    Column("product_id", String(32), nullable=False),
    Column("batch_id", String(32), nullable=False),
    Column("state", String(16), nullable=False),  # imported | active | quarantined | revoked
    Column("activated_at", UTCDateTime(), nullable=True),  # the first activation
    Column("entitlement_ends_at", UTCDateTime(), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Index("ix_devices_fleet_serial", "fleet_id", "serial"),
    Index("ix_devices_fleet_state", "fleet_id", "state"),
)

# Activation challenges: single use, short-lived; expired ones are deleted as new ones come.
device_nonces = Table(
    "device_nonces",
    metadata,
    Column("nonce", String(64), primary_key=True),
    Column("serial", String(64), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False, index=True),
    Column("used_at", UTCDateTime(), nullable=True),
)

# Weighted tokens per device per local day (the product's time zone): the device quotas'
# counter, kept with the usage records in the same database transaction.
device_days = Table(
    "device_days",
    metadata,
    Column("serial", String(64), primary_key=True),
    Column("day", String(10), primary_key=True),  # YYYY-MM-DD, local
    Column("units", BigInteger, nullable=False),
)

# Shared mode: a device's quota hold for a request in flight (weighted units on its local day),
# written in the admission's transaction with the money's hold, deleted with its usage record;
# the device's requests in flight are its active holds. Expire like `holds`.
device_holds = Table(
    "device_holds",
    metadata,
    Column("request_id", String(40), primary_key=True),
    Column("tenant_id", String(32), nullable=False),
    Column("serial", String(64), nullable=False, index=True),
    Column("units", BigInteger, nullable=False),
    Column("day", String(10), nullable=False),  # YYYY-MM-DD, local: the day it counts on
    Column("expires_at", UTCDateTime(), nullable=False),
)

# Shared mode: each device's requests-per-minute bucket (micro-requests left, as of a time in
# microseconds); one a minute old is full again, and purged.
device_buckets = Table(
    "device_buckets",
    metadata,
    Column("serial", String(64), primary_key=True),
    Column("micro", BigInteger, nullable=False),
    Column("at_us", BigInteger, nullable=False),
)

# Clone detection: each flag a gateway raised for a device (docs/fleets.md), latest listed first.
device_flags = Table(
    "device_flags",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("serial", String(64), nullable=False),
    Column("fleet_id", String(32), nullable=False),
    Column("kind", String(16), nullable=False),  # "addresses" | "streams"
    Column("detail", String(200), nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    Index("ix_device_flags_fleet_at", "fleet_id", "at"),
)
