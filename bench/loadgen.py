"""HTTP load generator for OpenAI-compatible chat endpoints.

Open loop (default): send at a fixed rate R for D seconds on an absolute schedule,
never waiting for responses; latency is measured from the *scheduled* send time, so
a slow server cannot hide its queueing (no coordinated omission). Closed loop
(--closed N): N workers send back to back for D seconds (maximum throughput).

    python bench/loadgen.py --url http://127.0.0.1:8000 --rate 100 --duration 10 [--stream]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import sys
import time
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import orjson

PATH = "/v1/chat/completions"
now = time.perf_counter  # uvloop's loop.time() only has millisecond resolution
T = TypeVar("T")


@dataclass
class Result:
    target: str
    mode: str  # "open" or "closed"
    stream: bool
    duration_s: float
    rate: float = 0.0  # requested rate (open loop)
    sent: int = 0
    ok: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, total
    ttfts: list[float] = field(default_factory=list)  # seconds, first content chunk
    errors: Counter[str] = field(default_factory=Counter)
    max_lag_s: float = 0.0  # how far the sender fell behind its schedule
    wall_s: float = 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def summary(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "mode": self.mode,
            "stream": self.stream,
            "rate": self.rate,
            "sent": self.sent,
            "ok": self.ok,
            "errors": dict(self.errors),
            "throughput_rps": round(self.ok / self.wall_s, 1) if self.wall_s else 0.0,
            "max_lag_ms": round(self.max_lag_s * 1000, 2),
            "latency_ms": pcts(self.latencies),
            "ttft_ms": pcts(self.ttfts) if self.stream else None,
        }


def percentile(sorted_vals: list[float], q: float) -> float:
    """Nearest-rank percentile of an already-sorted list (q in 0..100)."""
    if not sorted_vals:
        return float("nan")
    k = max(0, min(len(sorted_vals) - 1, math.ceil(q / 100 * len(sorted_vals)) - 1))
    return sorted_vals[k]


def pcts(vals: list[float]) -> dict[str, float]:
    s = sorted(vals)
    return {f"p{q:g}": round(percentile(s, q) * 1000, 3) for q in (50, 99, 99.9)} | {"n": len(s)}


def request_body(model: str, stream: bool, max_tokens: int = 20) -> bytes:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens}
    body["stream"] = stream
    return orjson.dumps(body)


def _has_content(payload: bytes) -> bool:
    """True when an SSE data payload carries a non-empty content/text token."""
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return False
    for ch in obj.get("choices") or ():
        d = ch.get("delta") or {}
        if d.get("content") or d.get("tool_calls") or ch.get("text"):
            return True
    return False


class Client:
    """Shared session plus the fixed request; one call = one measured request."""

    def __init__(
        self, base_url: str, body: bytes, stream: bool, key: str | None, timeout_s: float, limit: int
    ) -> None:
        # Several base URLs (comma-separated): requests go to them in turn (several gateways).
        self.urls = [u.rstrip("/") + PATH for u in base_url.split(",")]
        self._next = 0
        self.body = body
        self.stream = stream
        self.headers = {"Content-Type": "application/json"}
        if key:
            self.headers["Authorization"] = f"Bearer {key}"
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.limit = limit
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        conn = aiohttp.TCPConnector(limit=self.limit, limit_per_host=0, ttl_dns_cache=None)
        self.session = aiohttp.ClientSession(connector=conn, json_serialize=None, auto_decompress=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.session is not None
        await self.session.close()

    async def one(self, res: Result, t_sched: float) -> None:
        """Send one request; record latency from t_sched (a now() value)."""
        assert self.session is not None
        url = self.urls[self._next % len(self.urls)]
        self._next += 1
        try:
            async with self.session.post(
                url, data=self.body, headers=self.headers, timeout=self.timeout
            ) as r:
                if r.status != 200:
                    await r.read()
                    res.errors[f"http_{r.status}"] += 1
                    return
                if not self.stream:
                    await r.read()
                else:
                    ttft: float | None = None
                    done = False
                    async for line in r.content:
                        if not line.startswith(b"data: "):
                            continue
                        payload = line[6:].strip()
                        if payload == b"[DONE]":
                            done = True
                        elif payload.startswith(b'{"error"'):
                            res.errors["midstream_error"] += 1
                            return
                        elif ttft is None and _has_content(payload):
                            ttft = now() - t_sched
                    if not done:
                        res.errors["truncated"] += 1
                        return
                    if ttft is not None:
                        res.ttfts.append(ttft)
                res.latencies.append(now() - t_sched)
                res.ok += 1
        except TimeoutError:
            res.errors["timeout"] += 1
        except aiohttp.ClientError as exc:
            res.errors[type(exc).__name__] += 1
        except OSError as exc:
            res.errors[type(exc).__name__] += 1


async def open_loop(
    base_url: str,
    rate: float,
    duration: float,
    *,
    stream: bool = False,
    model: str = "mock-model",
    key: str | None = None,
    timeout_s: float = 30.0,
    cap: int = 2000,
    max_tokens: int = 20,
    target: str = "",
) -> Result:
    """Constant-rate arrivals; requests over `cap` in flight are dropped and counted as errors."""
    res = Result(target or base_url, "open", stream, duration, rate=rate)
    body = request_body(model, stream, max_tokens)
    async with Client(base_url, body, stream, key, timeout_s, cap) as cl:
        n = int(rate * duration)
        inflight: set[asyncio.Task[None]] = set()
        t0 = now() + 0.01
        for i in range(n):
            t_sched = t0 + i / rate
            delay = t_sched - now()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                res.max_lag_s = max(res.max_lag_s, -delay)
            res.sent += 1
            if len(inflight) >= cap:
                res.errors["dropped_cap"] += 1
                continue
            task = asyncio.ensure_future(cl.one(res, min(t_sched, now())))  # timers may fire early
            inflight.add(task)
            task.add_done_callback(inflight.discard)
        if inflight:  # each request has its own timeout; this is a backstop
            _, pending = await asyncio.wait(inflight, timeout=timeout_s + 5)
            for t in pending:
                t.cancel()
                res.errors["abandoned"] += 1
        res.wall_s = now() - t0
    return res


async def closed_loop(
    base_url: str,
    workers: int,
    duration: float,
    *,
    stream: bool = False,
    model: str = "mock-model",
    key: str | None = None,
    timeout_s: float = 30.0,
    max_tokens: int = 20,
    target: str = "",
) -> Result:
    """N workers, each sending back to back until the deadline."""
    res = Result(target or base_url, "closed", stream, duration)
    body = request_body(model, stream, max_tokens)
    async with Client(base_url, body, stream, key, timeout_s, workers) as cl:
        t0 = now()
        deadline = t0 + duration

        async def worker() -> None:
            while (t := now()) < deadline:
                res.sent += 1
                await cl.one(res, t)

        await asyncio.gather(*(worker() for _ in range(workers)))
        res.wall_s = now() - t0
    return res


def format_result(r: Result) -> str:
    s = r.summary()
    lat = s["latency_ms"]
    line = (
        f"{r.target} {r.mode} stream={r.stream} sent={r.sent} ok={r.ok} err={dict(r.errors)} "
        f"rps={s['throughput_rps']} lat p50={lat['p50']}ms p99={lat['p99']}ms p99.9={lat['p99.9']}ms"
    )
    if r.stream:
        t = s["ttft_ms"]
        line += f" ttft p50={t['p50']}ms p99={t['p99']}ms"
    return line + f" max_lag={s['max_lag_ms']}ms"


def run(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on uvloop when it is installed."""
    factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:8000")
    ap.add_argument("--rate", type=float, default=100.0, help="requests/s (open loop)")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds")
    ap.add_argument("--closed", type=int, default=0, metavar="N", help="closed loop with N workers")
    ap.add_argument("--stream", action="store_true")
    ap.add_argument("--model", default="mock-model")
    ap.add_argument("--key", default=None, help="API key (Authorization: Bearer)")
    ap.add_argument("--max-tokens", type=int, default=20)
    ap.add_argument("--timeout", type=float, default=30.0, help="per-request timeout, s")
    ap.add_argument("--cap", type=int, default=2000, help="max requests in flight (open loop)")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    a = ap.parse_args(argv)
    if not a.url.startswith(("http://127.0.0.1", "http://localhost")):
        ap.error("only loopback targets are allowed")
    common = {
        "stream": a.stream,
        "model": a.model,
        "key": a.key,
        "timeout_s": a.timeout,
        "max_tokens": a.max_tokens,
    }
    if a.closed:
        res = run(closed_loop(a.url, a.closed, a.duration, **common))
    else:
        res = run(open_loop(a.url, a.rate, a.duration, cap=a.cap, **common))
    print(orjson.dumps(res.summary()).decode() if a.json else format_result(res))
    sys.stdout.flush()
    return 0 if res.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
