"""Authenticate: an in-memory key table kept fresh by polling the change feed.

No database round trip per request; a key created or revoked anywhere (CLI, admin API,
another process) is seen within one poll interval (default 250 ms).
"""

from __future__ import annotations

import asyncio
import logging

from tokenport.gateway.errors import forbidden, unauthorized
from tokenport.store.tenants import TenantStore
from tokenport.tenancy.keys import KeyRecord, extract_secret, hash_key

log = logging.getLogger("tokenport.auth")


class KeyCache:
    def __init__(self, store: TenantStore, refresh_interval: float = 0.25) -> None:
        self.store = store
        self.refresh_interval = refresh_interval
        self._by_hash: dict[str, KeyRecord] = {}
        self._head: tuple[int, int] | None = None

    def refresh(self) -> bool:
        """Reload when the change feed moved; blocking (run it in a thread)."""
        if self.store.latest_change() == self._head:
            return False
        head, records = self.store.load_key_records()
        self._by_hash = {r.key_hash: r for r in records}  # swapped atomically
        self._head = head
        return True

    async def run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.refresh)
            except Exception as exc:  # keep serving with the last good table
                log.warning("key refresh failed: %s", type(exc).__name__)
            await asyncio.sleep(self.refresh_interval)

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
