"""Batched durable writer: the hot path hands records over; a thread writes them in batches
(in the gateway, by handing each batch to the writer process: `store/writer_process.py`).

What a `kill -9` can lose: records handed over but not yet committed, i.e. those of requests
that finished within the last flush interval (default 200 ms), plus requests still in flight.
A graceful stop (SIGTERM / SIGINT) drains the queue before exiting and loses nothing.

A failed batch is retried. If the failure is not transient (the database rejected a row rather
than being unreachable), rows are written one by one and a row the database will never accept
goes to the dead-letter callback (a file), so one bad record cannot block all the others.
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
        write_batch: Callable[[list[dict]], int | None],
        flush_interval: float = 0.2,
        batch_size: int = 500,
        name: str = "usage-writer",
        is_transient: Callable[[Exception], bool] = lambda exc: True,
        dead_letter: Callable[[dict, Exception], None] | None = None,
        retry_delay: float = 1.0,
    ) -> None:
        self._write = write_batch
        self._is_transient = is_transient
        self._dead_letter = dead_letter
        self._retry_delay = retry_delay
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
        """One batch of what is queued; then more only while full batches wait (or when
        stopping). What arrives while a batch is written waits for the next interval: each batch
        has a fixed cost (its transaction, the audit tree's frontier, the commit) of several ms,
        and writing the few records that came in meanwhile at once made batches of ~10 rows."""
        if self._queue:
            self._write_next()
        while self._queue and (self._stopping or len(self._queue) >= self._batch_size):
            self._write_next()

    def _write_next(self) -> None:
        batch = [self._queue.popleft() for _ in range(min(len(self._queue), self._batch_size))]
        self._written += write_reliably(
            self._write, batch, self._is_transient, self._dead_letter, self._retry_delay
        )


def write_reliably(
    write: Callable[[list[dict]], int | None],
    batch: list[dict],
    is_transient: Callable[[Exception], bool],
    dead_letter: Callable[[dict, Exception], None] | None,
    retry_delay: float,
) -> int:
    """Write `batch`, retrying while the failure is transient; when the store refuses it, write
    row by row and dead-letter the rows it refuses (never drop one silently). Returns how many
    rows were written."""
    while True:
        try:
            written = write(batch)  # a writer that dead-letters itself says how many it wrote
            return len(batch) if written is None else written
        except Exception as exc:  # the store is idempotent on request_id: retrying is safe
            if is_transient(exc) or dead_letter is None:
                log.error("usage write failed (%s); retrying", type(exc).__name__)
                time.sleep(retry_delay)
                continue
            if len(batch) == 1:
                log.error("usage record rejected (%s); dead-lettered", type(exc).__name__)
                dead_letter(batch[0], exc)
                return 0
            # find the rows the database refuses
            return sum(write_reliably(write, [r], is_transient, dead_letter, retry_delay) for r in batch)
