"""Fleets, products (the service package sold with the hardware), batches and devices."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

# A device's states: imported (never switched on), active, quarantined (held for review; may be
# released), revoked (for good). An active device's entitlement may have run out.
IMPORTED, ACTIVE, QUARANTINED, REVOKED = "imported", "active", "quarantined", "revoked"
STATES = (IMPORTED, ACTIVE, QUARANTINED, REVOKED)


@dataclass(frozen=True)
class Fleet:
    id: str
    tenant_id: str  # the maker, who pays
    name: str
    zone: str  # the maker's zone
    max_addresses_per_hour: int = 3  # more client addresses than this in an hour: a clone?
    auto_quarantine: bool = False  # a flagged device is quarantined at once


@dataclass(frozen=True)
class Product:
    id: str
    fleet_id: str
    sku: str
    entitlement_days: int  # from first activation
    daily_tokens: int  # weighted tokens per device per local day
    monthly_tokens: int  # weighted tokens per device per local month
    rpm: int | None = None  # requests per minute per device
    concurrency: int | None = None  # streams at once per device
    models: tuple[str, ...] = ()  # what a device may call (empty: every model of the zone)
    max_output: int | None = None  # output tokens per request, at most
    reset_tz: str = "UTC"  # IANA zone in which the daily and monthly quotas reset
    package_fee_nano: int = 0  # charged to the maker at a device's first activation
    multipliers: tuple[tuple[str, int], ...] = ()  # (model, per-mille), as plans weigh models

    def weight(self, model: str) -> int:
        return dict(self.multipliers).get(model, 1000)

    def units(self, model: str, tokens: int) -> int:
        """Weighted tokens counted against the device's quotas."""
        return math.ceil(tokens * self.weight(model) / 1000)


@dataclass(frozen=True)
class Batch:
    id: str
    fleet_id: str
    product_id: str
    name: str
    sealed_key: bytes  # the batch key, sealed under the zone's key (identity.seal_batch_key)


@dataclass(frozen=True)
class Device:
    """What admission needs of a device; small, since a million may be known."""

    serial: str
    fleet_id: str
    product_id: str
    batch_id: str
    state: str
    activated_at: datetime | None = None
    entitlement_ends_at: datetime | None = None

    def entitled(self, at: datetime) -> bool:
        return self.entitlement_ends_at is not None and at < self.entitlement_ends_at
