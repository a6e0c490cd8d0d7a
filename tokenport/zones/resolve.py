"""Resolve zone: a request runs in its key's zone; a request naming another zone is refused."""

from __future__ import annotations

from tokenport.gateway.errors import forbidden

ZONE_HEADER = b"x-tokenport-zone"


def resolve_zone(key_zone: str, requested: bytes | None) -> str:
    if requested is not None:
        wanted = requested.decode("latin-1").strip()
        if wanted != key_zone:
            raise forbidden(
                f"This key belongs to zone '{key_zone}'; the request asked for zone '{wanted}'",
                "zone_conflict",
            )
    return key_zone
