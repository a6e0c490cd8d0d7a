"""Authenticate: an in-memory key table kept current by the change feed (gateway/changes.py).

No database round trip per request; a key created or revoked anywhere (CLI, admin API,
another process) is seen within one poll interval (default 250 ms).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy import Connection

import logging

from tokenport.gateway.auth_throttle import AuthThrottle
from tokenport.gateway.errors import forbidden, unauthorized
from tokenport.store.tenants import TenantStore
from tokenport.tenancy.keys import KeyRecord, extract_secret, hash_key

log = logging.getLogger("tokenport.auth")


class KeyCache:
    """The key table in memory; a change-feed subscriber."""

    def __init__(self, store: TenantStore, throttle: AuthThrottle | None = None) -> None:
        self.store = store
        self.throttle = throttle  # failed authentications per client address
        self._by_hash: dict[str, KeyRecord] = {}

    def load(self, conn: Connection) -> None:
        self._by_hash = {r.key_hash: r for r in self.store.load_key_records(conn)}  # swapped atomically

    def apply(self, rows: list[tuple]) -> None:
        key_ids = {ref for _, kind, ref in rows if kind == "key"}
        tenant_ids = {ref for _, kind, ref in rows if kind == "tenant"}  # e.g. retention changed
        if key_ids or tenant_ids:
            for record in self.store.load_keys(key_ids, tenant_ids):
                self._by_hash[record.key_hash] = record  # one atomic item update each

    def authenticate(
        self, authorization: bytes | None, x_api_key: bytes | None, address: str | None = None
    ) -> KeyRecord:
        """The key's record; a failure is throttled per client `address` (auth_throttle.py)."""
        return self.authenticate_secret(extract_secret(authorization, x_api_key), address)

    def authenticate_secret(self, secret: str | None, address: str | None = None) -> KeyRecord:
        """As `authenticate`, for a secret already taken from the headers."""
        record = self._by_hash.get(hash_key(secret)) if secret is not None else None
        if record is not None and not record.revoked:
            return record
        if secret is None:
            err = unauthorized(
                "Missing API key: send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'"
            )
        elif record is None:
            err = unauthorized("Incorrect API key provided")
        else:
            err = forbidden("This API key has been revoked", "key_revoked")
        raise err if self.throttle is None else self.throttle.failed(address, err)
