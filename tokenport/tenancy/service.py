"""Tenant and key administration, shared by the CLI and the admin HTTP API."""

from __future__ import annotations

from tokenport.clock import Clock, SystemClock
from tokenport.store.tenants import Conflict, KeyInfo, Tenant, TenantStore
from tokenport.tenancy.keys import NAME_RE, ZONE_RE, generate_key, new_id


class InvalidInput(ValueError):
    pass


class NotFound(LookupError):
    pass


__all__ = ["Conflict", "InvalidInput", "NotFound", "TenancyService"]


class TenancyService:
    def __init__(self, store: TenantStore, default_zone: str, clock: Clock | None = None) -> None:
        self.store = store
        self.default_zone = default_zone
        self.clock = clock or SystemClock()

    def create_tenant(self, name: str, zone: str | None = None) -> Tenant:
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise InvalidInput("tenant name must be 1-128 characters of letters, digits, '.', '_' or '-'")
        zone = zone or self.default_zone
        if not isinstance(zone, str) or not ZONE_RE.fullmatch(zone):
            raise InvalidInput("zone must be 1-64 characters of lowercase letters, digits or '-'")
        now = self.clock.now()
        tenant = Tenant(id=new_id("ten"), name=name, zone=zone, created_at=now)
        self.store.insert_tenant(tenant, now)
        return tenant

    def list_tenants(self) -> list[Tenant]:
        return self.store.list_tenants()

    def tenant(self, name: str) -> Tenant:
        tenant = self.store.get_tenant(name)
        if tenant is None:
            raise NotFound(f"no tenant named {name!r}")
        return tenant

    def create_key(
        self, tenant_name: str, label: str | None = None, rpm_limit: int | None = None
    ) -> tuple[KeyInfo, str]:
        """Returns the key's public record and its secret, which is not kept anywhere."""
        tenant = self.tenant(tenant_name)
        if label is not None and (not isinstance(label, str) or len(label) > 256):
            raise InvalidInput("label must be a string of at most 256 characters")
        if rpm_limit is not None and (
            not isinstance(rpm_limit, int) or isinstance(rpm_limit, bool) or not 0 < rpm_limit <= 10**7
        ):
            raise InvalidInput("rpm_limit must be a positive integer")
        key = generate_key()
        now = self.clock.now()
        values = dict(
            id=key.id,
            tenant_id=tenant.id,
            zone=tenant.zone,  # a key lives in its tenant's zone, for good
            label=label,
            prefix=key.prefix,
            key_hash=key.key_hash,
            rpm_limit=rpm_limit,
            created_at=now,
            revoked_at=None,
        )
        self.store.insert_key(values, now)
        info = KeyInfo(
            id=key.id,
            tenant=tenant.name,
            zone=tenant.zone,
            label=label,
            prefix=key.prefix,
            rpm_limit=rpm_limit,
            created_at=now,
            revoked_at=None,
        )
        return info, key.secret

    def revoke_key(self, key_id: str) -> None:
        if not self.store.revoke_key(key_id, self.clock.now()):
            raise NotFound(f"no key with id {key_id!r}")

    def list_keys(self, tenant_name: str | None = None) -> list[KeyInfo]:
        if tenant_name is not None:
            self.tenant(tenant_name)
        return self.store.list_keys(tenant_name)
