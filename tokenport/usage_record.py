"""The usage record: one per request, content-free (ids, counts, times, hashes)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from datetime import datetime

# Where the token counts came from.
SOURCE_ENGINE = "engine"  # the engine's final usage object
SOURCE_PROGRESS = "progress"  # the engine's per-chunk running counts (stream cut short)
SOURCE_CHUNKS = "chunks"  # counted content chunks (engine gave no counts; stream cut short)
SOURCE_NONE = "none"  # no tokens were produced (rejected or failed before the engine)
SOURCE_BOUNDED = "bounded"  # the engine's counts were out of bounds: settled on the bounds (usage_guard.py)


@dataclass(slots=True)
class UsageRecord:
    request_id: str
    tenant_id: str
    key_id: str
    zone: str
    other_zone: str | None  # a refused cross-zone attempt: the zone(s) it reached for
    endpoint: str
    model: str | None
    backend: str | None
    stream: bool
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    usage_source: str
    finish_reason: str | None
    status: int
    error_code: str | None
    ttft_ms: int | None
    duration_ms: int
    client_disconnected: bool
    cost_nano_usd: int | None
    plan_units: int | None
    request_sha256: str | None  # evidence without content: hashes of the bodies in and out
    response_sha256: str | None
    retention: str  # "none" (zero retention) or "encrypted:<ttl seconds>"
    started_at: datetime
    finished_at: datetime
    # A fleet's device (docs/fleets.md): its serial, its product, the weighted tokens counted
    # against its quotas and the local day (in the product's time zone) they count on.
    device_serial: str | None = None
    product_id: str | None = None
    device_units: int | None = None
    device_day: str | None = None

    def row(self) -> dict:
        return {name: getattr(self, name) for name in _FIELDS}


_FIELDS = tuple(f.name for f in fields(UsageRecord))
ALLOWED_FIELDS = frozenset(_FIELDS)


class DisallowedField(ValueError):
    """A usage row with a field outside the content-free schema: refused, never written."""


def check_row(row: dict) -> None:
    extra = set(row) - ALLOWED_FIELDS
    if extra:
        raise DisallowedField(f"usage rows may not carry {sorted(extra)}")


def opaque(text: str) -> str:
    """Client text that identifies nothing we serve (an unknown model name): kept as a short
    hash, so that attempts can be correlated without keeping what the client typed."""
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:16]
