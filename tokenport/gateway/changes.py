"""Follow the change feed: what the CLI, the admin API or another process changed reaches this
process within one poll interval (default 250 ms), with no database round trip per request; at
once where changes are announced over Redis (`store/broadcast.py`, `wake`).

Subscribers load their state once, from the same snapshot as the feed's starting head, then apply
each new change row exactly once. A row that commits below an id already seen (PostgreSQL) is
caught by the head's row count and found again in a look-back window.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Protocol

from sqlalchemy import Connection

from tokenport.store.feed import FeedStore, Row, head, rows_between, snapshot

log = logging.getLogger("tokenport.changes")

LOOKBACK = 1000  # rows; a transaction that stays open across more changes than this is not expected
CHASE_S = 0.01  # after a wake-up, poll this often until the announced row shows ...
CHASE_TRIES = 30  # ... at most this many times (it was announced just before its commit)


class Subscriber(Protocol):
    def load(self, conn: Connection) -> None: ...  # the full state, from the snapshot

    # New change rows, each delivered once. Runs in a worker thread (it may read the database);
    # it may return a function to run on the event loop, for state the request path mutates.
    def apply(self, rows: list[Row]) -> Callable[[], None] | None: ...


class ChangeFeed:
    def __init__(self, store: FeedStore, subscribers: list[Subscriber], interval: float = 0.25) -> None:
        self.store = store
        self.subscribers = subscribers
        self.interval = interval
        self._head: tuple[int, int] | None = None
        self._seen: set[int] = set()
        self._wanted = 0  # the highest change id announced and not seen yet
        self._woken: asyncio.Event | None = None

    def start(self) -> None:
        with snapshot(self.store.engine) as conn:
            self._head = head(conn)
            self._seen = {r[0] for r in rows_between(conn, self._head[0] - LOOKBACK, self._head[0])}
            for sub in self.subscribers:
                sub.load(conn)

    def poll(self) -> list[Callable[[], None]]:
        """Fetch and apply what moved (blocking: run it in a thread); returns the follow-ups that
        must run on the event loop."""
        if self._head is None:
            self.start()
            return []
        new_head, rows = self.store.poll(self._head[0])
        if new_head == self._head:
            return []
        if len(rows) != new_head[1] - self._head[1]:  # something committed below the highest id
            rows = self.store.window(new_head[0] - LOOKBACK, new_head[0])
        rows = [r for r in rows if r[0] not in self._seen]
        follow_ups = [f for sub in self.subscribers if (f := sub.apply(rows)) is not None]
        self._seen.update(r[0] for r in rows)
        floor = new_head[0] - LOOKBACK
        self._seen = {i for i in self._seen if i > floor}
        self._head = new_head
        return follow_ups

    def poll_now(self) -> None:
        """poll() and its follow-ups, for callers without an event loop (tests, tools)."""
        for follow_up in self.poll():
            follow_up()

    def wake(self, change_id: int) -> None:
        """A change with this id was announced: poll now (call on the event loop)."""
        if self._head is None or change_id > self._head[0]:
            self._wanted = max(self._wanted, change_id)
            if self._woken is not None:
                self._woken.set()

    async def run(self) -> None:
        self._woken = woken = asyncio.Event()
        chase = 0
        while True:
            woken.clear()
            try:
                for follow_up in await asyncio.to_thread(self.poll):
                    follow_up()
            except Exception as exc:  # keep serving with what we have
                log.warning("change feed poll failed: %s", type(exc).__name__)
            if self._head is not None and self._wanted > self._head[0] and chase < CHASE_TRIES:
                chase += 1
                await asyncio.sleep(CHASE_S)
                continue
            chase, self._wanted = 0, 0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), self.interval)
