"""Route: pick a backend that serves the model inside the caller's zone (fail closed).

Among the zone's backends for the model, those healthy (active checks), with a closed circuit
(passive errors: three failures in a row open it, for 1 s doubling up to 30 s; then one request
may try again) and below their `max_inflight`:

- with an affinity key (a session header, or a hash of the conversation's leading text), the
  backend rendezvous hashing picks for it, so a conversation keeps hitting the engine whose
  prefix cache holds it, unless its load is above the least loaded one's by more than
  `AFFINITY_SLACK` requests;
- otherwise the least loaded per unit of weight: the engine's own running + queued count (from
  its /metrics), or this process's in-flight count where that is higher.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from tokenport.config import BackendConfig
from tokenport.engines.metrics_text import parse_counter
from tokenport.gateway.errors import bad_request, forbidden, model_not_found, unavailable

log = logging.getLogger("tokenport.backends")

FAILURES_TO_OPEN = 3
OPEN_MAX_S = 30.0
AFFINITY_SLACK = 4  # load above the least loaded backend's before affinity gives way


@dataclass(eq=False)
class Backend:
    config: BackendConfig
    healthy: bool = False
    in_flight: int = 0
    # Engines that can't be health-checked yet (the embedded one while loading) set this.
    ready: asyncio.Event | None = field(default=None, repr=False)
    engine_load: int = 0  # requests the engine reports running and queued (all its clients)
    failures: int = 0  # in a row (passive: requests that failed before any byte)
    open_until: float = 0.0  # monotonic; the circuit is open before then

    def usable(self, now: float) -> bool:
        cap = self.config.max_inflight
        return self.healthy and now >= self.open_until and (cap is None or self.in_flight < cap)

    def failed(self, now: float) -> None:
        self.failures += 1
        if self.failures >= FAILURES_TO_OPEN:
            self.open_until = now + min(OPEN_MAX_S, 2.0 ** (self.failures - FAILURES_TO_OPEN))
            log.warning("backend %s: circuit open after %d failures", self.name, self.failures)

    def succeeded(self) -> None:
        if self.failures >= FAILURES_TO_OPEN:
            log.info("backend %s: circuit closed", self.name)
        self.failures, self.open_until = 0, 0.0

    @property
    def load(self) -> int:
        """What routing balances: the engine's own count (which sees every gateway process),
        or ours where it is higher (requests sent since its last report)."""
        return max(self.in_flight, self.engine_load)

    @property
    def circuit_open(self) -> bool:
        return self.failures >= FAILURES_TO_OPEN

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
    def __init__(self, backends: list[Backend], monotonic: Callable[[], float] = time.monotonic) -> None:
        self.mono = monotonic
        self.backends = backends
        self._index()

    def _index(self) -> None:
        self._by_model: dict[str, list[Backend]] = {}
        for b in self.backends:
            for m in b.config.models:
                self._by_model.setdefault(m, []).append(b)

    def add(self, backend: Backend) -> None:
        self.backends.append(backend)
        self._index()

    def remove(self, name: str) -> None:
        self.backends = [b for b in self.backends if b.name != name]
        self._index()

    def models_in_zone(self, zone: str) -> list[str]:
        return sorted(m for m, bs in self._by_model.items() if any(b.zone == zone for b in bs))

    def route(
        self,
        model: str,
        zone: str,
        embeddings: bool = False,
        exclude: set[Backend] | frozenset = frozenset(),
        affinity: bytes | None = None,
    ) -> Backend:
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
        now = self.mono()
        usable = [b for b in in_zone if b not in exclude and b.usable(now)]
        if not usable:
            raise unavailable(f"No healthy backend for model '{model}' in zone '{zone}'; try again shortly")
        least = min(usable, key=lambda b: (b.load / b.config.weight, b.in_flight))
        if affinity is None or len(usable) == 1:
            return least
        chosen = max(usable, key=lambda b: _score(affinity, b))
        return chosen if chosen.load <= least.load + AFFINITY_SLACK else least

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
        if ok and backend.config.kind in LOAD_METRICS:
            backend.engine_load = await _engine_load(session, backend)


# The engines' gauges of requests running and waiting, by kind.
LOAD_METRICS = {
    "vllm": ("vllm:num_requests_running", "vllm:num_requests_waiting"),
    "sglang": ("sglang:num_running_reqs", "sglang:num_queue_reqs"),
    "llamacpp": ("llamacpp:requests_processing", "llamacpp:requests_deferred"),
}


async def _engine_load(session: aiohttp.ClientSession, backend: Backend) -> int:
    """Running + queued requests from the engine's /metrics (0 when it cannot say)."""
    try:
        async with session.get(backend.url + "/metrics", timeout=aiohttp.ClientTimeout(total=2)) as r:
            text = await r.text() if r.status == 200 else ""
    except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError):
        return 0
    total = 0
    for name in LOAD_METRICS[backend.config.kind]:
        series = parse_counter(text, name) or {}
        total += sum(series.values())
    return total


def _score(key: bytes, backend: Backend) -> float:
    """Weighted rendezvous hashing: each key's backend moves only when that backend goes."""
    h = int.from_bytes(hashlib.blake2b(key + backend.name.encode(), digest_size=8).digest(), "big")
    return backend.config.weight / -math.log((h + 1) / (2**64 + 1))
