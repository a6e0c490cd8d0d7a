"""Throwaway Redis server for the test-suite.

``start_redis(base_dir)`` starts ``redis-server`` on a free port on 127.0.0.1 with no persistence
and returns a :class:`RedisServer`; ``stop()`` ends it. Each test takes a database number of its
own (``fresh_url``), so tests never see each other's keys. If TOKENPORT_TEST_REDIS_URL is set, no
server is started and that one is used.
"""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

ENV_URL = "TOKENPORT_TEST_REDIS_URL"
DATABASES = 4096
READY_TIMEOUT_S = 15.0


class RedisUnavailable(RuntimeError):
    """redis-server is not installed."""


@dataclass
class RedisServer:
    url: str  # redis://127.0.0.1:PORT (database 0)
    proc: subprocess.Popen | None = None
    _numbers: itertools.count = field(default_factory=lambda: itertools.count(1))
    argv: list[str] = field(default_factory=list)

    def crash(self) -> None:
        """Killed, as a crash would (nothing saved: its state is gone); `restart` starts it again."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def restart(self) -> None:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        _wait_until_ready(self.url, self.proc)

    def fresh_url(self) -> str:
        """A URL on a database number nobody used yet, emptied first."""
        n = next(self._numbers)
        if n >= DATABASES:
            raise RuntimeError("out of Redis databases for this test session")
        url = f"{self.url.rstrip('/')}/{n}"
        client = redis.Redis.from_url(url)
        client.flushdb()
        client.close()
        return url

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def start_redis(base_dir: Path) -> RedisServer:
    if url := os.environ.get(ENV_URL):
        _wait_until_ready(url)
        return RedisServer(url)
    binary = shutil.which("redis-server")
    if binary is None:
        raise RedisUnavailable("redis-server not found on PATH; run scripts/ensure-redis or set " + ENV_URL)
    base_dir.mkdir(parents=True, exist_ok=True)
    last = ""
    for _ in range(3):  # another process may take the free port before the server binds it
        port = _free_port()
        log = base_dir / f"redis-{port}.log"
        argv = [
            binary,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--databases", str(DATABASES),
            "--dir", str(base_dir),
            "--logfile", str(log),
        ]  # fmt: skip
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        server = RedisServer(f"redis://127.0.0.1:{port}", proc, argv=argv)
        atexit.register(server.stop)
        try:
            _wait_until_ready(server.url, proc)
            return server
        except RuntimeError as exc:
            last = str(exc) + (log.read_text(errors="replace")[-2000:] if log.exists() else "")
            server.stop()
    raise RuntimeError(f"could not start Redis:\n{last}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_ready(url: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    client = redis.Redis.from_url(url, socket_timeout=1)
    try:
        while True:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"redis-server exited ({proc.returncode})")
            try:
                client.ping()
                return
            except redis.ConnectionError as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Redis at {url} not answering: {exc}") from exc
                time.sleep(0.05)
    finally:
        client.close()
