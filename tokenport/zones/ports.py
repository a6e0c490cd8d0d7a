"""The repository the retention vault needs (implemented by `store/retention.py`)."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from tokenport.zones.retention import Sealed


class RetainedRepository(Protocol):
    def get(self, request_id: str, tenant_id: str, now: datetime) -> tuple[str, datetime, Sealed] | None:
        """(zone, expires_at, sealed record) of one of the tenant's unexpired records."""
        ...

    def purge_expired(self, now: datetime) -> int:
        """Delete every expired record (audited); how many."""
        ...

    def purge_tenant(self, tenant_id: str, zone: str, now: datetime) -> tuple[list[str], int]:
        """Delete all of a tenant's records (audited): their ids and the purge's audit index."""
        ...
