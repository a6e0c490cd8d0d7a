"""The embedded engine: llama.cpp's own HTTP server, run in-process by xllamacpp on loopback.

The gateway speaks to it over HTTP like any other backend; nothing here is on the request path.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tokenport.config import BackendConfig, EngineConfig
from tokenport.engines.model_fetch import ensure_default_model

log = logging.getLogger("tokenport.engine")

# llama.cpp log verbosity: 1 = errors only. Never above 3: debug output can quote prompts.
ENGINE_VERBOSITY = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedEngine:
    def __init__(self, cfg: EngineConfig, zone: str, say: Callable[[str], None] = print) -> None:
        self.cfg = cfg
        self.port = cfg.port or free_port()
        self.say = say
        self.backend_config = BackendConfig(
            name="embedded",
            url=f"http://127.0.0.1:{self.port}",
            zone=zone,
            models=(cfg.model_id,),
            kind="llamacpp",
            context=cfg.n_ctx,
        )
        self.ready = asyncio.Event()
        self.failed: BaseException | None = None
        self._server = None

    def model_path(self) -> Path:
        if self.cfg.model_path:
            path = Path(self.cfg.model_path).expanduser()
            if not path.exists():
                raise FileNotFoundError(f"engine.model_path does not exist: {path}")
            return path
        return ensure_default_model(self.cfg.model_cache, log=self.say)

    def _load(self) -> None:
        import xllamacpp as xlc  # heavy import, done off the event loop

        path = self.model_path()
        size_mb = path.stat().st_size / 1e6
        p = xlc.CommonParams()
        p.model.path = str(path)
        p.model_alias = {self.cfg.model_id}
        p.n_ctx = self.cfg.n_ctx * self.cfg.parallel  # llama.cpp splits n_ctx across slots
        p.n_parallel = self.cfg.parallel
        threads = self.cfg.threads or os.cpu_count() or 1
        p.cpuparams.n_threads = threads
        p.cpuparams_batch.n_threads = threads
        p.hostnames = ["127.0.0.1"]
        p.port = self.port
        p.endpoint_metrics = True
        p.offline = True  # never reach a model hub
        p.verbosity = ENGINE_VERBOSITY
        self.say(f"Loading {self.cfg.model_id} from {path.name} ({size_mb:.0f} MB, {threads} threads)...")
        self._server = xlc.Server(p)

    async def start(self) -> None:
        """Load in a thread, showing progress; `ready` is set once the engine answers."""
        loop = asyncio.get_running_loop()
        t0 = time.monotonic()
        done = asyncio.Event()

        def run() -> None:
            try:
                self._load()
            except BaseException as exc:
                self.failed = exc
            finally:
                loop.call_soon_threadsafe(done.set)

        threading.Thread(target=run, name="engine-load", daemon=True).start()
        while not done.is_set():
            try:
                await asyncio.wait_for(done.wait(), timeout=5)
            except TimeoutError:
                self.say(f"  still loading... {time.monotonic() - t0:.0f} s")
        if self.failed is not None:
            self.say(f"Embedded engine failed to start: {self.failed}")
            return
        self.say(f"Embedded engine ready in {time.monotonic() - t0:.1f} s on {self.backend_config.url}")
        self.ready.set()

    def state(self) -> dict:
        if self.failed is not None:
            return {"state": "failed", "model": self.cfg.model_id, "error": str(self.failed)}
        return {"state": "ready" if self.ready.is_set() else "loading", "model": self.cfg.model_id}

    def stop(self) -> None:
        self._server = None  # llama.cpp's server stops in its destructor
