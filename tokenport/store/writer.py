"""Batched durable writer: the hot path hands records over; a thread writes them in batches.

What a `kill -9` can lose: records handed over but not yet committed, i.e. those of requests
that finished within the last flush interval (default 200 ms), plus requests still in flight.
A graceful stop (SIGTERM / SIGINT) drains the queue before exiting and loses nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger("tokenport.writer")


class BatchWriter:
    def __init__(
        self,
        write_batch: Callable[[list[dict]], None],
        flush_interval: float = 0.2,
        batch_size: int = 500,
        name: str = "usage-writer",
    ) -> None:
        self._write = write_batch
        self._interval = flush_interval
        self._batch_size = batch_size
        self._queue: deque[dict] = deque()
        self._wake = threading.Event()
        self._stopping = False
        self._written = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, row: dict) -> None:
        """Non-blocking; safe from any thread or the event loop."""
        self._queue.append(row)
        if len(self._queue) >= self._batch_size:
            self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._queue)

    @property
    def written(self) -> int:
        return self._written

    def close(self, timeout: float = 60.0) -> None:
        """Drain everything, then stop the thread."""
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive() or self._queue:
            log.error("usage writer stopped with %d records unwritten", len(self._queue))

    def _run(self) -> None:
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            self._flush()
            if self._stopping and not self._queue:
                return

    def _flush(self) -> None:
        while self._queue:
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), self._batch_size))]
            while True:
                try:
                    self._write(batch)
                    self._written += len(batch)
                    break
                except Exception as exc:  # keep the batch; the store is idempotent on request_id
                    log.error("usage write failed (%s); retrying in 1 s", type(exc).__name__)
                    time.sleep(1.0)
