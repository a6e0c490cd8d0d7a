"""The settlement side's database work, in a process of its own.

In one process the event loop and a writer thread (SQLAlchemy, audit hashing, ledger rows,
energy shares) share the GIL: each time the loop makes a system call the writer takes the GIL
and keeps it for up to the switch interval (5 ms), so the writer's work set the gateway's latency
tails under load. Here the gateway's `BatchWriter` thread only pickles each batch, sends it down
a pipe and waits, with the GIL released, for the child to acknowledge the commit. The child
writes with the same idempotent, retrying code the thread used (`write_reliably` over
`UsageStore`); the energy meter's allocated windows travel in the same batches (items with an
`energy` key, written by `MeterStore.write`). It runs at a lower priority (nice 10): background
work yields the core to the request path.

Nothing is lost when the gateway is killed: each record was journaled before its answer's last
bytes (`store/journal.py`); the child still writes what it received, then exits, holding the
journal's lock until then, and whoever recovers the journal skips what it wrote. A child that
dies is started again and the unacknowledged batch sent again: request ids and window ids make
that harmless.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from tokenport import logs

log = logging.getLogger("tokenport.writer")

CLOSE = b""  # the gateway's last message: write nothing more, exit
NICENESS = 10


@dataclass(frozen=True)
class WriterSpec:
    """What the child needs to open the stores itself (nothing live crosses the pipe)."""

    database_url: str
    redis_url: str | None
    dead_letter: Path
    log_level: str = "info"
    retry_delay: float = 1.0


class WriterDied(Exception):
    """The child went away before acknowledging a batch: the batch is retried on a new child."""


class WriterProcess:
    def __init__(self, spec: WriterSpec, poll_s: float = 0.5) -> None:
        self.spec = spec
        self._poll = poll_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._lock = threading.Lock()  # one exchange at a time
        self.restarts = 0
        self.hold_fds: tuple[int, ...] = ()  # kept open in the child (the journal's lock)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """A fresh interpreter (the gateway has threads: never fork), one end of a socket pair;
        the spec is its first message (URLs may hold passwords: not on the command line)."""
        parent, child = socket.socketpair()
        spec = json.dumps({**asdict(self.spec), "dead_letter": str(self.spec.dead_letter)})
        package_root = str(Path(__file__).resolve().parents[2])
        path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tokenport.store.writer_process", str(child.fileno())],
            pass_fds=[child.fileno(), *self.hold_fds],
            stdin=subprocess.DEVNULL,
            stderr=logs.real_stderr(),  # not the engine console's pipe (tokenport/logs.py)
            env={**os.environ, "PYTHONPATH": path},
        )
        child.close()
        self._conn = Connection(parent.detach())
        self._conn.send_bytes(spec.encode())

    def write(self, batch: list) -> int:
        """Items with a `usage` key (see `UsageStore.write_settlements`) or an `energy` key (an
        allocated window), or such items pickled (by the journal), committed by the child; how
        many usage records it wrote (the rest were dead-lettered). Raises WriterDied if the
        child is gone: the caller sends it again."""
        with self._lock:
            if self._proc is not None and self._proc.poll() is not None:
                log.error("writer process exited (code %s); starting another", self._proc.returncode)
                self.restarts += 1
                self._discard()
            if self._proc is None:
                self.start()
            assert self._conn is not None and self._proc is not None
            try:
                self._conn.send_bytes(pickle.dumps(batch, pickle.HIGHEST_PROTOCOL))
                while not self._conn.poll(self._poll):
                    if self._proc.poll() is not None:
                        raise EOFError
                answer = self._conn.recv_bytes()
            except (EOFError, OSError) as exc:
                raise WriterDied("writer process went away") from exc
        return int(answer)

    def close(self, timeout: float = 60.0) -> None:
        """Ask the child to exit (after the batch it is writing, if any) and wait for it."""
        with self._lock:
            if self._proc is None:
                return
            try:
                assert self._conn is not None
                self._conn.send_bytes(CLOSE)
            except OSError:
                pass
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.error("writer process did not exit; terminating it")
                self._proc.terminate()
                self._proc.wait(5)
            self._discard()

    def _discard(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None
        self._proc = None


def is_transient(exc: Exception) -> bool:
    return isinstance(exc, WriterDied)


def serve(conn: Connection, spec: WriterSpec) -> None:
    """The child: write each batch, acknowledge it, until CLOSE or the gateway's end of the pipe
    closes. Ctrl-C in a terminal reaches the whole process group: the gateway drains and says
    when to stop, so the child ignores it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.nice(NICENESS)
    from tokenport.store.db import connect
    from tokenport.store.journal import unpickled
    from tokenport.store.meter_store import MeterStore
    from tokenport.store.usage import DeadLetterFile, UsageStore
    from tokenport.store.usage import is_transient as db_transient
    from tokenport.store.writer import write_reliably

    logs.configure(spec.log_level)
    engine = connect(spec.database_url)
    store = UsageStore(engine)
    if spec.redis_url:
        from tokenport.store.redis_state import RedisState

        store.mirror = RedisState(spec.redis_url, engine)
    settle = store.write_settlements
    energy = MeterStore(engine)
    dead_letter = DeadLetterFile(spec.dead_letter)

    def windows(items: list[dict]) -> None:
        energy.write([i["energy"] for i in items])

    def write(batch: list[dict]) -> int:
        usage = [i for i in batch if "usage" in i]
        written = write_reliably(settle, usage, db_transient, dead_letter, spec.retry_delay) if usage else 0
        if allocated := [i for i in batch if "energy" in i]:
            write_reliably(windows, allocated, db_transient, dead_letter, spec.retry_delay)
        return written

    try:
        while True:
            try:
                msg = conn.recv_bytes()
            except (EOFError, OSError):
                break  # the gateway is gone: nothing more will come
            if msg == CLOSE:
                break
            written = write(unpickled(pickle.loads(msg)))
            try:
                conn.send_bytes(b"%d" % written)
            except OSError:
                break
    finally:
        if store.mirror is not None:
            store.mirror.sync.close()
        engine.dispose()


if __name__ == "__main__":  # started by WriterProcess.start, with its end of the socket pair
    gateway = Connection(int(sys.argv[1]))
    raw = json.loads(gateway.recv_bytes())
    serve(gateway, WriterSpec(**{**raw, "dead_letter": Path(raw["dead_letter"])}))
