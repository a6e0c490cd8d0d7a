"""What the fleet service needs of storage (`store/fleets.py` implements it)."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from tokenport.billing.ledger import Transaction
from tokenport.fleets.records import Batch, Device, Fleet, Product


class FleetRepository(Protocol):
    def insert_fleet(self, fleet: Fleet, at: datetime) -> None: ...

    def fleet(self, name: str) -> Fleet | None: ...

    def fleet_by_id(self, fleet_id: str) -> Fleet | None: ...

    def list_fleets(self, tenant_id: str | None = None) -> list[Fleet]: ...

    def insert_product(self, product: Product, at: datetime) -> None: ...

    def products(self, fleet_id: str) -> list[Product]: ...

    def product_by_id(self, product_id: str) -> Product | None: ...

    def batch(self, fleet_id: str, name: str) -> Batch | None: ...

    def batch_by_id(self, batch_id: str) -> Batch | None: ...

    def insert_batch(self, batch: Batch, at: datetime) -> None: ...

    def existing_serials(self, serials: list[str]) -> dict[str, str]:
        """serial -> fleet id, for those already registered (anywhere)."""
        ...

    def insert_devices(self, devices: list[Device], at: datetime) -> None: ...

    def device(self, serial: str) -> Device | None: ...

    def list_devices(
        self, fleet_id: str, state: str | None = None, after: str | None = None, limit: int = 100
    ) -> list[Device]: ...

    def set_state(self, serial: str, state: str, reason: str, at: datetime) -> bool:
        """Record a state change (and announce it on the change feed); False if none."""
        ...

    def set_entitlement(self, serial: str, ends_at: datetime, at: datetime) -> None: ...

    def add_nonce(self, nonce: str, serial: str, expires_at: datetime) -> None: ...

    def take_nonce(self, nonce: str, serial: str, at: datetime) -> str:
        """Use a challenge once: "ok", "used" (taken before) or "unknown" (never given or expired)."""
        ...

    def activate(self, device: Device, at: datetime, ends_at: datetime, fee: Transaction | None) -> bool:
        """First activation, with its package fee in the same transaction; False if the device
        was activated meanwhile (by another process): nothing is written."""
        ...

    def used(self, serial: str, day: str, month_first: str) -> tuple[int, int]:
        """Weighted tokens the device used on its local `day` (YYYY-MM-DD) and from its local
        month's first day (`month_first`, YYYY-MM-01) through `day`."""
        ...

    # --- the fleet report ---

    def product_counts(
        self, fleet_id: str, end: datetime, active_since: datetime
    ) -> dict[str, tuple[int, int, int]]:
        """product id -> (imported before `end`, activated before `end`, active (a request) in
        [active_since, end))."""
        ...

    def device_usage(
        self, fleet_id: str, start: datetime, end: datetime
    ) -> list[tuple[str, str, str, int, int, int]]:
        """(serial, product id, local day, requests, tokens, cost nano-USD) per device and day."""
        ...

    def at_cap(self, product_id: str, start: datetime, end: datetime) -> int:
        """Devices of the product refused for their quota (`device_quota_exceeded`) in [start, end)."""
        ...

    def spent_since(self, tenant_id: str, since: datetime) -> int:
        """What the tenant spent since then: its requests' cost and its devices' package fees."""
        ...

    # --- clone detection ---

    def add_flag(self, serial: str, kind: str, detail: str, at: datetime, quarantine: bool) -> None:
        """Record a flag (audited); with `quarantine`, an active device is quarantined in the
        same transaction (and the change announced)."""
        ...

    def flags(self, fleet_id: str, limit: int = 1000) -> list[tuple[str, str, str, datetime]]:
        """(serial, kind, detail, at) of the fleet's flags, the latest first."""
        ...
