"""Repository for fleets, products, production batches, devices, activation challenges and the
per-device day counters (`fleets.ports.FleetRepository`).

Every administrative change appends a change-feed row (kind `fleet`, `product`, `batch` for a
batch created or devices imported into it, `device`, and `ledger` for a package fee) and an
audit entry in the fleet's zone, in the same database transaction. Each write transaction
takes the database's write lock (SQLite) and then the zone's lock (PostgreSQL) before it touches
a row, as the usage writer does, so that no two writers wait on each other in opposite order."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, Row, and_, bindparam, delete, func, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from tokenport.audit.entries import admin_entry, canonical
from tokenport.billing.ledger import LedgerError, Transaction, package_tx_id
from tokenport.fleets.records import ACTIVE, IMPORTED, QUARANTINED, REVOKED, Batch, Device, Fleet, Product
from tokenport.store.audit import append as audit_append
from tokenport.store.audit import lock_zone
from tokenport.store.billing import write_transactions
from tokenport.store.db import write_lock
from tokenport.store.schema import (
    changes,
    device_batches,
    device_days,
    device_flags,
    device_nonces,
    devices,
    fleets,
    products,
    usage,
)
from tokenport.tenancy.records import Conflict

# An activation challenge lives minutes (fleets/service.py NONCE_TTL). One that expired this long
# before a new one expires has expired for certain (for any TTL up to this long) and is deleted;
# until then a replay of a used one is still answered "used".
NONCE_KEEP = timedelta(hours=1)
SERIALS_PER_QUERY = 10_000  # well under SQLite's and PostgreSQL's limits on bound parameters

# A batch created or devices imported: the change row names the batch, not its fleet. A device
# directory reloads every device it holds of a fleet named by a `fleet` row (gateway/devices.py),
# and an import changes none of those (a new serial is read on its first request).
IMPORT_CHANGE = "batch"

_STATE_ACTIONS = {REVOKED: "device.revoke", QUARANTINED: "device.quarantine"}  # else: a release


def _begin_write(conn: Connection, zone: str) -> None:
    """The database's write lock (SQLite), then the zone's lock (PostgreSQL), before any write."""
    write_lock(conn)
    lock_zone(conn, zone)


def _lock_fleets(conn: Connection, fleet_ids: set[str]) -> dict[str, str]:
    """Lock as `_begin_write` does for the fleets' zones (in name order); fleet id -> zone."""
    write_lock(conn)  # first: on SQLite, a read before the first write could leave a stale snapshot
    q = select(fleets.c.id, fleets.c.zone).where(fleets.c.id.in_(sorted(fleet_ids)))
    zones = {r.id: r.zone for r in conn.execute(q)}
    if missing := fleet_ids - set(zones):
        raise Conflict(f"no fleet {sorted(missing)[0]!r}")
    for zone in sorted(set(zones.values())):
        lock_zone(conn, zone)
    return zones


def _audit(conn: Connection, zone: str, entry: dict, at: datetime) -> None:
    """The action's audit entry, in its zone's log, in the same database transaction."""
    audit_append(conn, zone, [canonical(entry)], at)


def _change(conn: Connection, kind: str, ref: str, at: datetime) -> None:
    conn.execute(insert(changes).values(kind=kind, ref=ref, at=at))


def _fleet(row: Row) -> Fleet:
    return Fleet(
        row.id, row.tenant_id, row.name, row.zone, int(row.max_addresses_per_hour), bool(row.auto_quarantine)
    )


def _product(row: Row) -> Product:
    return Product(
        id=row.id,
        fleet_id=row.fleet_id,
        sku=row.sku,
        entitlement_days=int(row.entitlement_days),
        daily_tokens=int(row.daily_tokens),
        monthly_tokens=int(row.monthly_tokens),
        rpm=row.rpm,
        concurrency=row.concurrency,
        models=tuple(json.loads(row.models)),
        max_output=row.max_output,
        reset_tz=row.reset_tz,
        package_fee_nano=int(row.package_fee_nano),
        multipliers=tuple((str(m), int(p)) for m, p in json.loads(row.multipliers)),
    )


def _batch(row: Row) -> Batch:
    return Batch(row.id, row.fleet_id, row.product_id, row.name, bytes(row.sealed_key))


_DEVICE_COLUMNS = (
    devices.c.serial,
    devices.c.fleet_id,
    devices.c.product_id,
    devices.c.batch_id,
    devices.c.state,
    devices.c.activated_at,
    devices.c.entitlement_ends_at,
)


def _device(row: Row) -> Device:
    return Device(
        row.serial,
        row.fleet_id,
        row.product_id,
        row.batch_id,
        row.state,
        row.activated_at,
        row.entitlement_ends_at,
    )


# Fixed statements (compiled once): the bulk import's insert and lookup.
_INSERT_DEVICES = insert(devices)
_EXISTING = select(devices.c.serial, devices.c.fleet_id).where(
    devices.c.serial.in_(bindparam("serials", expanding=True))
)
_ZONE_OF_DEVICE = (
    select(fleets.c.zone, fleets.c.id.label("fleet_id"))
    .join(devices, devices.c.fleet_id == fleets.c.id)
    .where(devices.c.serial == bindparam("serial"))
)


class FleetStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # --- fleets ---

    def insert_fleet(self, fleet: Fleet, at: datetime) -> None:
        try:
            with self.engine.begin() as conn:
                _begin_write(conn, fleet.zone)
                conn.execute(insert(fleets).values(**fleet.__dict__, created_at=at))
                _change(conn, "fleet", fleet.id, at)
                entry = admin_entry("fleet.create", at, **fleet.__dict__)
                _audit(conn, fleet.zone, entry, at)
        except IntegrityError as exc:
            raise Conflict(f"a fleet named {fleet.name!r} exists") from exc

    def fleet(self, name: str) -> Fleet | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(fleets).where(fleets.c.name == name)).first()
        return _fleet(row) if row else None

    def fleet_by_id(self, fleet_id: str) -> Fleet | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(fleets).where(fleets.c.id == fleet_id)).first()
        return _fleet(row) if row else None

    def list_fleets(self, tenant_id: str | None = None) -> list[Fleet]:
        q = select(fleets).order_by(fleets.c.created_at, fleets.c.name)
        if tenant_id is not None:
            q = q.where(fleets.c.tenant_id == tenant_id)
        with self.engine.connect() as conn:
            return [_fleet(r) for r in conn.execute(q)]

    # --- products ---

    def insert_product(self, product: Product, at: datetime) -> None:
        values = {
            **product.__dict__,
            "models": json.dumps(list(product.models)),
            "multipliers": json.dumps([list(m) for m in product.multipliers]),
            "created_at": at,
        }
        try:
            with self.engine.begin() as conn:
                zone = _lock_fleets(conn, {product.fleet_id})[product.fleet_id]
                conn.execute(insert(products).values(**values))
                _change(conn, "product", product.id, at)
                refs = {**product.__dict__, "models": list(product.models)}
                refs["multipliers"] = [list(m) for m in product.multipliers]
                _audit(conn, zone, admin_entry("product.create", at, **refs), at)
        except IntegrityError as exc:
            raise Conflict(f"the fleet has a product {product.sku!r}") from exc

    def products(self, fleet_id: str) -> list[Product]:
        q = select(products).where(products.c.fleet_id == fleet_id).order_by(products.c.sku)
        with self.engine.connect() as conn:
            return [_product(r) for r in conn.execute(q)]

    def product_by_id(self, product_id: str) -> Product | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(products).where(products.c.id == product_id)).first()
        return _product(row) if row else None

    # --- batches ---

    def batch(self, fleet_id: str, name: str) -> Batch | None:
        q = select(device_batches).where(device_batches.c.fleet_id == fleet_id, device_batches.c.name == name)
        with self.engine.connect() as conn:
            row = conn.execute(q).first()
        return _batch(row) if row else None

    def batch_by_id(self, batch_id: str) -> Batch | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(device_batches).where(device_batches.c.id == batch_id)).first()
        return _batch(row) if row else None

    def insert_batch(self, batch: Batch, at: datetime) -> None:
        """The batch and its sealed key; the key itself is never in the audit entry."""
        try:
            with self.engine.begin() as conn:
                zone = _lock_fleets(conn, {batch.fleet_id})[batch.fleet_id]
                conn.execute(insert(device_batches).values(**batch.__dict__, created_at=at))
                _change(conn, IMPORT_CHANGE, batch.id, at)
                entry = admin_entry(
                    "batch.create",
                    at,
                    batch_id=batch.id,
                    fleet_id=batch.fleet_id,
                    product_id=batch.product_id,
                    name=batch.name,
                )
                _audit(conn, zone, entry, at)
        except IntegrityError as exc:
            raise Conflict(f"the fleet has a batch {batch.name!r}") from exc

    # --- devices ---

    def existing_serials(self, serials: list[str]) -> dict[str, str]:
        """serial -> fleet id, for those already registered (anywhere): one query per 10,000."""
        found: dict[str, str] = {}
        with self.engine.connect() as conn:
            for i in range(0, len(serials), SERIALS_PER_QUERY):
                chunk = serials[i : i + SERIALS_PER_QUERY]
                found.update((r.serial, r.fleet_id) for r in conn.execute(_EXISTING, {"serials": chunk}))
        return found

    def insert_devices(self, devices_: list[Device], at: datetime) -> None:
        """One executemany, a change row per batch and an audit entry per fleet (with the counts
        and the batches), in one transaction. A serial registered meanwhile (a concurrent import)
        refuses the whole chunk: import again, it is idempotent."""
        if not devices_:
            return
        by_fleet: dict[str, list[Device]] = {}
        for d in devices_:
            by_fleet.setdefault(d.fleet_id, []).append(d)
        rows = [{**d.__dict__, "created_at": at, "updated_at": at} for d in devices_]
        try:
            with self.engine.begin() as conn:
                zones = _lock_fleets(conn, set(by_fleet))
                conn.execute(_INSERT_DEVICES, rows)
                for batch_id in sorted({d.batch_id for d in devices_}):
                    _change(conn, IMPORT_CHANGE, batch_id, at)
                for fleet_id, group in sorted(by_fleet.items()):
                    entry = admin_entry(
                        "devices.import",
                        at,
                        fleet_id=fleet_id,
                        batch_ids=sorted({d.batch_id for d in group}),
                        product_ids=sorted({d.product_id for d in group}),
                        count=len(group),
                        first=group[0].serial,
                        last=group[-1].serial,
                    )
                    _audit(conn, zones[fleet_id], entry, at)
        except IntegrityError as exc:
            raise Conflict("some of these serials were registered meanwhile: import again") from exc

    def device(self, serial: str) -> Device | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(*_DEVICE_COLUMNS).where(devices.c.serial == serial)).first()
        return _device(row) if row else None

    def list_devices(
        self, fleet_id: str, state: str | None = None, after: str | None = None, limit: int = 100
    ) -> list[Device]:
        """In serial order, from the first serial after `after`."""
        q = select(*_DEVICE_COLUMNS).where(devices.c.fleet_id == fleet_id)
        if state is not None:
            q = q.where(devices.c.state == state)
        if after is not None:
            q = q.where(devices.c.serial > after)
        with self.engine.connect() as conn:
            return [_device(r) for r in conn.execute(q.order_by(devices.c.serial).limit(limit))]

    def _device_zone(self, conn: Connection, serial: str) -> tuple[str, str] | None:
        row = conn.execute(_ZONE_OF_DEVICE, {"serial": serial}).first()
        return (row.zone, row.fleet_id) if row else None

    def _lock_device(self, conn: Connection, serial: str) -> tuple[str, str] | None:
        """Before a device's change: the write lock, then its zone's lock; (zone, fleet id), or
        None (nothing locked beyond the write lock) for an unknown serial."""
        write_lock(conn)
        found = self._device_zone(conn, serial)
        if found is not None:
            lock_zone(conn, found[0])
        return found

    def set_state(self, serial: str, state: str, reason: str, at: datetime) -> bool:
        """False, and nothing written, for an unknown serial, and for a change the device's state
        (as it is now, whatever the caller read before) does not allow: a revoked device stays
        revoked, and only a quarantined one is released (to active or imported)."""
        with self.engine.begin() as conn:
            found = self._lock_device(conn, serial)
            if found is None:
                return False
            zone, fleet_id = found
            allowed = (
                devices.c.state == QUARANTINED if state in (ACTIVE, IMPORTED) else devices.c.state != REVOKED
            )
            changed = conn.execute(
                update(devices).where(devices.c.serial == serial, allowed).values(state=state, updated_at=at)
            ).rowcount
            if changed != 1:
                return False
            _change(conn, "device", serial, at)
            action = _STATE_ACTIONS.get(state, "device.release")
            entry = admin_entry(action, at, serial=serial, fleet_id=fleet_id, state=state, reason=reason)
            _audit(conn, zone, entry, at)
        return True

    def set_entitlement(self, serial: str, ends_at: datetime, at: datetime) -> None:
        with self.engine.begin() as conn:
            found = self._lock_device(conn, serial)
            if found is None:
                return
            zone, fleet_id = found
            conn.execute(
                update(devices)
                .where(devices.c.serial == serial)
                .values(entitlement_ends_at=ends_at, updated_at=at)
            )
            _change(conn, "device", serial, at)
            entry = admin_entry("device.renew", at, serial=serial, fleet_id=fleet_id, ends_at=ends_at)
            _audit(conn, zone, entry, at)

    # --- activation ---

    def add_nonce(self, nonce: str, serial: str, expires_at: datetime) -> None:
        """Record a challenge; then delete those long expired (best effort: a purge that collides
        with another process's is left to the next challenge)."""
        with self.engine.begin() as conn:
            conn.execute(insert(device_nonces).values(nonce=nonce, serial=serial, expires_at=expires_at))
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    delete(device_nonces).where(device_nonces.c.expires_at < expires_at - NONCE_KEEP)
                )
        except DBAPIError:
            pass

    def take_nonce(self, nonce: str, serial: str, at: datetime) -> str:
        n = device_nonces.c
        with self.engine.begin() as conn:
            taken = conn.execute(
                update(device_nonces)
                .where(n.nonce == nonce, n.serial == serial, n.used_at.is_(None), n.expires_at > at)
                .values(used_at=at)
            ).rowcount
            if taken == 1:
                return "ok"
            used = conn.execute(
                select(n.used_at).where(n.nonce == nonce, n.serial == serial, n.used_at.is_not(None))
            ).first()
        return "used" if used is not None else "unknown"

    def activate(self, device: Device, at: datetime, ends_at: datetime, fee: Transaction | None) -> bool:
        """The first activation, its package fee (the ledger's own writer; a transaction id seen
        before is refused: LedgerError, nothing written), a change row for the device (and one
        for the ledger, which running gateways apply) and the audit entry, atomically. False, and
        nothing written, when the device was activated meanwhile, or revoked or quarantined
        since the caller read it."""
        if fee is not None:
            fee.check()
        try:
            with self.engine.begin() as conn:
                return self._activate(conn, device, at, ends_at, fee)
        except IntegrityError as exc:
            raise LedgerError(f"transaction {fee.id if fee else '?'} conflicts with the ledger") from exc

    def _activate(
        self, conn: Connection, device: Device, at: datetime, ends_at: datetime, fee: Transaction | None
    ) -> bool:
        write_lock(conn)
        found = self._device_zone(conn, device.serial)
        if found is None:
            return False
        zone, fleet_id = found
        lock_zone(conn, zone)
        done = conn.execute(  # never activated, and neither revoked nor quarantined meanwhile
            update(devices)
            .where(
                devices.c.serial == device.serial,
                devices.c.activated_at.is_(None),
                devices.c.state == IMPORTED,
            )
            .values(state=ACTIVE, activated_at=at, entitlement_ends_at=ends_at, updated_at=at)
        ).rowcount
        if done != 1:
            return False
        if fee is not None:
            write_transactions(conn, [fee])
            _change(conn, "ledger", fee.id, at)
        _change(conn, "device", device.serial, at)
        entry = admin_entry(
            "device.activate",
            at,
            serial=device.serial,
            fleet_id=fleet_id,
            product_id=device.product_id,
            ends_at=ends_at,
            fee_tx=fee.id if fee is not None else None,
            fee_nano_usd=sum(e.amount for e in fee.entries if e.amount > 0) if fee is not None else 0,
        )
        _audit(conn, zone, entry, at)
        return True

    # --- quotas ---

    def used(self, serial: str, day: str, month_first: str) -> tuple[int, int]:
        d = device_days.c
        q = select(d.day, d.units).where(and_(d.serial == serial, d.day >= month_first, d.day <= day))
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        return (
            sum(int(r.units) for r in rows if r.day == day),
            sum(int(r.units) for r in rows),
        )

    def count_devices(self, fleet_id: str) -> dict[str, int]:
        """Devices of the fleet by state (not in the port: for listings)."""
        q = (
            select(devices.c.state, func.count())
            .where(devices.c.fleet_id == fleet_id)
            .group_by(devices.c.state)
        )
        with self.engine.connect() as conn:
            return {state: int(n) for state, n in conn.execute(q)}

    # --- for invoices (billing.ports.PackageReader) ---

    def product_skus(self, tenant_id: str) -> dict[str, str]:
        q = (
            select(products.c.id, products.c.sku)
            .join(fleets, fleets.c.id == products.c.fleet_id)
            .where(fleets.c.tenant_id == tenant_id)
        )
        with self.engine.connect() as conn:
            return {r.id: r.sku for r in conn.execute(q)}

    def activations(self, tenant_id: str, start: datetime, end: datetime) -> list[tuple[str, int]]:
        d = devices.c
        q = (
            select(d.product_id, products.c.package_fee_nano)
            .join(products, products.c.id == d.product_id)
            .join(fleets, fleets.c.id == d.fleet_id)
            .where(fleets.c.tenant_id == tenant_id, d.activated_at >= start, d.activated_at < end)
        )
        with self.engine.connect() as conn:
            return [(r.product_id, int(r.package_fee_nano)) for r in conn.execute(q)]

    def package_fees(self) -> dict[str, tuple[str, int]]:
        d = devices.c
        q = (
            select(d.serial, d.fleet_id, fleets.c.tenant_id, products.c.package_fee_nano)
            .join(products, products.c.id == d.product_id)
            .join(fleets, fleets.c.id == d.fleet_id)
            .where(d.activated_at.is_not(None), products.c.package_fee_nano > 0)
        )
        with self.engine.connect() as conn:
            return {
                package_tx_id(r.serial, r.fleet_id): (r.tenant_id, int(r.package_fee_nano))
                for r in conn.execute(q)
            }

    # --- the fleet report ---

    def product_counts(
        self, fleet_id: str, end: datetime, active_since: datetime
    ) -> dict[str, tuple[int, int, int]]:
        d = devices.c
        counts = (
            select(
                d.product_id,
                func.count().filter(d.created_at < end),
                func.count().filter(d.activated_at < end),
            )
            .where(d.fleet_id == fleet_id)
            .group_by(d.product_id)
        )
        fleet_products = select(products.c.id).where(products.c.fleet_id == fleet_id)
        active = (
            select(usage.c.product_id, func.count(func.distinct(usage.c.device_serial)))
            .where(
                usage.c.product_id.in_(fleet_products),
                usage.c.started_at >= active_since,
                usage.c.started_at < end,
                usage.c.status == 200,
            )
            .group_by(usage.c.product_id)
        )
        with self.engine.connect() as conn:
            seen = {p: int(n) for p, n in conn.execute(active)}
            return {p: (int(i), int(a), seen.get(p, 0)) for p, i, a in conn.execute(counts)}

    def device_usage(
        self, fleet_id: str, start: datetime, end: datetime
    ) -> list[tuple[str, str, str, int, int, int]]:
        u = usage.c
        fleet_products = select(products.c.id).where(products.c.fleet_id == fleet_id)
        q = (
            select(
                u.device_serial,
                u.product_id,
                u.device_day,
                func.count(),
                func.coalesce(func.sum(u.prompt_tokens + u.completion_tokens), 0),
                func.coalesce(func.sum(u.cost_nano_usd), 0),
            )
            .where(u.product_id.in_(fleet_products), u.started_at >= start, u.started_at < end)
            .group_by(u.device_serial, u.product_id, u.device_day)
        )
        with self.engine.connect() as conn:
            return [(s, p, day, int(r), int(t), int(c)) for s, p, day, r, t, c in conn.execute(q)]

    def at_cap(self, product_id: str, start: datetime, end: datetime) -> int:
        u = usage.c
        q = select(func.count(func.distinct(u.device_serial))).where(
            u.product_id == product_id,
            u.error_code == "device_quota_exceeded",
            u.started_at >= start,
            u.started_at < end,
        )
        with self.engine.connect() as conn:
            return int(conn.execute(q).scalar_one())

    def spent_since(self, tenant_id: str, since: datetime) -> int:
        cost = select(func.coalesce(func.sum(usage.c.cost_nano_usd), 0)).where(
            usage.c.tenant_id == tenant_id, usage.c.started_at >= since
        )
        fees = (
            select(func.coalesce(func.sum(products.c.package_fee_nano), 0))
            .select_from(devices.join(products, products.c.id == devices.c.product_id))
            .join(fleets, fleets.c.id == devices.c.fleet_id)
            .where(fleets.c.tenant_id == tenant_id, devices.c.activated_at >= since)
        )
        with self.engine.connect() as conn:
            return int(conn.execute(cost).scalar_one()) + int(conn.execute(fees).scalar_one())

    # --- clone detection ---

    def add_flag(self, serial: str, kind: str, detail: str, at: datetime, quarantine: bool) -> None:
        with self.engine.begin() as conn:
            found = self._lock_device(conn, serial)
            if found is None:
                return
            zone, fleet_id = found
            values = {"serial": serial, "fleet_id": fleet_id, "kind": kind, "detail": detail[:200]}
            conn.execute(insert(device_flags).values(**values, at=at))
            quarantined = (
                quarantine
                and conn.execute(
                    update(devices)
                    .where(devices.c.serial == serial, devices.c.state == ACTIVE)
                    .values(state=QUARANTINED, updated_at=at)
                ).rowcount
                == 1
            )
            if quarantined:
                _change(conn, "device", serial, at)
            entry = admin_entry("device.flag", at, **values, quarantined=quarantined)
            _audit(conn, zone, entry, at)

    def flags(self, fleet_id: str, limit: int = 1000) -> list[tuple[str, str, str, datetime]]:
        f = device_flags.c
        q = select(f.serial, f.kind, f.detail, f.at).where(f.fleet_id == fleet_id)
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(q.order_by(f.at.desc(), f.id.desc()).limit(limit))]
