"""Energy metering when several gateway processes serve from one database (shared mode).

Each node is metered by one process at a time: the holder of its lease (renewed every window,
taken over when it lapses). The holder reads the node's source into `energy_readings`; once a
reading is older than the settle delay, every process's requests in it have their usage records
written, so the holder allocates it from those records, exactly as one process would from
memory, and writes the window, its shares and its audit entry. A node's energy is counted once,
whichever process served its requests.
"""

from __future__ import annotations

import uuid
from collections import deque
from datetime import datetime, timedelta

from tokenport.energy.allocation import Span, allocate, units_in_window
from tokenport.energy.meter import (
    RECENT_WINDOWS,
    Allocated,
    Node,
    RequestMeta,
    Window,
    busy_time,
    engine_units,
    own_ppm,
)
from tokenport.energy.ports import MeterRepository
from tokenport.energy.sources import PowerModelSource

SETTLE_DELAY_S = 30.0  # usage records reach the database within the writer's flush interval


class SharedEnergyMeter:
    def __init__(
        self,
        nodes: list[Node],
        store: MeterRepository,
        window_s: float,
        alpha_milli: int,
        settle_delay_s: float,
    ) -> None:
        self.nodes = nodes
        self.store = store
        self.window_s = window_s
        self.alpha_milli = alpha_milli
        self.settle_delay_s = settle_delay_s
        self.holder = f"{uuid.uuid4().hex[:16]}"
        self._last: dict[str, datetime | None] = {n.name: None for n in nodes}
        self._recent: dict[str, deque] = {n.name: deque(maxlen=RECENT_WINDOWS) for n in nodes}

    # The request path has nothing to tell: spans come from the usage records.
    def opened(self, request_id: str, backend: str, start: float) -> None:
        pass

    def closed(self, request_id: str, span: Span | None, meta: RequestMeta) -> None:
        pass

    def tick(self, mono: float, wall: datetime) -> list[Allocated]:
        """Read and allocate the nodes this process holds; writes what it allocates itself."""
        for node in self.nodes:
            if not self.store.take_lease(node.name, self.holder, wall, 3 * self.window_s):
                self._last[node.name] = None  # another process meters it; start afresh if we take over
                continue
            self._read(node, wall)
            self._allocate_due(node, wall)
        return []

    def _read(self, node: Node, wall: datetime) -> None:
        last = self._last[node.name]
        model = isinstance(node.source, PowerModelSource)
        # A counter's delta is read now; a power model needs the window's busy time, known once
        # every process's requests in it are recorded: it is evaluated at allocation.
        reading = None if model else node.source.read(0.0, 0.0)
        units = engine_units(node, self.alpha_milli)
        self._last[node.name] = wall
        if last is None or (reading is None and not model):
            return  # the baseline
        self.store.add_reading(
            {
                "id": f"{node.name}@{last.isoformat()}",
                "node": node.name,
                "started_at": last,
                "ended_at": wall,
                "energy_mj": None if model else reading.energy_mj,
                "method": node.source.method,
                "engine_units": units,
            }
        )

    def _allocate_due(self, node: Node, wall: datetime) -> None:
        due = self.store.due_readings(node.name, wall - timedelta(seconds=self.settle_delay_s))
        if not due:
            return
        lo_all = due[0]["started_at"]
        spans = self.store.spans(sorted(node.backends), lo_all, due[-1]["ended_at"])
        done = []
        for r in due:
            lo, hi = r["started_at"].timestamp(), r["ended_at"].timestamp()
            inside = [(s, m) for s, m in spans if s.end > lo and s.start < hi]
            own = [s for s, _ in inside]
            energy = r["energy_mj"]
            if energy is None:  # the power model, over the window's busy time
                busy = busy_time([(max(s.start, lo), min(s.end, hi)) for s in own], lo)
                reading = node.source.read(busy, hi - lo)
                energy = reading.energy_mj if reading is not None else 0
            units = sum(units_in_window(s, lo, hi, self.alpha_milli) for s in own)
            ppm = own_ppm(self._recent[node.name], units, r["engine_units"])
            alloc = allocate(energy, node.idle_w, lo, hi, own, self.alpha_milli, ppm)
            w = Window(
                node.name,
                node.zone,
                lo,
                hi,
                r["started_at"],
                r["ended_at"],
                energy,
                r["method"],
                r["engine_units"],
            )
            meta = {s.request_id: m for s, m in inside}
            done.append(Allocated(w, alloc, {sh.request_id: meta[sh.request_id] for sh in alloc.shares}))
        self.store.write(done, [r["id"] for r in due])
