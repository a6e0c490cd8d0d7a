"""Tenant and key administration, shared by the CLI and the admin HTTP API."""

from __future__ import annotations

from datetime import datetime

from tokenport.clock import Clock, SystemClock
from tokenport.money import MoneyError, usd_to_nano
from tokenport.tenancy.keys import FLEET_KEY_PREFIX, KEY_PREFIX, NAME_RE, ZONE_RE, generate_key, new_id
from tokenport.tenancy.ports import TenantRepository
from tokenport.tenancy.records import Conflict, KeyInfo, Tenant


class InvalidInput(ValueError):
    pass


class NotFound(LookupError):
    pass


__all__ = ["Conflict", "InvalidInput", "NotFound", "TenancyService"]


def _check_zone(name: object) -> None:
    if not isinstance(name, str) or not ZONE_RE.fullmatch(name):
        raise InvalidInput("zone must be 1-64 characters of lowercase letters, digits or '-'")


class TenancyService:
    def __init__(self, store: TenantRepository, default_zone: str, clock: Clock | None = None) -> None:
        self.store = store
        self.default_zone = default_zone
        self.clock = clock or SystemClock()

    # --- zones ---

    def create_zone(self, name: str) -> str:
        _check_zone(name)
        self.store.insert_zone(name, self.clock.now())
        return name

    def list_zones(self) -> list[tuple[str, datetime]]:
        return self.store.list_zones()

    def ensure_zones(self, names: set[str]) -> list[str]:
        """Register zones a configuration declares (the default zone, the backends' zones)."""
        for name in names:
            _check_zone(name)
        return self.store.ensure_zones(names, self.clock.now())

    # --- tenants ---

    def create_tenant(self, name: str, zone: str | None = None) -> Tenant:
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise InvalidInput("tenant name must be 1-128 characters of letters, digits, '.', '_' or '-'")
        zone = zone or self.default_zone
        _check_zone(zone)
        if zone == self.default_zone:
            self.ensure_zones({zone})
        elif not self.store.zone_exists(zone):
            raise InvalidInput(f"there is no zone {zone!r}; create it first: tokenport zones create {zone}")
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

    def set_retention(self, name: str, ttl_s: int | None) -> Tenant:
        """Opt a tenant in to retention for `ttl_s` seconds, or back out (None)."""
        if ttl_s is not None and (isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or ttl_s <= 0):
            raise InvalidInput("the retention TTL must be a positive number of seconds")
        tenant = self.tenant(name)
        self.store.set_retention(tenant, ttl_s, self.clock.now())
        return self.tenant(name)

    def create_key(
        self,
        tenant_name: str,
        label: str | None = None,
        rpm_limit: int | None = None,
        tpm_limit: int | None = None,
        budget_usd: str | None = None,
        budget_period: str | None = None,
        fleet_id: str | None = None,
    ) -> tuple[KeyInfo, str]:
        """Returns the key's public record and its secret, which is not kept anywhere. A fleet
        key (`fleet_id`: one of the tenant's fleets, checked by the fleet service) is `tpf_…`."""
        tenant = self.tenant(tenant_name)
        if label is not None and (not isinstance(label, str) or len(label) > 256):
            raise InvalidInput("label must be a string of at most 256 characters")
        for name, value, top in (("rpm_limit", rpm_limit, 10**7), ("tpm_limit", tpm_limit, 10**9)):
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= top
            ):
                raise InvalidInput(f"{name} must be a positive integer")
        budget = None
        if budget_usd is not None or budget_period is not None:
            if budget_period not in ("day", "month") or budget_usd is None:
                raise InvalidInput("a budget needs an amount in USD and a period: day or month")
            try:
                budget = usd_to_nano(str(budget_usd), "budget")
            except MoneyError as exc:
                raise InvalidInput(str(exc)) from None
            if budget <= 0:
                raise InvalidInput("the budget must be positive")
        key = generate_key(FLEET_KEY_PREFIX if fleet_id else KEY_PREFIX)
        now = self.clock.now()
        values = dict(
            id=key.id,
            tenant_id=tenant.id,
            zone=tenant.zone,  # a key lives in its tenant's zone, for good
            label=label,
            prefix=key.prefix,
            key_hash=key.key_hash,
            rpm_limit=rpm_limit,
            tpm_limit=tpm_limit,
            budget_nano_usd=budget,
            budget_period=budget_period if budget else None,
            created_at=now,
            revoked_at=None,
            fleet_id=fleet_id,
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
            tpm_limit=tpm_limit,
            budget_nano_usd=budget,
            budget_period=budget_period if budget else None,
        )
        return info, key.secret

    def revoke_key(self, key_id: str) -> None:
        if not self.store.revoke_key(key_id, self.clock.now()):
            raise NotFound(f"no key with id {key_id!r}")

    def list_keys(self, tenant_name: str | None = None) -> list[KeyInfo]:
        if tenant_name is not None:
            self.tenant(tenant_name)
        return self.store.list_keys(tenant_name)
