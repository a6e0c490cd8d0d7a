"""Live processes for tests: a real `tokenport serve` and a mock engine, on loopback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ADMIN_TOKEN = "test-admin-token"
# The models the tests use: free ones (metering and protocol tests need no credit) and one priced
# model for billing tests: $0.30 / M input, $0.03 / M cached, $1.20 / M output.
PAID_MODEL_PRICE = ["--input", "0.30", "--cached", "0.03", "--output", "1.20"]
DEFAULT_PRICES = {
    "smollm2-135m-instruct": ["--free"],
    "mock-model": ["--free"],
    "domestic-model": ["--free"],
    "mock-tools": ["--free"],
    "mock-midfail": ["--free"],
    "mock-think": ["--free"],
    "mock-embed": PAID_MODEL_PRICE,
    "paid-model": PAID_MODEL_PRICE,
}
VENV_BIN = Path(sys.executable).parent
TOKENPORT = str(VENV_BIN / "tokenport")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def to_toml(data: dict) -> str:
    """Enough TOML for tokenport configs: tables of scalars, lists and inline tables, and arrays
    of tables."""

    def val(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list | tuple):
            return "[" + ", ".join(val(x) for x in v) + "]"
        if isinstance(v, dict):  # an inline table
            return "{ " + ", ".join(f"{json.dumps(k)} = {val(x)}" for k, x in v.items()) + " }"
        raise TypeError(v)

    out: list[str] = []
    for name, section in data.items():
        for table in section if isinstance(section, list) else [section]:
            out.append(f"[[{name}]]" if isinstance(section, list) else f"[{name}]")
            out += [f"{k} = {val(v)}" for k, v in table.items()]
            out.append("")
    return "\n".join(out)


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


@dataclass
class LiveServer:
    home: Path
    port: int
    env: dict[str, str]
    proc: subprocess.Popen
    log_path: Path
    engine_port: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def engine_url(self) -> str:
        return f"http://127.0.0.1:{self.engine_port}"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        res = subprocess.run([TOKENPORT, *args], env=self.env, capture_output=True, text=True, timeout=60)
        if check and res.returncode != 0:
            raise AssertionError(f"tokenport {' '.join(args)} failed: {res.stderr}")
        return res

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)

    def new_key(self, tenant: str, zone: str | None = None, rpm: int | None = None) -> tuple[str, str]:
        """(key id, secret); creates the tenant if needed."""
        if not any(t["name"] == tenant for t in self.cli_json("tenants", "list")):
            self.cli("tenants", "create", tenant, *(["--zone", zone] if zone else []))
        key = self.cli_json("keys", "create", "--tenant", tenant, *(["--rpm", str(rpm)] if rpm else []))
        self.wait_key_accepted(key["key"])
        return key["id"], key["key"]

    def key_status(self, secret: str) -> int:
        req = urllib.request.Request(
            self.base_url + "/v1/models", headers={"Authorization": f"Bearer {secret}"}
        )
        try:
            with urllib.request.urlopen(req, timeout=2) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    def wait_key_status(self, secret: str, status: int, timeout: float = 1.0) -> float:
        """Seconds until the running server answers `status` for a key changed out of process."""
        t0 = time.monotonic()
        wait_until(lambda: self.key_status(secret) == status, timeout, 0.02, f"key status {status}")
        return time.monotonic() - t0

    def wait_key_accepted(self, secret: str, timeout: float = 1.0) -> float:
        return self.wait_key_status(secret, 200, timeout)

    def usage(self, tenant: str | None = None) -> dict:
        return self.cli_json("usage", *(["--tenant", tenant] if tenant else []), "--limit", "100000")

    def record(self, request_id: str, timeout: float = 5.0) -> dict:
        """The usage record of one request, waiting for the batched writer."""

        def find():
            return next((r for r in self.usage()["data"] if r["request_id"] == request_id), None)

        return wait_until(find, timeout, 0.1, f"usage record {request_id}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def verify_ledger(self) -> None:
        """`tokenport ledger verify` and `tokenport audit verify` on the server's database: every
        invariant still holds after the tests that ran against it."""
        for what in ("ledger", "audit"):
            res = self.cli(what, "verify", check=False)
            assert res.returncode == 0, f"{what} verify failed after the tests:\n{res.stdout}{res.stderr}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(
    home: Path,
    config: dict,
    env_extra: dict[str, str] | None = None,
    ready_timeout: float = 180,
    wait_healthy: bool = True,
    prices: dict[str, list[str]] | None = None,
) -> LiveServer:
    """`tokenport serve` in `home`, once healthy; `prices` (default: DEFAULT_PRICES) are set first."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cfg = {"server": {"admin_token": ADMIN_TOKEN, "health_interval_s": 0.5}, **config}
    # Tests poll with wrong and revoked keys from one address: throttling is off unless asked for.
    cfg.setdefault("limits", {}).setdefault("auth_failures_per_minute", 0)
    engine = cfg.setdefault("engine", {})
    engine_port = None
    if engine.get("enabled", True):
        engine_port = engine.setdefault("port", free_port())
    (home / "tokenport.toml").write_text(to_toml(cfg))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENPORT_")}
    env.update({"TOKENPORT_HOME": str(home), **(env_extra or {})})
    for model, args in (
        DEFAULT_PRICES if prices is None else prices
    ).items():  # the price book, before the server starts
        subprocess.run([TOKENPORT, "prices", "set", model, *args], env=env, check=True, capture_output=True)
    log_path = home / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [TOKENPORT, "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    server = LiveServer(home, port, env, proc, log_path, engine_port)

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}):\n{server.log()}")
        try:
            status, body = http_get(server.base_url + "/health")
        except OSError:
            return False
        server.extra.setdefault("first_health", (status, json.loads(body).get("status")))
        return status == 200 or (not wait_healthy and status == 503)

    try:
        wait_until(ready, ready_timeout, 0.1, "server health")
    except BaseException:
        server.stop(signal.SIGKILL)
        raise
    return server


@dataclass
class MockProcess:
    proc: subprocess.Popen
    url: str

    def stats(self) -> dict:
        return json.loads(http_get(self.url + "/mock/stats")[1])

    def reset(self) -> None:
        urllib.request.urlopen(urllib.request.Request(self.url + "/mock/reset", method="POST"), timeout=2)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def start_mock(*args: str) -> MockProcess:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokenport.testing.mock_engine", "--port", "0", *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline().strip()
    if not line.startswith("READY "):
        proc.kill()
        raise RuntimeError(f"mock engine did not start: {line!r}")
    return MockProcess(proc, line.split(" ", 1)[1])


def mock_config(mock_url: str) -> dict:
    """Gateway config over the mock: one live backend, one dead one, one in another zone."""
    return {
        "engine": {"enabled": False},
        "backends": [
            {
                "name": "mock",
                "url": mock_url,
                "models": [
                    *("mock-model", "paid-model", "mock-tools", "mock-embed", "mock-midfail"),
                    "mock-think",
                ],
                "kind": "llamacpp",
                "embeddings": ["mock-embed"],
            },
            {"name": "dead", "url": f"http://127.0.0.1:{free_port()}", "models": ["dead-model"]},
            {"name": "dom", "url": mock_url, "zone": "domestic", "models": ["domestic-model"]},
        ],
    }


def two_gateways(
    root: Path, config: dict, env: dict[str, str], mode: str
) -> Iterator[tuple[LiveServer, LiveServer]]:
    """Two `tokenport serve` processes on one shared database (`env`'s URL), the second without
    setting prices again; both stopped cleanly afterwards, and the ledger verified."""
    a = start_server(root / "a", json.loads(json.dumps(config)), env)
    try:
        b = start_server(root / "b", json.loads(json.dumps(config)), env, prices={})
    except BaseException:
        a.stop()
        raise
    a.extra["mode"] = mode
    yield a, b
    for server in (a, b):
        assert server.stop() == 0, server.log()
    a.verify_ledger()
