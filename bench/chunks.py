"""Does the gateway keep an engine's chunk timing? Streams from a mock that paces its tokens, timed
chunk by chunk, straight to the mock and through the governed gateway.

    python bench/chunks.py [--delay-ms 20] [--rates 50,200] [--duration 10] [--rounds 2]

The mock sends each of its 20 tokens `--delay-ms` after the previous one. For every streamed
request the client notes when each content chunk arrives; a gateway that buffers shows gaps near
zero (chunks arriving together) and longer ones after them. Open loop at each rate, targets
alternating (A B A B). Reported: time to first token, the gap between chunks (p50 / p99), and the
share of gaps under a quarter of the mock's delay ("bunched").
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadgen
import run_bench as rb

now = time.perf_counter


@dataclass
class Timings:
    ttfts: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    ok: int = 0
    errors: int = 0


async def one(session: aiohttp.ClientSession, url: str, headers: dict, body: bytes, t: Timings) -> None:
    t0 = now()
    arrivals: list[float] = []
    try:
        async with session.post(url + loadgen.PATH, data=body, headers=headers) as r:
            if r.status != 200:
                await r.read()
                t.errors += 1
                return
            done = False
            async for line in r.content:  # one SSE line at a time, as it arrives
                if line.startswith(b"data: [DONE]"):
                    done = True
                elif line.startswith(b"data: ") and loadgen._has_content(line[6:]):
                    arrivals.append(now())
    except (aiohttp.ClientError, TimeoutError):
        t.errors += 1
        return
    if not done or not arrivals:
        t.errors += 1
        return
    t.ok += 1
    t.ttfts.append(arrivals[0] - t0)
    t.gaps += [b - a for a, b in itertools.pairwise(arrivals)]


async def open_loop(url: str, headers: dict, rate: float, duration: float) -> Timings:
    t = Timings()
    body = loadgen.request_body(rb.MODEL, True)
    headers = {"Content-Type": "application/json", **headers}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        start, tasks = now(), []
        for i in range(int(rate * duration)):
            await asyncio.sleep(max(0.0, start + i / rate - now()))
            tasks.append(asyncio.ensure_future(one(session, url, headers, body, t)))
        await asyncio.gather(*tasks)
    return t


def row(name: str, rate: float, t: Timings, delay_s: float) -> str:
    gaps, ttfts = sorted(t.gaps), sorted(t.ttfts)
    p = lambda vals, q: 1000 * loadgen.percentile(vals, q)  # noqa: E731
    bunched = sum(g < delay_s / 4 for g in gaps) / max(len(gaps), 1)
    return (
        f"| {name} | {rate:g} | {t.ok} | {t.errors} | {p(ttfts, 50):.2f} / {p(ttfts, 99):.2f} | "
        f"{p(gaps, 50):.2f} / {p(gaps, 99):.2f} / {p(gaps, 99.9):.2f} | {1000 * min(gaps):.2f} "
        f"| {100 * bunched:.2f}% |"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--delay-ms", type=float, default=20.0, help="the mock's delay between tokens")
    ap.add_argument("--rates", default="50,200", help="comma-separated streams started per second")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per target and cell")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=rb.ROOT / "bench" / "results" / "chunks.md")
    args = ap.parse_args(argv)
    home = Path(tempfile.mkdtemp(prefix="tokenport-chunks-"))
    procs: list = []
    try:
        mock_url, _, key, gw, _ = rb.start_governed(home, procs, args.delay_ms)
        targets = {"direct": (mock_url, {}), "gateway": (gw, {"Authorization": f"Bearer {key}"})}
        lines = [
            f"Chunk timing: the mock sends 20 tokens {args.delay_ms:g} ms apart; "
            f"{args.rounds} x {args.duration:g} s per target and rate",
            "",
            "| target | streams/s | ok | errors | TTFT p50 / p99 ms | gap p50 / p99 / p99.9 ms | min gap ms "
            "| bunched |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]  # fmt: skip
        for rate in (float(r) for r in args.rates.split(",")):
            merged = {name: Timings() for name in targets}
            for _ in range(args.rounds):
                for name, (url, headers) in targets.items():
                    t = loadgen.run(open_loop(url, headers, rate, args.duration / args.rounds))
                    m = merged[name]
                    m.ttfts += t.ttfts
                    m.gaps += t.gaps
                    m.ok += t.ok
                    m.errors += t.errors
            lines += [row(name, rate, t, args.delay_ms / 1000) for name, t in merged.items()]
            print("\n".join(lines[-2:]), file=sys.stderr, flush=True)
        rb.publish("\n".join(lines), args.out)
        return 0
    finally:
        rb.clean_up(procs, home, False, lambda m: print(m, file=sys.stderr))


if __name__ == "__main__":
    raise SystemExit(main())
