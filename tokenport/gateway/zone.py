"""Resolve zone: a request runs in its key's zone; a request naming another zone is refused."""

from __future__ import annotations

from tokenport.gateway.errors import forbidden
from tokenport.tenancy.keys import ZONE_RE

ZONE_HEADER = b"x-tokenport-zone"


def resolve_zone(key_zone: str, requested: bytes | None) -> str:
    if requested is not None:
        wanted = requested.decode("latin-1").strip()
        if wanted != key_zone:
            raise forbidden(
                f"This key belongs to zone '{key_zone}'; the request asked for zone '{wanted}'",
                "zone_conflict",
                # audited as named, if it is a zone name at all (never arbitrary client text)
                other_zone=wanted if ZONE_RE.fullmatch(wanted) else "(not a zone name)",
            )
    return key_zone
