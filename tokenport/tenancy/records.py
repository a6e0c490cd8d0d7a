"""What the tenancy service reads and writes: tenants and the view of a key (the secret never)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


class Conflict(Exception):
    """The name (or id) is taken."""


@dataclass(frozen=True)
class Tenant:
    id: str
    name: str
    zone: str
    created_at: datetime
    retention_ttl_s: int | None = None  # None: zero retention (the default)


@dataclass(frozen=True)
class KeyInfo:
    id: str
    tenant: str
    zone: str
    label: str | None
    prefix: str
    rpm_limit: int | None
    created_at: datetime
    revoked_at: datetime | None
    tpm_limit: int | None = None
    budget_nano_usd: int | None = None
    budget_period: str | None = None
