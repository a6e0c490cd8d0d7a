"""Which device a request comes from: a device token (`tpd_…`), or a fleet key (`tpf_…`) with
`X-Tokenport-Device: SERIAL`; and the directory of devices this process has seen.

The directory keeps a bounded number of devices in memory (the ones calling), loaded on first
sight in a worker thread and kept current by the change feed: a revoked device is refused
within one poll interval although its token is still valid. Tokens are checked by their
signature, with no database."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from sqlalchemy import Connection

from tokenport.clock import Clock
from tokenport.fleets.identity import DEVICE_TOKEN_PREFIX, read_token
from tokenport.fleets.records import Device, Fleet, Product
from tokenport.gateway.errors import ApiError, forbidden, unauthorized
from tokenport.tenancy.keys import KeyRecord
from tokenport.tenancy.records import Tenant

DEVICE_HEADER = b"x-tokenport-device"
MAX_DEVICES = 200_000  # kept in memory at once (the oldest seen are dropped first)


@dataclass(frozen=True, slots=True)
class DeviceEntry:
    device: Device
    product: Product
    fleet: Fleet
    maker: KeyRecord  # who pays for a device token's requests: the fleet's maker, as a key
    by_token: bool = True  # the device called itself (its token), not through a fleet key


class DeviceReader(Protocol):  # store.fleets.FleetStore, store.tenants.TenantStore
    def device(self, serial: str) -> Device | None: ...

    def product_by_id(self, product_id: str) -> Product | None: ...

    def fleet_by_id(self, fleet_id: str) -> Fleet | None: ...


def maker_key(fleet: Fleet, tenant: Tenant) -> KeyRecord:
    """A device token's requests are the maker's, under the fleet's id as their key: no key
    limits of their own (the device's apply), the tenant's money, plan and retention."""
    return KeyRecord(
        fleet.id, tenant.id, tenant.name, fleet.zone, "", None, False, retention_ttl_s=tenant.retention_ttl_s
    )


class DeviceDirectory:
    """serial -> DeviceEntry for the devices seen lately; a change-feed subscriber."""

    def __init__(
        self,
        reader: DeviceReader,
        tenant_of: Callable[[str], Tenant | None],
        token_key: bytes,
        clock: Clock,
        usage_of: Callable[[DeviceEntry], tuple[int, int]] | None = None,
        on_load: Callable[[DeviceEntry, tuple[int, int]], None] | None = None,
        max_devices: int = MAX_DEVICES,
    ) -> None:
        self.reader = reader
        self.tenant_of = tenant_of
        self.token_key = token_key
        self.clock = clock
        self.usage_of = usage_of  # what a device used today and this month (read in a thread) ...
        self.on_load = on_load  # ... handed to the quotas on the event loop
        self.on_evict: Callable[[str], None] | None = None  # a device dropped: its counters may go
        self.max_devices = max_devices
        self._entries: dict[str, DeviceEntry] = {}
        self._generation = 0  # bumped by every change: a load that raced one is not kept

    # --- the change feed ---

    def load(self, conn: Connection) -> None:
        self._entries = {}

    def apply(self, rows: list[tuple]) -> None:
        serials = {ref for _, kind, ref in rows if kind == "device"}
        owners = {ref for _, kind, ref in rows if kind in ("fleet", "product", "tenant")}
        if not serials and not owners:
            return
        self._generation += 1  # a load racing this change is not kept
        for serial in serials:
            self._entries.pop(serial, None)  # read again on its next request: cheap here, for any count
        if owners:
            for serial, e in list(self._entries.items()):
                if {e.fleet.id, e.product.id, e.fleet.tenant_id} & owners:
                    self._entries.pop(serial, None)

    # --- lookups ---

    def _read(self, serial: str) -> DeviceEntry | None:
        device = self.reader.device(serial)
        if device is None:
            return None
        product = self.reader.product_by_id(device.product_id)
        fleet = self.reader.fleet_by_id(device.fleet_id)
        tenant = self.tenant_of(fleet.tenant_id) if fleet is not None else None
        if product is None or fleet is None or tenant is None:
            return None
        return DeviceEntry(device, product, fleet, maker_key(fleet, tenant))

    def _first_sight(self, serial: str) -> tuple[DeviceEntry | None, tuple[int, int] | None]:
        entry = self._read(serial)
        if entry is None or self.usage_of is None:
            return entry, None
        return entry, self.usage_of(entry)

    async def lookup(self, serial: str) -> DeviceEntry | None:
        entry = self._entries.get(serial)
        if entry is not None:
            return entry
        generation = self._generation
        entry, used = await asyncio.to_thread(self._first_sight, serial)
        if entry is not None and self.on_load is not None and used is not None:
            self.on_load(entry, used)
        if entry is not None and generation == self._generation:
            if len(self._entries) >= self.max_devices:
                oldest = next(iter(self._entries))
                del self._entries[oldest]
                if self.on_evict is not None:
                    self.on_evict(oldest)
            self._entries[serial] = entry
        return entry

    def __len__(self) -> int:
        return len(self._entries)

    # --- who is calling ---

    async def from_token(self, token: str) -> DeviceEntry:
        """The device a `tpd_…` token names: 401 if tokenport did not sign it or it expired."""
        found = read_token(self.token_key, token)
        if found is None:
            raise unauthorized("Incorrect device token")
        if found.expires_at <= self.clock.now().timestamp():
            err = unauthorized("The device token has expired: activate the device again for a new one")
            err.code = "device_token_expired"
            raise err
        entry = await self.lookup(found.serial)
        if entry is None:
            raise unauthorized("Incorrect device token")
        return entry

    async def from_header(self, key: KeyRecord, serial: bytes) -> DeviceEntry:
        """The device a fleet key names in `X-Tokenport-Device`: one of that key's fleet only."""
        if key.fleet_id is None:
            raise forbidden(
                "X-Tokenport-Device is honoured only on a fleet key (tpf_...): devices call with "
                "their own token, or through their maker's server with its fleet key",
                "device_header_not_allowed",
            )
        entry = await self.lookup(serial.decode("latin-1").strip())
        if entry is None or entry.fleet.id != key.fleet_id:
            raise ApiError(
                404, "No such device in this key's fleet", "invalid_request_error", "device_not_found"
            )
        return replace(entry, maker=key, by_token=False)


def is_device_token(secret: str | None) -> bool:
    return secret is not None and secret.startswith(DEVICE_TOKEN_PREFIX)
