"""The energy meter of one gateway process: reads each node's source once per window, keeps the
spans of the requests its backends served, and allocates a window once every request that
overlapped it has finished. Plain Python: the runtime calls `tick` from a thread and writes
what it returns.

A node is a machine (or a set of GPUs) whose energy one source measures; it serves some
backends, all in one zone. Requests to a backend no node covers get no energy figure.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from tokenport.energy.allocation import ALPHA_MILLI, Allocation, Span, allocate, units_in_window
from tokenport.energy.sources import EnergySource, EngineTokens

MAX_WAIT_S = 600.0  # a window waits at most this long for requests still in flight
RECENT_WINDOWS = 12  # the own-work fraction is taken over this many windows (engine counters lag)


@dataclass
class Node:
    name: str
    zone: str
    source: EnergySource
    idle_w: float
    backends: frozenset[str]
    engines: tuple[EngineTokens, ...] = ()  # its engines' token counters, where they have them


@dataclass(frozen=True)
class RequestMeta:
    tenant_id: str


@dataclass(frozen=True)
class Window:
    node: str
    zone: str
    lo: float  # monotonic
    hi: float
    started_at: datetime
    ended_at: datetime
    energy_mj: int
    method: str
    engine_units: int | None = None  # the engines' work in the window (thousandths), if known

    @property
    def id(self) -> str:
        return f"{self.node}@{self.started_at.isoformat()}"


@dataclass(frozen=True)
class Allocated:
    window: Window
    allocation: Allocation
    meta: dict[str, RequestMeta]  # of the requests with a share


@dataclass
class _NodeState:
    node: Node
    last: float | None = None  # monotonic time of the previous read
    last_wall: datetime | None = None
    windows: list[Window] = field(default_factory=list)  # read, not yet allocated
    spans: list[tuple[Span, RequestMeta]] = field(default_factory=list)
    open: dict[str, float] = field(default_factory=dict)  # request id -> start (in flight)
    recent: deque = field(default_factory=lambda: deque(maxlen=RECENT_WINDOWS))  # (own, engine) units


class EnergyMeter:
    def __init__(self, nodes: list[Node], alpha_milli: int = ALPHA_MILLI) -> None:
        self.alpha_milli = alpha_milli
        self._nodes = {n.name: _NodeState(n) for n in nodes}
        self._by_backend = {b: n.name for n in nodes for b in n.backends}
        self._where: dict[str, str] = {}  # request id -> the node it is in flight on
        self._lock = threading.Lock()  # the loop adds spans; the ticking thread reads them

    def node_of(self, backend: str) -> str | None:
        return self._by_backend.get(backend)

    # --- from the request path (the event loop): constant time, no I/O ---

    def opened(self, request_id: str, backend: str, start: float) -> None:
        if not self._nodes:
            return
        name = self._by_backend.get(backend)
        with self._lock:
            before = self._where.pop(request_id, None)  # a retry on another backend moves it
            if before is not None:
                self._nodes[before].open.pop(request_id, None)
            if name is not None:
                self._nodes[name].open[request_id] = start
                self._where[request_id] = name

    def closed(self, request_id: str, span: Span | None, meta: RequestMeta) -> None:
        """The request finished; `span` is None when the engine did no work for it."""
        if not self._nodes:
            return
        with self._lock:
            name = self._where.pop(request_id, None)
            if name is not None:
                self._nodes[name].open.pop(request_id, None)
                if span is not None:
                    self._nodes[name].spans.append((span, meta))

    # --- from the meter's thread ---

    def tick(self, mono: float, wall: datetime) -> list[Allocated]:
        """Read every node's source for the window since the last tick; allocate the windows
        whose requests have all finished. The request path's lock is held only to copy and to
        prune the spans: all the work is done on the copies."""
        done: list[Allocated] = []
        for state in self._nodes.values():
            with self._lock:
                spans, starts = list(state.spans), list(state.open.values())
            if state.last is not None:
                busy = _busy(spans, starts, state.last, mono)
                reading = state.node.source.read(busy, mono - state.last)
                engine_units = self._engine_units(state.node)
                if reading is not None:
                    w = Window(
                        state.node.name,
                        state.node.zone,
                        state.last,
                        mono,
                        state.last_wall or wall - timedelta(seconds=mono - state.last),
                        wall,
                        reading.energy_mj,
                        reading.method,
                        engine_units,
                    )
                    state.windows.append(w)
            else:
                state.node.source.read(0.0, 0.0)  # the counters' baseline
                self._engine_units(state.node)
            state.last, state.last_wall = mono, wall
            done += self._allocate_ready(state, spans, min(starts, default=float("inf")), mono)
            floor = state.windows[0].lo if state.windows else mono
            with self._lock:
                state.spans = [(s, m) for s, m in state.spans if s.end > floor]
        return done

    def _engine_units(self, node: Node) -> int | None:
        return engine_units(node, self.alpha_milli)

    def _own_ppm(self, state: _NodeState, w: Window, spans: list[Span]) -> int:
        own = sum(units_in_window(s, w.lo, w.hi, self.alpha_milli) for s in spans)
        return own_ppm(state.recent, own, w.engine_units)

    def _allocate_ready(
        self, state: _NodeState, spans: list[tuple[Span, RequestMeta]], earliest_open: float, mono: float
    ) -> list[Allocated]:
        out = []
        while state.windows:
            w = state.windows[0]
            if earliest_open < w.hi and mono - w.hi < MAX_WAIT_S:
                break  # a request overlapping it is still in flight
            inside = [(s, m) for s, m in spans if s.end > w.lo and s.start < w.hi]
            own = [s for s, _ in inside]
            ppm = self._own_ppm(state, w, own)
            alloc = allocate(w.energy_mj, state.node.idle_w, w.lo, w.hi, own, self.alpha_milli, ppm)
            meta = {s.request_id: m for s, m in inside}
            out.append(Allocated(w, alloc, {sh.request_id: meta[sh.request_id] for sh in alloc.shares}))
            state.windows.pop(0)
        return out


def _busy(spans: list[tuple[Span, RequestMeta]], starts: list[float], lo: float, hi: float) -> float:
    """Seconds of [lo, hi) with a request of the node in flight (for the power model)."""
    intervals = [(max(s.start, lo), min(s.end, hi)) for s, _ in spans if s.end > lo]
    return busy_time(intervals + [(max(start, lo), hi) for start in starts if start < hi], lo)


def busy_time(intervals: list[tuple[float, float]], lo: float) -> float:
    """The length of the union of intervals that start at or after `lo`."""
    total, end = 0.0, lo
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def engine_units(node: Node, alpha_milli: int) -> int | None:
    """Work units the node's engines report since the last read (None: unknown)."""
    if not node.engines:
        return None
    total = 0
    for engine in node.engines:
        tokens = engine.read()
        if tokens is None:
            return None
        total += alpha_milli * tokens[0] + 1000 * tokens[1]
    return total


def own_ppm(recent: deque, own_units: int, engine_units: int | None) -> int:
    """The share of the engines' recent work that our requests account for (parts per million),
    over the last windows in `recent` (engines count some tokens only when a request ends)."""
    if engine_units is None:
        return 1_000_000
    recent.append((own_units, engine_units))
    own, engine = sum(o for o, _ in recent), sum(e for _, e in recent)
    return 1_000_000 if engine <= own else own * 1_000_000 // engine
