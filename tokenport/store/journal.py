"""The settlement journal: each settled request is appended to a local file before the client
gets the last bytes of its answer, so that a crash of the gateway loses nothing delivered.

Layout: `<root>/<instance>/` per gateway process, holding numbered segment files and a `lock`
file. The gateway holds an exclusive `flock` on `lock` while it lives, and so does its writer
process (it inherits the descriptor): a lock that can be taken means that nobody is left to write
the directory's items. Any gateway sharing the root then recovers them (`orphans`) through its
own writer, and deletes the directory. The fence follows: a dead gateway's writer still
committing its last batch holds the lock, so its items are replayed only after it has gone.

Each item is one frame, `length, crc32, pickle`, written with one `write(2)` to a file opened
with O_APPEND: a killed process leaves whole frames (the page cache outlives it); a machine
crash can tear the last frame written since the last `fdatasync` (every `fsync_interval`), which
recovery skips. A segment is deleted once all its items have been committed.
"""

from __future__ import annotations

import fcntl
import logging
import os
import pickle
import secrets
import shutil
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("tokenport.journal")

_FRAME = struct.Struct("<II")  # payload length, crc32 of the payload
SEGMENT_BYTES = 8 << 20
LOCK = "lock"


def _segment_name(n: int) -> str:
    return f"{n:08d}.log"


class Journal:
    """Appends from the event loop (one system call each); `settled` from the writer thread."""

    def __init__(self, root: Path, fsync_interval: float = 0.2, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.root = root
        self.dir = root / f"{os.getpid()}-{secrets.token_hex(4)}"
        self._fsync_interval = fsync_interval
        self._segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._pending: dict[int, int] = {}  # segment -> items appended and not yet committed
        self._segment = 0
        self._fd = -1
        self._size = 0
        self._lock_fd = -1
        self._stop = threading.Event()
        self._syncer = threading.Thread(target=self._sync_loop, name="journal-fsync", daemon=True)

    @property
    def lock_fd(self) -> int:
        """Passed to the writer process, so that the lock outlives a killed gateway until the
        writer has finished too."""
        return self._lock_fd

    def open(self) -> None:
        """Made under a hidden name and renamed once locked: another gateway's `orphans` never
        sees it unlocked."""
        making = self.root / f".{self.dir.name}"
        making.mkdir(parents=True)
        self._lock_fd = os.open(making / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        making.rename(self.dir)
        self._rotate()
        self._syncer.start()

    def append(self, item: dict) -> tuple[int, bytes]:
        """Write one item; returns its segment (pass it to `settled` once committed) and the item
        pickled (the writer process takes it as it is: pickled once)."""
        data = pickle.dumps(item, pickle.HIGHEST_PROTOCOL)
        frame = _FRAME.pack(len(data), zlib.crc32(data)) + data
        with self._lock:
            if self._size >= self._segment_bytes:
                self._rotate()
            os.write(self._fd, frame)
            self._size += len(frame)
            self._pending[self._segment] += 1
            return self._segment, data

    def settled(self, segments: list[int]) -> None:
        """These items are committed: a segment no longer written to, with nothing pending, goes."""
        with self._lock:
            for seg in segments:
                self._pending[seg] -= 1
            done = [s for s, n in self._pending.items() if n == 0 and s != self._segment]
            for seg in done:
                del self._pending[seg]
        for seg in done:
            (self.dir / _segment_name(seg)).unlink(missing_ok=True)

    def close(self) -> None:
        """After the writer drained: with nothing pending the directory goes; otherwise it stays
        for the next gateway to recover."""
        self._stop.set()
        if self._syncer.is_alive():
            self._syncer.join(5)
        with self._lock:
            if self._fd >= 0:
                os.fdatasync(self._fd)
                os.close(self._fd)
                self._fd = -1
            left = sum(self._pending.values())
        if left:
            log.error("journal closed with %d items not committed: kept in %s", left, self.dir)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # the writer process has exited: the lock is released
            self._lock_fd = -1

    def _rotate(self) -> None:
        if self._fd >= 0:
            os.fdatasync(self._fd)  # rare (every segment_bytes): the old segment is whole on disk
            os.close(self._fd)
            if self._pending.get(self._segment) == 0:
                del self._pending[self._segment]
                (self.dir / _segment_name(self._segment)).unlink(missing_ok=True)
        self._segment += 1
        path = self.dir / _segment_name(self._segment)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._size = 0
        self._pending[self._segment] = 0

    def _sync_loop(self) -> None:
        """Bounds what a machine crash can lose to one interval; the appends never wait for it."""
        while not self._stop.wait(self._fsync_interval):
            with self._lock:
                fd = os.dup(self._fd) if self._fd >= 0 else -1
            if fd >= 0:
                try:
                    os.fdatasync(fd)
                finally:
                    os.close(fd)


def read_items(directory: Path) -> Iterator[bytes]:
    """Every whole item in a directory's segments, pickled, in order; a torn or corrupt tail is
    skipped."""
    for path in sorted(directory.glob("*.log")):
        data = path.read_bytes()
        at = 0
        while at + _FRAME.size <= len(data):
            length, crc = _FRAME.unpack_from(data, at)
            payload = data[at + _FRAME.size : at + _FRAME.size + length]
            if len(payload) < length or zlib.crc32(payload) != crc:
                log.error("journal %s: a torn item at byte %d skipped (a machine crash)", path, at)
                break
            yield payload
            at += _FRAME.size + length


def unpickled(items: list) -> list[dict]:
    """A batch as the writer process receives it: items, or items pickled by `Journal.append`."""
    return [pickle.loads(i) if isinstance(i, bytes) else i for i in items]


class Orphan:
    """A journal directory nobody writes any more, locked by us until `discard`."""

    def __init__(self, directory: Path, lock_fd: int) -> None:
        self.dir = directory
        self._lock_fd = lock_fd

    def items(self) -> list[bytes]:
        """Pickled, as the writer process takes them (`unpickled` reads them)."""
        return list(read_items(self.dir))

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        os.close(self._lock_fd)

    def release(self) -> None:
        os.close(self._lock_fd)


def orphans(root: Path, own: Path | None = None) -> Iterator[Orphan]:
    """Directories of gateways (and their writers) that are gone: their locks can be taken."""
    if not root.is_dir():
        return
    found = (p for p in root.iterdir() if p.is_dir() and p != own and not p.name.startswith("."))
    for directory in sorted(found):
        try:
            fd = os.open(directory / LOCK, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:  # being created (or removed): next time
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)  # alive
            continue
        if not (directory / LOCK).exists():  # removed between open and lock: already recovered
            os.close(fd)
            continue
        yield Orphan(directory, fd)
