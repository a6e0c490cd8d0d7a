"""The embedded engine under load: tokens/s at 1 and 4 concurrent streams, straight to the engine,
through the governed gateway, and on llama-cpp-python's own server with the same GGUF.

    python bench/engine.py [--duration 15] [--rounds 2] [--max-tokens 128] [--streams 1,4]
                           [--no-llamacpp-python]

Starts `tokenport serve` with the embedded engine (xllamacpp, 4 slots, continuous batching) on a
fixed loopback port and a governed tenant (priced model, prepaid credit), and, when
`bench/.llamacpp-venv` exists, `python -m llama_cpp.server` on the same model file (build that
environment once: bench/README.md). Each cell runs N workers sending streaming requests back to
back for `--duration` seconds (requests that started finish); targets alternate within a round.
Tokens are the engine's own completion counts (`usage` in the last chunk; content chunks where an
engine sends none). The gateway's usage records must match the tokens its clients saw.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_bench as rb

from tokenport.config import EngineConfig
from tokenport.engines.model_fetch import ensure_default_model

LLAMACPP_VENV = rb.ROOT / "bench" / ".llamacpp-venv"
PROMPT = "Write a long story about a lighthouse keeper and a storm."
now = time.perf_counter


@dataclass
class Cell:
    target: str
    streams: int
    tokens: int = 0
    requests: int = 0
    wall_s: float = 0.0
    ttfts: list[float] = field(default_factory=list)
    decode_rates: list[float] = field(default_factory=list)  # tokens/s after the first, per request
    errors: int = 0
    first_error: str = ""

    @property
    def tps(self) -> float:
        return self.tokens / self.wall_s if self.wall_s else 0.0


def body(model: str, max_tokens: int) -> bytes:
    return orjson.dumps({
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,  # llama.cpp: always max_tokens, so every request does the same work
        "logit_bias": {"2": -100},  # the same elsewhere: token 2 is SmolLM2's end of turn
        "stream": True,
        "stream_options": {"include_usage": True},
    })  # fmt: skip


async def stream_once(
    session: aiohttp.ClientSession, url: str, headers: dict, data: bytes
) -> tuple[int, float, float]:
    """(completion tokens, time to first token, total time) of one streamed request."""
    t0 = now()
    ttft, usage, chunks, done = None, None, 0, False
    headers = {"Content-Type": "application/json", **headers}
    async with session.post(url + "/v1/chat/completions", data=data, headers=headers) as r:
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {(await r.read())[:300]!r}")
        async for line in r.content:
            if not line.startswith(b"data: "):
                continue
            payload = line[6:].strip()
            if payload == b"[DONE]":
                done = True
                break
            obj = orjson.loads(payload)
            if obj.get("usage"):
                usage = obj["usage"].get("completion_tokens")
            for ch in obj.get("choices") or ():
                if (ch.get("delta") or {}).get("content"):
                    chunks += 1
                    if ttft is None:
                        ttft = now() - t0
    if not done:
        raise RuntimeError("the stream ended without [DONE]")
    return (usage or chunks), (ttft if ttft is not None else now() - t0), now() - t0


async def measure(target: str, url: str, headers: dict, data: bytes, streams: int, duration: float) -> Cell:
    cell = Cell(target, streams)
    timeout = aiohttp.ClientTimeout(total=300)
    # a new connection per request, for every target: llama.cpp's server drops idle keep-alive
    # connections, which aiohttp finds out only when it writes the next request
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        deadline = now() + duration

        async def worker() -> None:
            while now() < deadline:
                try:
                    n, ttft, total = await stream_once(session, url, headers, data)
                except (RuntimeError, aiohttp.ClientError, TimeoutError) as exc:
                    cell.errors += 1
                    cell.first_error = cell.first_error or repr(exc)[:200]
                    await asyncio.sleep(0.5)
                    continue
                cell.tokens += n
                cell.requests += 1
                cell.ttfts.append(ttft)
                if n > 1 and total > ttft:
                    cell.decode_rates.append((n - 1) / (total - ttft))

        t0 = now()
        await asyncio.gather(*(worker() for _ in range(streams)))
        cell.wall_s = now() - t0
    return cell


def start_llamacpp_python(
    home: Path, model: Path, alias: str, port: int, threads: int
) -> subprocess.Popen[bytes]:
    log = open(home / "llama-cpp-python.log", "wb")  # noqa: SIM115 - lives as long as the process
    cmd = [
        str(LLAMACPP_VENV / "bin" / "python"), "-m", "llama_cpp.server", "--model", str(model),
        "--model_alias", alias, "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096",
        "--n_threads", str(threads), "--n_threads_batch", str(threads), "--verbose", "False",
        "--interrupt_requests", "False",  # queue concurrent requests (the default cuts the running one)
    ]  # fmt: skip
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


async def ready(
    url: str, headers: dict, data: bytes, proc: subprocess.Popen, limit_s: float
) -> tuple[int, int]:
    """Poll one streamed request until it succeeds: its completion tokens, and the attempts."""
    deadline, attempts = now() + limit_s, 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        while now() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{url}: the process exited with {proc.returncode}")
            attempts += 1
            try:
                return (await stream_once(session, url, headers, data))[0], attempts
            except (RuntimeError, aiohttp.ClientError, OSError, TimeoutError):
                await asyncio.sleep(1)
    raise RuntimeError(f"{url} did not answer a streamed request within {limit_s:.0f} s")


def report(cells: list[Cell], versions: str, check: str) -> str:
    by: dict[tuple[str, int], list[Cell]] = {}
    for c in cells:
        by.setdefault((c.target, c.streams), []).append(c)

    def tps(target: str, n: int) -> float:
        cs = by.get((target, n), [])
        return sum(c.tokens for c in cs) / sum(c.wall_s for c in cs) if cs else float("nan")

    out = [f"Embedded engine benchmark ({versions})", ""]
    out += [
        "| target | streams | tokens/s, all streams | decode tokens/s per stream, p50 | TTFT p50 ms "
        "| requests | errors |"
    ]
    out += ["|---|---:|---:|---:|---:|---:|---:|"]
    for (target, n), cs in by.items():
        rates = [r for c in cs for r in c.decode_rates]
        ttfts = [t for c in cs for t in c.ttfts]
        out.append(
            f"| {target} | {n} | {tps(target, n):.1f} | {statistics.median(rates) if rates else 0:.1f} | "
            f"{1000 * statistics.median(ttfts) if ttfts else 0:.1f} | {sum(c.requests for c in cs)} | "
            f"{sum(c.errors for c in cs)} |"
        )
    streams = sorted({n for _, n in by})
    out.append("")
    for target in dict.fromkeys(t for t, _ in by):
        if len(streams) > 1:
            lo, hi = streams[0], streams[-1]
            ratio = tps(target, hi) / tps(target, lo)
            out.append(f"- {target}: {hi} streams give {ratio:.2f}x the tokens/s of {lo}")
    for n in streams:
        d, g = tps("engine direct", n), tps("gateway (governed)", n)
        out.append(f"- gateway cost at {n} stream(s): {100 * (1 - g / d):+.1f}% of the engine's own tokens/s")
    out.append(check)
    return "\n".join(out)


def metering(home: Path, cfg: Path, seen: int, requests: int) -> str:
    """Usage records (every attempt, failed ones too) and completion tokens against the clients'."""
    got = rb.cli_json(home, "usage", "--tenant", "bench", "--limit", "1", "--config", str(cfg), "--json")
    got = got["totals"]
    exact = got.get("completion_tokens") == seen and got.get("requests") == requests
    verdict = "exact match" if exact else f"MISMATCH: the clients saw {requests} requests, {seen} tokens"
    return (
        f"- metering check: gateway recorded {got.get('requests')} requests, {got.get('completion_tokens')} "
        f"completion tokens: {verdict}"
    )


async def run(args, home: Path, procs: list) -> str:
    model_id = EngineConfig().model_id
    gguf = ensure_default_model(EngineConfig().model_cache, log=lambda m: print(m, file=sys.stderr))
    engine_port, gw_port = rb.free_port(), rb.free_port()
    cfg = home / "tokenport.toml"
    cfg.write_text(f"[engine]\nenabled = true\nport = {engine_port}\nparallel = {max(args.streams)}\n")
    key = rb.governed_tenant(home, cfg, model_id)
    gateway = rb.start_gateway(home, cfg, gw_port)
    procs.append(gateway)
    data = body(model_id, args.max_tokens)
    gw = f"http://127.0.0.1:{gw_port}"
    targets = {
        "engine direct": (f"http://127.0.0.1:{engine_port}", {}),
        "gateway (governed)": (gw, {"Authorization": f"Bearer {key}"}),
    }
    rb.wait_health(gw, gateway, timeout=60)
    # from here every attempt through the gateway is a usage record (a 503 before the engine is up)
    gw_tokens, gw_requests = await ready(gw, targets["gateway (governed)"][1], data, gateway, 300)
    await ready(targets["engine direct"][0], {}, data, gateway, 60)
    versions = f"model {gguf.name}, xllamacpp {_version('xllamacpp')}"
    if args.llamacpp_python and (LLAMACPP_VENV / "bin" / "python").exists():
        lp_port = rb.free_port()
        lp = start_llamacpp_python(home, gguf, model_id, lp_port, os.cpu_count() or 1)
        procs.append(lp)
        targets["llama-cpp-python server"] = (f"http://127.0.0.1:{lp_port}", {})
        await ready(targets["llama-cpp-python server"][0], {}, data, lp, 120)
        versions += f", llama-cpp-python {_version('llama-cpp-python', LLAMACPP_VENV)}"
    elif args.llamacpp_python:
        print(f"no {LLAMACPP_VENV}: llama-cpp-python's server left out (bench/README.md)", file=sys.stderr)
    cells = []
    for r in range(args.rounds):
        for n in args.streams:
            for target, (url, headers) in targets.items():
                cell = await measure(target, url, headers, data, n, args.duration)
                note = f"{cell.tps:.1f} tokens/s, {cell.requests} requests, {cell.errors} errors"
                print(f"round {r + 1}: {target}, {n} stream(s): {note}", file=sys.stderr, flush=True)
                cells.append(cell)
                if cell.errors:
                    print(f"  first error: {cell.first_error}", file=sys.stderr)
                if target == "gateway (governed)":
                    gw_tokens += cell.tokens
                    gw_requests += cell.requests + cell.errors
    rb.stop(gateway)  # graceful: the writer flushes every usage record
    return report(cells, versions, metering(home, cfg, gw_tokens, gw_requests))


def _version(dist: str, venv: Path | None = None) -> str:
    py = str(venv / "bin" / "python") if venv else sys.executable
    code = f"import importlib.metadata as m; print(m.version({dist!r}))"
    out = subprocess.run([py, "-c", code], capture_output=True, text=True)
    return out.stdout.strip() or "?"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=15.0, help="seconds per cell")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--streams", default="1,4", help="comma-separated concurrent streams")
    ap.add_argument("--no-llamacpp-python", dest="llamacpp_python", action="store_false")
    ap.add_argument("--out", type=Path, default=rb.ROOT / "bench" / "results" / "engine.md")
    ap.add_argument("--keep", action="store_true", help="keep the temporary TOKENPORT_HOME")
    args = ap.parse_args(argv)
    args.streams = [int(s) for s in args.streams.split(",")]
    home = Path(tempfile.mkdtemp(prefix="tokenport-engine-"))
    procs: list = []
    try:
        rb.publish(asyncio.run(run(args, home, procs)), args.out)
        return 0
    finally:
        rb.clean_up(procs, home, args.keep, lambda m: print(m, file=sys.stderr))


if __name__ == "__main__":
    raise SystemExit(main())
