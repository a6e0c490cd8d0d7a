"""Repository for tenants, keys and the change feed."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, Engine, Row, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from tokenport.audit.entries import admin_entry, canonical
from tokenport.store.audit import append as audit_append
from tokenport.store.schema import api_keys, changes, tenants, zones
from tokenport.tenancy.keys import KeyRecord
from tokenport.tenancy.records import Conflict, KeyInfo, Tenant

__all__ = ["Conflict", "KeyInfo", "Tenant", "TenantStore"]


def _audit(conn: Connection, zone: str, entry: dict, at: datetime) -> None:
    """The action's audit entry, in its zone's log, in the same database transaction."""
    audit_append(conn, zone, [canonical(entry)], at)


def _tenant(row: Row) -> Tenant:
    return Tenant(row.id, row.name, row.zone, row.created_at, row.retention_ttl_s)


class TenantStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # --- zones ---

    def insert_zone(self, name: str, at: datetime) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(zones).values(name=name, created_at=at))
                conn.execute(insert(changes).values(kind="zone", ref=name, at=at))
                _audit(conn, name, admin_entry("zone.create", at, zone=name), at)
        except IntegrityError as exc:
            raise Conflict(f"zone {name!r} already exists") from exc

    def ensure_zones(self, names: set[str], at: datetime) -> list[str]:
        """Register the zones not yet known (those a configuration declares); the new ones."""
        known = {name for name, _ in self.list_zones()}
        added = []
        for name in sorted(names - known):
            try:
                self.insert_zone(name, at)
                added.append(name)
            except Conflict:  # another process registered it meanwhile
                pass
        return added

    def list_zones(self) -> list[tuple[str, datetime]]:
        with self.engine.connect() as conn:
            return [(r.name, r.created_at) for r in conn.execute(select(zones).order_by(zones.c.name))]

    def zone_exists(self, name: str) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(select(zones.c.name).where(zones.c.name == name)).first() is not None

    # --- tenants ---

    def insert_tenant(self, tenant: Tenant, at: datetime) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(tenants).values(**tenant.__dict__))
                conn.execute(insert(changes).values(kind="tenant", ref=tenant.id, at=at))
                entry = admin_entry(
                    "tenant.create", at, tenant_id=tenant.id, name=tenant.name, zone=tenant.zone
                )
                _audit(conn, tenant.zone, entry, at)
        except IntegrityError as exc:
            raise Conflict(f"tenant {tenant.name!r} already exists") from exc

    def get_tenant(self, name: str) -> Tenant | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(tenants).where(tenants.c.name == name)).first()
        return _tenant(row) if row else None

    def tenant_by_id(self, tenant_id: str) -> Tenant | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(tenants).where(tenants.c.id == tenant_id)).first()
        return _tenant(row) if row else None

    def list_tenants(self) -> list[Tenant]:
        with self.engine.connect() as conn:
            return [_tenant(r) for r in conn.execute(select(tenants).order_by(tenants.c.created_at))]

    def set_retention(self, tenant: Tenant, ttl_s: int | None, at: datetime) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(tenants).where(tenants.c.id == tenant.id).values(retention_ttl_s=ttl_s))
            conn.execute(insert(changes).values(kind="tenant", ref=tenant.id, at=at))
            entry = admin_entry("tenant.retention", at, tenant_id=tenant.id, zone=tenant.zone, ttl_s=ttl_s)
            _audit(conn, tenant.zone, entry, at)

    def count_tenants(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(tenants)).scalar_one()

    def insert_key(self, values: dict, at: datetime) -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(api_keys).values(**values))
            conn.execute(insert(changes).values(kind="key", ref=values["id"], at=at))
            limits = {
                k: values.get(k) for k in ("rpm_limit", "tpm_limit", "budget_nano_usd", "budget_period")
            }
            refs = {
                "key_id": values["id"],
                "tenant_id": values["tenant_id"],
                "zone": values["zone"],
                **limits,
            }
            _audit(conn, values["zone"], admin_entry("key.create", at, **refs), at)

    def revoke_key(self, key_id: str, at: datetime) -> bool:
        """Mark revoked; False when no such key. Revoking twice keeps the first time."""
        with self.engine.begin() as conn:
            found = conn.execute(
                select(api_keys.c.id, api_keys.c.zone).where(api_keys.c.id == key_id)
            ).first()
            if not found:
                return False
            _audit(conn, found.zone, admin_entry("key.revoke", at, key_id=key_id, zone=found.zone), at)
            conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=at)
            )
            conn.execute(insert(changes).values(kind="key", ref=key_id, at=at))
        return True

    def key_zone(self, key_id: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(select(api_keys.c.zone).where(api_keys.c.id == key_id)).scalar()

    def list_keys(self, tenant_name: str | None = None) -> list[KeyInfo]:
        q = (
            select(api_keys, tenants.c.name.label("tenant_name"))
            .join(tenants, tenants.c.id == api_keys.c.tenant_id)
            .order_by(api_keys.c.created_at)
        )
        if tenant_name is not None:
            q = q.where(tenants.c.name == tenant_name)
        with self.engine.connect() as conn:
            return [
                KeyInfo(
                    id=r.id,
                    tenant=r.tenant_name,
                    zone=r.zone,
                    label=r.label,
                    prefix=r.prefix,
                    rpm_limit=r.rpm_limit,
                    created_at=r.created_at,
                    revoked_at=r.revoked_at,
                    tpm_limit=r.tpm_limit,
                    budget_nano_usd=r.budget_nano_usd,
                    budget_period=r.budget_period,
                )
                for r in conn.execute(q)
            ]

    # --- what a running gateway polls ---

    def load_key_records(self, conn: Connection) -> list[KeyRecord]:
        """Every key with its tenant, read on the caller's (snapshot) connection."""
        return [_key_record(r) for r in conn.execute(_KEY_RECORDS)]

    def load_keys(self, key_ids: set[str], tenant_ids: set[str] = frozenset()) -> list[KeyRecord]:
        """The keys named, and every key of the tenants named."""
        where = api_keys.c.id.in_(sorted(key_ids)) | api_keys.c.tenant_id.in_(sorted(tenant_ids))
        with self.engine.connect() as conn:
            return [_key_record(r) for r in conn.execute(_KEY_RECORDS.where(where))]


_KEY_RECORDS = select(
    api_keys.c.id,
    api_keys.c.tenant_id,
    api_keys.c.zone,
    api_keys.c.key_hash,
    api_keys.c.rpm_limit,
    api_keys.c.revoked_at,
    api_keys.c.tpm_limit,
    api_keys.c.budget_nano_usd,
    api_keys.c.budget_period,
    api_keys.c.fleet_id,
    tenants.c.name.label("tenant_name"),
    tenants.c.retention_ttl_s,
).join(tenants, tenants.c.id == api_keys.c.tenant_id)


def _key_record(r: Row) -> KeyRecord:
    return KeyRecord(
        id=r.id,
        tenant_id=r.tenant_id,
        tenant_name=r.tenant_name,
        zone=r.zone,
        key_hash=r.key_hash,
        rpm_limit=r.rpm_limit,
        revoked=r.revoked_at is not None,
        tpm_limit=r.tpm_limit,
        budget_nano_usd=r.budget_nano_usd,
        budget_period=r.budget_period,
        retention_ttl_s=r.retention_ttl_s,
        fleet_id=r.fleet_id,
    )
