"""Route: pick a backend that serves the model inside the caller's zone (fail closed).

Among the zone's backends for the model, those healthy (active checks), with a closed circuit
(passive errors: three failures in a row open it, for 1 s doubling up to 30 s; then the next
request for the model is its one probe, whatever its affinity) and below their `max_inflight`:

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
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from tokenport.config import BackendConfig
from tokenport.gateway.errors import bad_request, forbidden, model_not_found, unavailable
from tokenport.prometheus_text import parse_counter

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
    seed: int = field(init=False, repr=False)  # its rendezvous hashing salt, from its name
    unhealthy_reason: str | None = None  # what its last failed health check saw
    reported_at: float | None = None  # monotonic: when its unhealthiness was last logged

    def __post_init__(self) -> None:
        self.seed = int.from_bytes(hashlib.blake2b(self.config.name.encode(), digest_size=8).digest(), "big")

    def usable(self, now: float) -> bool:
        cap = self.config.max_inflight
        return self.healthy and now >= self.open_until and (cap is None or self.in_flight < cap)

    def failed(self, now: float) -> None:
        self.failures += 1
        if self.failures >= FAILURES_TO_OPEN:
            self.open_until = now + min(OPEN_MAX_S, 2.0 ** (self.failures - FAILURES_TO_OPEN))
            log.warning("backend %s: circuit open after %d failures", self.name, self.failures)

    def probe(self, now: float) -> None:
        """Half-open: this request is the one probe; no other until it has answered."""
        self.open_until = now + OPEN_MAX_S

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
        self._by_model_zone: dict[tuple[str, str], list[Backend]] = {}
        for b in self.backends:
            for m in b.config.models:
                self._by_model.setdefault(m, []).append(b)
                self._by_model_zone.setdefault((m, b.zone), []).append(b)

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
        affinity: Callable[[], bytes | None] | None = None,
    ) -> Backend:
        """`affinity` computes the request's affinity key, only when several backends could serve."""
        in_zone = None if embeddings else self._by_model_zone.get((model, zone))
        if in_zone is None:
            in_zone = self._in_zone(model, zone, embeddings)
        now = self.mono()
        usable = [b for b in in_zone if b.usable(now) and b not in exclude]
        if not usable:
            raise unavailable(f"No healthy backend for model '{model}' in zone '{zone}'; try again shortly")
        for b in usable:  # a circuit that half-opened gets the next request as its probe
            if b.circuit_open:
                b.probe(now)
                return b
        if len(usable) == 1:
            return usable[0]
        least = min(usable, key=lambda b: (b.load / b.config.weight, b.in_flight))
        key = affinity() if affinity is not None else None
        if key is None:
            return least
        chosen = _rendezvous(_key_hash(key), usable)
        return chosen if chosen.load <= least.load + AFFINITY_SLACK else least

    def _in_zone(self, model: str, zone: str, embeddings: bool) -> list[Backend]:
        """The zone's backends for the model, or the error saying why there are none."""
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
        return in_zone

    async def check_health(self, session: aiohttp.ClientSession, interval: float) -> None:
        """Active health checks, forever."""
        while True:
            await asyncio.gather(*(self.check(session, b) for b in self.backends))
            await asyncio.sleep(interval)

    async def check(self, session: aiohttp.ClientSession, backend: Backend) -> None:
        """One backend's health check now (the periodic round calls it for each)."""
        if backend.ready is not None and not backend.ready.is_set():
            backend.healthy = False
            return
        try:
            async with session.get(backend.url + "/health", timeout=aiohttp.ClientTimeout(total=2)) as r:
                reason = None if r.status == 200 else f"GET /health answered {r.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = unreachable(exc)
        self._report(backend, reason)
        backend.healthy, backend.unhealthy_reason = reason is None, reason
        if reason is None and backend.config.kind in LOAD_METRICS:
            backend.engine_load = await _engine_load(session, backend)

    def _report(self, backend: Backend, reason: str | None) -> None:
        """Log a backend turning healthy, or unhealthy with why (its first check included), and
        again every UNHEALTHY_LOG_EVERY_S (or when the reason changes) while it stays so."""
        now = self.mono()
        if reason is None:
            if not backend.healthy:
                log.info("backend %s is healthy", backend.name)
            backend.reported_at = None
            return
        if (
            backend.reported_at is None
            or reason != backend.unhealthy_reason
            or now - backend.reported_at >= UNHEALTHY_LOG_EVERY_S
        ):
            since = "" if backend.reported_at is None else " (still)"
            log.warning("backend %s is unhealthy%s: %s (%s)", backend.name, since, reason, backend.url)
            backend.reported_at = now


UNHEALTHY_LOG_EVERY_S = 60.0


def unreachable(exc: BaseException) -> str:
    """Why a health check got no answer, from the exception's type (never its message)."""
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return "unreachable: no answer within 2 s"
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, ConnectionRefusedError):
            return "unreachable: connection refused"
        if isinstance(exc.os_error, socket.gaierror):
            return "unreachable: cannot resolve the host name"
        return f"unreachable: {type(exc.os_error).__name__}"
    return f"unreachable: {type(exc).__name__}"


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


_MASK = 2**64 - 1


def _key_hash(key: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")


def _rendezvous(key_hash: int, backends: list[Backend]) -> Backend:
    """Weighted rendezvous hashing: each key's backend moves only when that backend goes. The key
    is hashed once per request; each backend's score mixes it plus the backend's seed
    (splitmix64's finaliser), so a decision costs one hash, not one per backend. With equal
    weights the mixed value itself ranks them (weight / -log(u) grows with u)."""
    uniform = len({b.config.weight for b in backends}) == 1
    best, best_score = backends[0], -1.0
    for b in backends:
        z = (key_hash + b.seed) & _MASK
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        z ^= z >> 31
        score = z if uniform else b.config.weight / -math.log((z + 1) / (2**64 + 1))
        if score > best_score:
            best, best_score = b, score
    return best
