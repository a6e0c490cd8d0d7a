"""Fleets behind the CLI and the device endpoints: fleets and products, importing serials by
production batch, a device's lifecycle, and activation by challenge and response."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tokenport.billing.invoices import InvoiceError, period_bounds
from tokenport.billing.ledger import package_tx, package_tx_id
from tokenport.billing.plans import parse_multipliers
from tokenport.clock import Clock, SystemClock
from tokenport.fleets.identity import (
    SERIAL_RE,
    device_secret,
    issue_token,
    mac_matches,
    new_batch_key,
    new_nonce,
    open_batch_key,
    seal_batch_key,
)
from tokenport.fleets.ports import FleetRepository
from tokenport.fleets.quotas import DAY, local_day, window_bounds
from tokenport.fleets.records import ACTIVE, IMPORTED, QUARANTINED, REVOKED, Batch, Device, Fleet, Product
from tokenport.fleets.report import FleetReportInputs, ProductFigures, build_report
from tokenport.money import MoneyError, usd_to_nano
from tokenport.tenancy.keys import NAME_RE, new_id
from tokenport.tenancy.records import Conflict, KeyInfo
from tokenport.tenancy.service import InvalidInput, NotFound, TenancyService

TOKEN_TTL = timedelta(hours=24)
NONCE_RE = re.compile(r"[0-9a-f]{32}")  # what `challenge` gives (identity.new_nonce)
UNKNOWN_SECRET = bytes(32)  # an unknown serial's answer is checked too, against this
MAX_BATCH_KEYS = 10_000
NONCE_TTL = timedelta(minutes=2)


class ActivationRefused(Exception):
    """An activation the device endpoints answer with `status` and `code`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status, self.code = status, code
        super().__init__(message)


def _refused_unknown() -> ActivationRefused:  # one answer for an unknown serial and a wrong MAC
    return ActivationRefused(
        401, "invalid_device_credentials", "The device's answer to the challenge is wrong"
    )


@dataclass
class ImportSummary:
    fleet: str
    sku: str
    batch: str
    batch_id: str
    batch_created: bool
    new: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    rejected: list[tuple[int, str, str]] = field(default_factory=list)  # (row, serial, why)
    dry_run: bool = False

    def view(self) -> dict:
        return {
            "fleet": self.fleet,
            "sku": self.sku,
            "batch": self.batch,
            "batch_id": self.batch_id,
            "batch_created": self.batch_created,
            "dry_run": self.dry_run,
            "new": len(self.new),
            "existing": len(self.existing),
            "rejected": [{"row": r, "serial": s, "reason": why} for r, s, why in self.rejected],
        }


def _positive(value: int | None, what: str, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise InvalidInput(f"{what} must be a positive integer")


class FleetService:
    def __init__(
        self,
        store: FleetRepository,
        tenancy: TenancyService,
        zone_key: Callable[[str], bytes],
        token_key: bytes,
        clock: Clock | None = None,
    ) -> None:
        self.store = store
        self.tenancy = tenancy
        self.zone_key = zone_key  # the zone's key that seals its batch keys (zones/vault.py)
        self.token_key = token_key  # signs device tokens
        self.clock = clock or SystemClock()
        self._batch_keys: dict[str, bytes] = {}  # batch id -> its key, opened

    # --- fleets and products ---

    def create_fleet(
        self, tenant_name: str, name: str, max_addresses: int = 3, auto_quarantine: bool = False
    ) -> Fleet:
        tenant = self.tenancy.tenant(tenant_name)
        if not isinstance(name, str) or NAME_RE.fullmatch(name) is None:
            raise InvalidInput("a fleet name is 1-128 letters, digits, '.', '_' or '-'")
        _positive(max_addresses, "the addresses a device may use per hour")
        if self.store.fleet(name) is not None:
            raise Conflict(f"a fleet named {name!r} exists")
        fleet = Fleet(new_id("flt"), tenant.id, name, tenant.zone, max_addresses, auto_quarantine)
        self.store.insert_fleet(fleet, self.clock.now())
        return fleet

    def fleet(self, name: str) -> Fleet:
        fleet = self.store.fleet(name)
        if fleet is None:
            raise NotFound(f"no fleet named {name!r}")
        return fleet

    def list_fleets(self, tenant_name: str | None = None) -> list[Fleet]:
        tenant_id = self.tenancy.tenant(tenant_name).id if tenant_name else None
        return self.store.list_fleets(tenant_id)

    def create_product(
        self,
        fleet_name: str,
        sku: str,
        entitlement_days: int,
        daily_tokens: int,
        monthly_tokens: int,
        rpm: int | None = None,
        concurrency: int | None = None,
        models: Iterable[str] = (),
        max_output: int | None = None,
        reset_tz: str = "UTC",
        package_fee_usd: str | None = None,
        multipliers: Iterable[str] = (),
    ) -> Product:
        fleet = self.fleet(fleet_name)
        if not isinstance(sku, str) or NAME_RE.fullmatch(sku) is None:
            raise InvalidInput("a SKU is 1-128 letters, digits, '.', '_' or '-'")
        for value, what in ((entitlement_days, "--entitlement-days"), (daily_tokens, "--daily-tokens")):
            _positive(value, what)
        _positive(monthly_tokens, "--monthly-tokens")
        if daily_tokens > monthly_tokens:
            raise InvalidInput("--daily-tokens cannot be more than --monthly-tokens")
        for value, what in ((rpm, "--rpm"), (concurrency, "--concurrency"), (max_output, "--max-output")):
            _positive(value, what, optional=True)
        try:
            ZoneInfo(reset_tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidInput(
                f"--reset-tz must be an IANA time zone (e.g. Europe/London), got {reset_tz!r}"
            ) from None
        try:
            fee = usd_to_nano(package_fee_usd, "--package-fee-usd") if package_fee_usd else 0
            weights = parse_multipliers(list(multipliers))
        except (MoneyError, ValueError) as exc:
            raise InvalidInput(str(exc)) from None
        if fee < 0:
            raise InvalidInput("--package-fee-usd cannot be negative")
        if any(p.sku == sku for p in self.store.products(fleet.id)):
            raise Conflict(f"fleet {fleet_name!r} has a product {sku!r}")
        chosen = tuple(m for m in models if m)
        product = Product(
            new_id("prd"), fleet.id, sku, entitlement_days, daily_tokens, monthly_tokens, rpm,
            concurrency, chosen, max_output, reset_tz, fee, weights,
        )  # fmt: skip
        self.store.insert_product(product, self.clock.now())
        return product

    def product(self, fleet: Fleet, sku: str) -> Product:
        for p in self.store.products(fleet.id):
            if p.sku == sku:
                return p
        raise NotFound(f"fleet {fleet.name!r} has no product {sku!r}")

    def list_products(self, fleet_name: str) -> list[Product]:
        return self.store.products(self.fleet(fleet_name).id)

    def create_fleet_key(
        self,
        fleet_name: str,
        label: str | None = None,
        rpm_limit: int | None = None,
        tpm_limit: int | None = None,
        budget_usd: str | None = None,
        budget_period: str | None = None,
    ) -> tuple[KeyInfo, str]:
        """A key for the maker's own server (`tpf_…`): it may name any device of this fleet in
        `X-Tokenport-Device`; the key's limits and budget apply on top of the device's."""
        fleet = self.fleet(fleet_name)
        tenant = next(t for t in self.tenancy.list_tenants() if t.id == fleet.tenant_id)
        return self.tenancy.create_key(
            tenant.name, label, rpm_limit, tpm_limit, budget_usd, budget_period, fleet_id=fleet.id
        )

    # --- import ---

    def import_devices(
        self, fleet_name: str, sku: str, batch_name: str, serials: Iterable[str], dry_run: bool = False
    ) -> tuple[ImportSummary, bytes]:
        """Register serials under a production batch (created on first use, with its key):
        idempotent; a row is new, existing (in this fleet) or rejected with why. Returns the
        summary and the batch key (for the flashing station's secrets)."""
        fleet = self.fleet(fleet_name)
        product = self.product(fleet, sku)
        if not isinstance(batch_name, str) or NAME_RE.fullmatch(batch_name) is None:
            raise InvalidInput("a batch name is 1-128 letters, digits, '.', '_' or '-'")
        batch = self.store.batch(fleet.id, batch_name)
        created = batch is None
        if batch is None:
            key, batch_id = new_batch_key(), new_id("bat")
            sealed = seal_batch_key(self.zone_key(fleet.zone), fleet.zone, fleet.id, batch_id, key)
            batch = Batch(batch_id, fleet.id, product.id, batch_name, sealed)
        elif batch.product_id != product.id:
            raise Conflict(f"batch {batch_name!r} belongs to another product of fleet {fleet_name!r}")
        else:
            key = self._open(fleet, batch)
        summary = ImportSummary(fleet.name, sku, batch_name, batch.id, created, dry_run=dry_run)
        fresh = self._sort_rows(fleet, serials, summary)
        if not dry_run:
            now = self.clock.now()
            if created:
                self.store.insert_batch(batch, now)
            devices = [Device(s, fleet.id, product.id, batch.id, IMPORTED) for s in fresh]
            for i in range(0, len(devices), 10_000):
                self.store.insert_devices(devices[i : i + 10_000], now)
        summary.new = fresh
        return summary, key

    def _sort_rows(self, fleet: Fleet, serials: Iterable[str], summary: ImportSummary) -> list[str]:
        """The new serials, in order; existing and rejected rows noted in the summary."""
        seen: set[str] = set()
        candidates: list[tuple[int, str]] = []
        for row, raw in enumerate(serials, start=1):
            serial = raw.strip()
            if SERIAL_RE.fullmatch(serial) is None:
                why = "empty" if not serial else "a serial is 1-64 letters, digits, '.', '_', ':' or '-'"
                summary.rejected.append((row, serial[:80], why))
            elif serial in seen:
                summary.rejected.append((row, serial, "repeated in this file"))
            else:
                seen.add(serial)
                candidates.append((row, serial))
        taken: dict[str, str] = {}
        for i in range(0, len(candidates), 10_000):
            taken.update(self.store.existing_serials([s for _, s in candidates[i : i + 10_000]]))
        fresh = []
        for row, serial in candidates:
            owner = taken.get(serial)
            if owner is None:
                fresh.append(serial)
            elif owner == fleet.id:
                summary.existing.append(serial)
            else:
                summary.rejected.append((row, serial, "registered to another fleet"))
        return fresh

    def _open(self, fleet: Fleet, batch: Batch) -> bytes:
        return open_batch_key(self.zone_key(fleet.zone), fleet.zone, fleet.id, batch.id, batch.sealed_key)

    def secret_of(self, serial: str) -> bytes:
        """A device's secret, derived again from its batch key (for the flashing station)."""
        return self._secret(self.device(serial))

    def _secret(self, device: Device) -> bytes:
        """Its batch's key opened once per process (kept, as the zone keys are): a known serial
        then costs what an unknown one does, and the answer's timing tells nothing."""
        key = self._batch_keys.get(device.batch_id)
        if key is None:
            batch = self.store.batch_by_id(device.batch_id)
            fleet = self.store.fleet_by_id(device.fleet_id)
            assert batch is not None and fleet is not None
            key = self._open(fleet, batch)
            if len(self._batch_keys) < MAX_BATCH_KEYS:
                self._batch_keys[device.batch_id] = key
        return device_secret(key, device.serial)

    # --- a device's lifecycle ---

    def device(self, serial: str) -> Device:
        device = self.store.device(serial) if isinstance(serial, str) else None
        if device is None:
            raise NotFound(f"no device {serial!r}")
        return device

    def list_devices(
        self, fleet_name: str, state: str | None = None, after: str | None = None, limit: int = 100
    ) -> list[Device]:
        return self.store.list_devices(self.fleet(fleet_name).id, state, after, max(1, min(limit, 10_000)))

    def set_state(self, serial: str, state: str, reason: str = "") -> Device:
        """revoke, quarantine or release (back to active, or imported if never activated)."""
        device = self.device(serial)
        if device.state == REVOKED:
            raise Conflict(f"device {serial!r} is revoked, for good")
        if state == ACTIVE:  # release
            if device.state != QUARANTINED:
                raise Conflict(f"device {serial!r} is not quarantined")
            state = ACTIVE if device.activated_at is not None else IMPORTED
        if not self.store.set_state(serial, state, reason, self.clock.now()):
            raise Conflict(f"device {serial!r} changed meanwhile: look again")  # e.g. revoked elsewhere
        return replace(device, state=state)

    def renew(self, serial: str, days: int) -> Device:
        """Extend the entitlement by `days` from its end (or from now, once it has run out)."""
        _positive(days, "--days")
        device = self.device(serial)
        if device.activated_at is None:
            raise Conflict(f"device {serial!r} was never activated: its entitlement starts then")
        now = self.clock.now()
        base = max(device.entitlement_ends_at or now, now)
        ends = base + timedelta(days=days)
        self.store.set_entitlement(serial, ends, now)
        return replace(device, entitlement_ends_at=ends)

    def entitlement(self, device: Device, product: Product) -> dict:
        now = self.clock.now()
        day = local_day(now, product.reset_tz)
        day_used, month_used = self.store.used(device.serial, day, day[:8] + "01")
        ends = device.entitlement_ends_at
        return {
            "product": product.sku,
            "ends_at": ends.isoformat().replace("+00:00", "Z") if ends else None,
            "days_left": max(0, math.ceil((ends - now).total_seconds() / 86400))
            if ends
            else product.entitlement_days,
            "tokens_left_today": max(0, product.daily_tokens - day_used),
            "tokens_left_this_month": max(0, product.monthly_tokens - month_used),
        }

    # --- activation ---

    def challenge(self, serial: object) -> dict:
        """A single-use nonce for any well-formed serial (known or not: nothing is revealed)."""
        if not isinstance(serial, str) or SERIAL_RE.fullmatch(serial) is None:
            raise InvalidInput("'serial' must be a device serial number")
        nonce, now = new_nonce(), self.clock.now()
        self.store.add_nonce(nonce, serial, now + NONCE_TTL)
        return {"serial": serial, "nonce": nonce, "expires_in": int(NONCE_TTL.total_seconds())}

    def activate(self, serial: object, nonce: object, mac: object) -> dict:
        """Check the answer; the first activation starts the entitlement and posts the package
        fee. Returns a device token and the entitlement."""
        if not all(isinstance(v, str) and v for v in (serial, nonce, mac)):
            raise InvalidInput("'serial', 'nonce' and 'mac' are required strings")
        assert isinstance(serial, str) and isinstance(nonce, str) and isinstance(mac, str)
        if SERIAL_RE.fullmatch(serial) is None or NONCE_RE.fullmatch(nonce) is None:
            raise _refused_unknown()  # never a nonce we gave: nothing to look up
        now = self.clock.now()
        taken = self.store.take_nonce(nonce, serial, now)
        if taken == "used":
            raise ActivationRefused(
                409, "challenge_used", "This challenge was answered already: ask for a new one"
            )
        device = self.store.device(serial) if taken == "ok" else None
        secret = self._secret(device) if device is not None else UNKNOWN_SECRET
        if not mac_matches(secret, serial, nonce, mac) or device is None:  # the same work either way
            raise _refused_unknown()
        if device.state in (REVOKED, QUARANTINED):
            raise ActivationRefused(403, f"device_{device.state}", f"This device is {device.state}")
        product = self.store.product_by_id(device.product_id)
        assert product is not None
        if device.activated_at is None:
            device = self._first_activation(device, product, now)
            if device.state in (REVOKED, QUARANTINED):  # changed while it activated
                raise ActivationRefused(403, f"device_{device.state}", f"This device is {device.state}")
        expires = now + TOKEN_TTL
        token = issue_token(self.token_key, serial, int(expires.timestamp()))
        return {
            "device_token": token,
            "expires_at": expires.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "entitlement": self.entitlement(device, product),
        }

    def _first_activation(self, device: Device, product: Product, now: datetime) -> Device:
        fleet = self.store.fleet_by_id(device.fleet_id)
        assert fleet is not None
        ends = now + timedelta(days=product.entitlement_days)
        fee = None
        if product.package_fee_nano:
            fee = package_tx(
                package_tx_id(device.serial, fleet.id), fleet.tenant_id, product.package_fee_nano, now
            )
        if not self.store.activate(device, now, ends, fee):  # another process was first
            activated = self.store.device(device.serial)
            assert activated is not None
            return activated
        return replace(device, state=ACTIVE, activated_at=now, entitlement_ends_at=ends)

    # --- the fleet report ---

    def report(self, fleet_name: str, period: str, available_nano: int) -> dict:
        """The fleet's month (`fleets/report.py`); `available_nano`: the maker's credit now."""
        fleet = self.fleet(fleet_name)
        try:
            start, end = period_bounds(period)
        except InvoiceError as exc:
            raise InvalidInput(str(exc)) from None
        now = self.clock.now()
        until = min(end, now)
        products = self.store.products(fleet.id)
        counts = self.store.product_counts(fleet.id, until, until - timedelta(days=7))
        figures = {
            p.id: ProductFigures(p.id, p.sku, p.package_fee_nano, *counts.get(p.id, (0, 0, 0)))
            for p in products
        }
        for p in products:  # "today" is each product's own local day
            figures[p.id].at_cap_today = self.store.at_cap(p.id, *window_bounds(DAY, now, p.reset_tz))
        per_device: dict[str, list] = {}
        device_days = []
        for serial, product_id, day, requests, tokens, cost in self.store.device_usage(fleet.id, start, end):
            if day is not None:  # refused before any quota was held: no device-day
                device_days.append(tokens)
            f = figures[product_id]
            f.requests, f.tokens, f.cost_nano = f.requests + requests, f.tokens + tokens, f.cost_nano + cost
            d = per_device.setdefault(serial, [product_id, 0, 0, 0])
            d[1], d[2], d[3] = d[1] + requests, d[2] + tokens, d[3] + cost
        inputs = FleetReportInputs(
            fleet.name,
            period,
            now.isoformat().replace("+00:00", "Z"),
            list(figures.values()),
            device_days,
            [(s, d[0], d[1], d[2], d[3]) for s, d in per_device.items()],
            available_nano,
            self.store.spent_since(fleet.tenant_id, now - timedelta(days=7)),
        )
        return build_report(inputs)

    # --- clone detection ---

    def flag(self, serial: str, fleet_id: str, kind: str, detail: str) -> None:
        """A gateway saw signs of a clone (`gateway/clones.py`): recorded, audited, and the device
        quarantined where its fleet says so."""
        fleet = self.store.fleet_by_id(fleet_id)
        quarantine = fleet is not None and fleet.auto_quarantine
        self.store.add_flag(serial, kind, detail, self.clock.now(), quarantine)

    def flags(self, fleet_name: str, limit: int = 1000) -> list[dict]:
        return [
            {"serial": s, "kind": k, "detail": d, "at": at.isoformat().replace("+00:00", "Z")}
            for s, k, d, at in self.store.flags(self.fleet(fleet_name).id, max(1, min(limit, 100_000)))
        ]
