"""The retention vault: seals what a tenant opted to keep, opens it for that tenant only, purges it
when it expires or when the tenant asks, and signs a deletion receipt for a purge.

Each zone's key is a file in the server's key directory (`retention-<zone>.key`, mode 0600),
separate from its audit signing key; a zone's records open only under that zone's key."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from tokenport.audit.receipts import deletion_receipt
from tokenport.audit.service import AuditService
from tokenport.clock import Clock, SystemClock, utc_iso
from tokenport.keyfiles import load_or_create
from tokenport.tenancy.records import Tenant
from tokenport.zones.ports import RetainedRepository
from tokenport.zones.retention import SealError, new_zone_key, seal, unseal


class Vault:
    def __init__(
        self, store: RetainedRepository, keys_dir: Path, audit: AuditService, clock: Clock | None = None
    ):
        self.store = store
        self.keys_dir = keys_dir
        self.audit = audit
        self.clock = clock or SystemClock()
        self._keys: dict[str, bytes] = {}

    def zone_key(self, zone: str) -> bytes:
        if zone not in self._keys:
            self._keys[zone] = load_or_create(self.keys_dir / f"retention-{zone}.key", new_zone_key)
        return self._keys[zone]

    def sealed_row(
        self,
        request_id: str,
        tenant_id: str,
        zone: str,
        ttl_s: int,
        request: bytes,
        response: bytes,
        now: datetime,
    ) -> dict:
        """The `retained` row for one request: ciphertext only."""
        sealed = seal(self.zone_key(zone), zone, tenant_id, request_id, request, response)
        return {
            "request_id": request_id,
            "tenant_id": tenant_id,
            "zone": zone,
            "kek_id": sealed.kek_id,
            "created_at": now,
            "expires_at": now + timedelta(seconds=ttl_s),
            "wrapped_key": sealed.wrapped_key,
            "ciphertext": sealed.ciphertext,
        }

    def read(self, request_id: str, tenant_id: str) -> dict | None:
        """One of the tenant's unexpired records, opened; None if there is none."""
        found = self.store.get(request_id, tenant_id, self.clock.now())
        if found is None:
            return None
        zone, expires_at, sealed = found
        try:
            request, response = unseal(self.zone_key(zone), zone, tenant_id, request_id, sealed)
        except SealError:
            return None  # moved or altered: it does not belong to this tenant here
        return {
            "request_id": request_id,
            "zone": zone,
            "expires_at": utc_iso(expires_at),
            "request_body": request.decode("utf-8", "replace"),
            "response_body": response.decode("utf-8", "replace"),
        }

    def purge_expired(self) -> int:
        return self.store.purge_expired(self.clock.now())

    def purge_tenant(self, tenant: Tenant) -> dict:
        """Delete everything retained for the tenant; the signed deletion receipt."""
        now = self.clock.now()
        ids, index = self.store.purge_tenant(tenant.id, tenant.zone, now)
        signer = self.audit.signer(tenant.zone)
        return deletion_receipt(tenant.id, tenant.zone, ids, index, signer, utc_iso(now))
