"""Authenticate: an in-memory key table kept current by the change feed (gateway/changes.py).

No database round trip per request; a key created or revoked anywhere (CLI, admin API,
another process) is seen within one poll interval (default 250 ms).
"""

from __future__ import annotations

import logging

from tokenport.gateway.errors import forbidden, unauthorized
from tokenport.store.tenants import TenantStore
from tokenport.tenancy.keys import KeyRecord, extract_secret, hash_key

log = logging.getLogger("tokenport.auth")


class KeyCache:
    """The key table in memory; a change-feed subscriber."""

    def __init__(self, store: TenantStore) -> None:
        self.store = store
        self._by_hash: dict[str, KeyRecord] = {}

    def load(self, conn) -> None:
        self._by_hash = {r.key_hash: r for r in self.store.load_key_records(conn)}  # swapped atomically

    def apply(self, rows) -> None:
        key_ids = {ref for _, kind, ref in rows if kind == "key"}
        tenant_ids = {ref for _, kind, ref in rows if kind == "tenant"}  # e.g. retention changed
        if key_ids or tenant_ids:
            for record in self.store.load_keys(key_ids, tenant_ids):
                self._by_hash[record.key_hash] = record  # one atomic item update each

    def authenticate(self, authorization: bytes | None, x_api_key: bytes | None) -> KeyRecord:
        secret = extract_secret(authorization, x_api_key)
        if secret is None:
            raise unauthorized(
                "Missing API key: send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'"
            )
        record = self._by_hash.get(hash_key(secret))
        if record is None:
            raise unauthorized("Incorrect API key provided")
        if record.revoked:
            raise forbidden("This API key has been revoked", "key_revoked")
        return record
