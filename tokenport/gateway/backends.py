"""Route: pick a healthy backend that serves the model inside the caller's zone (fail closed)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import aiohttp

from tokenport.config import BackendConfig
from tokenport.gateway.errors import bad_request, forbidden, model_not_found, unavailable

log = logging.getLogger("tokenport.backends")


@dataclass(eq=False)
class Backend:
    config: BackendConfig
    healthy: bool = False
    in_flight: int = 0
    # Engines that can't be health-checked yet (the embedded one while loading) set this.
    ready: asyncio.Event | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def zone(self) -> str:
        return self.config.zone

    @property
    def url(self) -> str:
        return self.config.url


class BackendPool:
    def __init__(self, backends: list[Backend]) -> None:
        self.backends = backends
        self._by_model: dict[str, list[Backend]] = {}
        for b in backends:
            for m in b.config.models:
                self._by_model.setdefault(m, []).append(b)

    def add(self, backend: Backend) -> None:
        self.backends.append(backend)
        for m in backend.config.models:
            self._by_model.setdefault(m, []).append(backend)

    def models_in_zone(self, zone: str) -> list[str]:
        return sorted(m for m, bs in self._by_model.items() if any(b.zone == zone for b in bs))

    def route(self, model: str, zone: str, embeddings: bool = False) -> Backend:
        candidates = self._by_model.get(model)
        if not candidates:
            raise model_not_found(model)
        if embeddings:
            candidates = [b for b in candidates if model in b.config.embeddings]
            if not candidates:
                raise bad_request(
                    f"The model '{model}' does not serve embeddings", "model", "model_not_embedding"
                )
        in_zone = [b for b in candidates if b.zone == zone]
        if not in_zone:
            # Served, but only elsewhere: refuse, never cross the zone boundary.
            elsewhere = ",".join(sorted({b.zone for b in candidates}))
            raise forbidden(f"The model '{model}' is not served in zone '{zone}'", "zone_mismatch", elsewhere)
        best: Backend | None = None
        for b in in_zone:
            if b.healthy and (best is None or b.in_flight < best.in_flight):
                best = b
        if best is None:
            raise unavailable(f"No healthy backend for model '{model}' in zone '{zone}'; try again shortly")
        return best

    async def check_health(self, session: aiohttp.ClientSession, interval: float) -> None:
        """Active health checks, forever."""
        while True:
            await asyncio.gather(*(self._check(session, b) for b in self.backends))
            await asyncio.sleep(interval)

    async def _check(self, session: aiohttp.ClientSession, backend: Backend) -> None:
        if backend.ready is not None and not backend.ready.is_set():
            backend.healthy = False
            return
        try:
            async with session.get(backend.url + "/health", timeout=aiohttp.ClientTimeout(total=2)) as r:
                ok = r.status == 200
        except (aiohttp.ClientError, TimeoutError):
            ok = False
        if ok != backend.healthy:
            log.info("backend %s is %s", backend.name, "healthy" if ok else "unhealthy")
        backend.healthy = ok
