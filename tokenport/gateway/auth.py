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
        """Apply what the change feed says moved; blocking (run it in a thread).

        Normally only the keys named by new change rows are reloaded. The whole table is reloaded
        at start, and when the row count shows a change committed below the highest id already
        seen (PostgreSQL hands out ids at insert, not at commit)."""
        if self._head is None:
            return self._reload_all()
        head, rows = self.store.poll_changes(self._head[0])
        if head == self._head:
            return False
        if len(rows) != head[1] - self._head[1]:
            return self._reload_all()
        key_ids = {ref for _, kind, ref in rows if kind == "key"}
        if key_ids:
            for record in self.store.load_keys(key_ids):
                self._by_hash[record.key_hash] = record  # one atomic item update each
        self._head = head
        return True

    def _reload_all(self) -> bool:
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
