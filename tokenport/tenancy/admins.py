"""Admin principals and their zones. Plain Python, no I/O.

The configured `server.admin_token` acts on every zone. Tokens made with `tokenport admins
create NAME --zones a,b` act only on objects of their zones: anything else is refused (403) and
the refusal is an audit entry in the zone that was reached for."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from tokenport.tenancy.keys import hash_key

ADMIN_PREFIX = "tpa_"


@dataclass(frozen=True)
class Admin:
    name: str
    zones: frozenset[str] | None  # None: every zone

    def may(self, zone: str) -> bool:
        return self.zones is None or zone in self.zones

    def visible(self, zones: object) -> list[str] | None:
        """Of `zones`, those this admin may see; None when it sees all."""
        return None if self.zones is None else [z for z in zones if z in self.zones]


ROOT = Admin("server.admin_token", None)


class OutOfZone(PermissionError):
    def __init__(self, admin: Admin, zone: str, action: str) -> None:
        super().__init__(f"admin {admin.name!r} may not act on zone {zone!r}")
        self.admin, self.zone, self.action = admin, zone, action


def require(admin: Admin, zone: str, action: str) -> None:
    if not admin.may(zone):
        raise OutOfZone(admin, zone, action)


def new_admin_token() -> tuple[str, str]:
    """(token, its hash): the token is shown once and never stored."""
    token = ADMIN_PREFIX + secrets.token_urlsafe(30)
    return token, hash_key(token)
