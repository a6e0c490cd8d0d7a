"""Memory and metering over a long run: the governed gateway at a constant rate for minutes.

    python bench/soak.py [--rate 300] [--minutes 10] [--warmup 30] [--stream]

Starts the mock engine and one governed gateway (priced model, prepaid credit) as `bench/run`
does, sends `--warmup` seconds of load (the caches, pools and allocator settle), takes the
gateway's RSS as the baseline, then runs `--minutes` one-minute open-loop segments at `--rate`,
reading RSS after each. Prints per-minute latency and RSS, the growth over the baseline, and the
metering and billing checks over every request (warm-up included).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadgen
import run_bench as rb


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=300.0)
    ap.add_argument("--minutes", type=int, default=10)
    ap.add_argument("--segment", type=float, default=60.0, help="seconds per segment")
    ap.add_argument("--warmup", type=float, default=30.0)
    ap.add_argument("--stream", action="store_true")
    ap.add_argument("--out", type=Path, default=rb.ROOT / "bench" / "results" / "soak.md")
    ap.add_argument("--keep", action="store_true", help="keep the temporary TOKENPORT_HOME")
    ap.add_argument("--pin", action="store_true", help="gateway on the last CPU, load and mock on the others")
    args = ap.parse_args(argv)
    home = Path(tempfile.mkdtemp(prefix="tokenport-soak-"))
    procs: list = []
    try:
        _, cfg, key, url, gateway = rb.start_governed(home, procs)
        usage = rb.ProcUsage([gateway.pid])
        if args.pin:
            rb.pin(usage, [procs[-1].pid, os.getpid()])  # procs: the gateway, then the mock
        common = {"stream": args.stream, "key": key, "timeout_s": 10.0}
        results = [loadgen.run(loadgen.open_loop(url, args.rate, args.warmup, target="warm-up", **common))]
        base = usage.mem_mib()[0]
        lines = [
            f"Soak: {args.rate:g} req/s {'streaming' if args.stream else 'non-streaming'}, governed, "
            f"{args.minutes} x {args.segment:g} s after {args.warmup:g} s of warm-up; "
            f"baseline RSS {base:.1f} MiB",
            "",
            "| segment | ok | errors | p50 ms | p99 ms | p99.9 ms | gateway CPU % | RSS MiB | growth "
            "| of which gateway / writer MiB |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]  # fmt: skip
        peak = base
        for minute in range(1, args.minutes + 1):
            c0 = usage.cpu_s()
            res = loadgen.run(loadgen.open_loop(url, args.rate, args.segment, target="gateway", **common))
            cpu = 100 * (usage.cpu_s() - c0) / res.wall_s
            per = usage.mem_by_pid()
            rss = sum(m[0] for m in per.values())
            first = sorted(per.items(), key=lambda kv: kv[0] != gateway.pid)  # the gateway, then children
            split = " / ".join(f"{m[0]:.1f}" for _, m in first)
            peak = max(peak, rss)
            lat = sorted(res.latencies)
            p = [1000 * loadgen.percentile(lat, q) for q in (50, 99, 99.9)]
            lines.append(
                f"| {minute} | {res.ok} | {res.error_count} | {p[0]:.2f} | {p[1]:.2f} | {p[2]:.2f} "
                f"| {cpu:.0f} | {rss:.1f} | {100 * (rss - base) / base:+.1f}% | {split} |"
            )
            print(lines[-1], file=sys.stderr, flush=True)
            results.append(res)
        end = usage.mem_mib()[0]
        lines += [
            "",
            f"- RSS: baseline {base:.1f} MiB, end {end:.1f} MiB ({100 * (end - base) / base:+.1f}%), "
            f"peak {peak:.1f} MiB ({100 * (peak - base) / base:+.1f}%)",
        ]
        rb.stop(gateway)  # graceful: every usage record is flushed before the check reads them
        lines.append(rb.metering_check(home, cfg, results))
        rb.publish("\n".join(lines), args.out)
        return 0
    finally:
        rb.clean_up(procs, home, args.keep, lambda m: print(m, file=sys.stderr))


if __name__ == "__main__":
    raise SystemExit(main())
