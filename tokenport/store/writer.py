"""Batched durable writer: the hot path hands records over; a thread writes them in batches
(in the gateway, by handing each batch to the writer process: `store/writer_process.py`).

With a journal (`store/journal.py`, the gateway's case) each record is appended to it as it is
handed over, and marked settled once committed: a `kill -9` loses nothing handed over, and the
same thread writes, every `recover_interval`, what a dead gateway's journal holds. The batches
then hold the items as the journal pickled them (the writer process unpickles them). A graceful
stop (SIGTERM / SIGINT) drains the queue before exiting.

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

from tokenport.store.journal import Journal, orphans

log = logging.getLogger("tokenport.writer")


class BatchWriter:
    def __init__(
        self,
        write_batch: Callable[[list], int | None],
        flush_interval: float = 0.2,
        batch_size: int = 500,
        name: str = "usage-writer",
        is_transient: Callable[[Exception], bool] = lambda exc: True,
        dead_letter: Callable[[dict, Exception], None] | None = None,
        retry_delay: float = 1.0,
        journal: Journal | None = None,
        recover_interval: float = 2.0,
    ) -> None:
        self._write = write_batch
        self.journal = journal
        self._recover_interval = recover_interval
        self._next_recovery = 0.0
        self.recovered = 0  # records written from dead gateways' journals
        self._is_transient = is_transient
        self._dead_letter = dead_letter
        self._retry_delay = retry_delay
        self._interval = flush_interval
        self._batch_size = batch_size
        self._queue: deque[tuple[dict | bytes, int]] = deque()  # (record, its journal segment)
        self._wake = threading.Event()
        self._stopping = False
        self._written = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, row: dict) -> None:
        """Safe from any thread or the event loop; with a journal, the record is in it (one
        `write(2)` to the page cache) when this returns."""
        if self.journal is None:
            self._queue.append((row, 0))
        else:  # the writer then sends the pickled item: pickled once, here
            segment, pickled = self.journal.append(row)
            self._queue.append((pickled, segment))
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
            if self.journal is not None and time.monotonic() >= self._next_recovery:
                self._recover()
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
        taken = [self._queue.popleft() for _ in range(min(len(self._queue), self._batch_size))]
        self._written += write_reliably(
            self._write, [row for row, _ in taken], self._is_transient, self._dead_letter, self._retry_delay
        )
        if self.journal is not None:  # committed (or dead-lettered): no longer needed there
            self.journal.settled([segment for _, segment in taken])

    def _recover(self) -> None:
        """Write what the journals of gateways that died hold (idempotent: a record their writer
        committed is skipped), then delete them. A dead gateway's writer still finishing its last
        batch holds the journal's lock: its journal waits for the next round."""
        assert self.journal is not None
        self._next_recovery = time.monotonic() + self._recover_interval
        try:
            found = list(orphans(self.journal.root, own=self.journal.dir))
        except OSError as exc:
            log.error("journal recovery could not look for journals: %s", exc)
            return
        for orphan in found:
            try:
                items = orphan.items()
            except Exception as exc:  # unreadable: kept for an operator
                log.error("journal %s unreadable (%s); kept", orphan.dir, type(exc).__name__)
                orphan.release()
                continue
            for at in range(0, len(items), self._batch_size):
                batch = items[at : at + self._batch_size]
                write_reliably(self._write, batch, self._is_transient, self._dead_letter, self._retry_delay)
            orphan.discard()
            self.recovered += len(items)
            log.warning(
                "journal %s: %d records of a gateway that stopped recovered", orphan.dir.name, len(items)
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
