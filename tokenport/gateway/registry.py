"""Backends registered at run time reach the pool through the change feed: added, changed or
removed within a poll interval, in every gateway process. Configured backends are not touched."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy import Connection

from tokenport.config import BackendConfig
from tokenport.gateway.backends import Backend, BackendPool
from tokenport.store.backends import BackendStore


class BackendRegistry:
    def __init__(self, store: BackendStore, pool: BackendPool, configured: set[str]) -> None:
        self.store = store
        self.pool = pool
        self.configured = configured

    def load(self, conn: Connection) -> None:
        self._sync(self.store.load(conn))

    def apply(self, rows: list[tuple]):
        if not any(kind == "backend" for _, kind, _ in rows):
            return None
        configs = self.store.load()  # in the feed's thread; the pool changes on the loop
        return lambda: self._sync(configs)

    def _sync(self, configs: list[BackendConfig]) -> None:
        wanted = {c.name: c for c in configs if c.name not in self.configured}
        for b in list(self.pool.backends):
            if b.name not in self.configured and (b.name not in wanted or b.config != wanted[b.name]):
                self.pool.remove(b.name)
        present = {b.name for b in self.pool.backends}
        for name, cfg in wanted.items():
            if name not in present:
                self.pool.add(Backend(cfg))  # unhealthy until its first health check passes
