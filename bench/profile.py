"""Where the governed gateway spends its CPU: py-spy on `tokenport serve` under open-loop load.

    python bench/profile.py --rate 500 --duration 20 [--stream] [--top 30] [--raw PATH]

Starts the mock engine and one governed gateway (priced model, prepaid credit) as `bench/run`
does, sends `--rate` requests/s for `--duration` seconds while py-spy samples the gateway, then
prints the gateway's CPU per request (the number to compare between versions: it hardly depends
on how busy the machine is) and the functions that take it, grouped by module. Needs py-spy in
the same environment (`pip install py-spy`); without it only the CPU per request is shown.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadgen
import run_bench as rb


def aggregate(raw: Path, top: int) -> str:
    """py-spy's raw (collapsed) stacks: self time per function, inclusive time per module."""
    own: collections.Counter[str] = collections.Counter()
    modules: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        total += int(n)
        frames = stack.split(";")
        own[frames[-1].split(" (")[0] + " (" + _where(frames[-1]) + ")"] += int(n)
        for mod in {_module(f) for f in frames}:
            modules[mod] += int(n)
    if not total:
        return "no samples"
    out = [f"{total} samples", "", "self time, by function:"]
    out += [f"  {100 * v / total:5.1f}%  {k}" for k, v in own.most_common(top)]
    out += ["", "inclusive time, by module (a module's callees included):"]
    out += [f"  {100 * v / total:5.1f}%  {k}" for k, v in modules.most_common(top)]
    return "\n".join(out)


def _where(frame: str) -> str:
    return frame.split(" (", 1)[1].rsplit(":", 1)[0].rstrip(")") if " (" in frame else "?"


def _module(frame: str) -> str:
    path = _where(frame)
    for marker in ("site-packages/", "python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=500.0)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--stream", action="store_true")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--raw", type=Path, help="keep py-spy's raw stacks here")
    ap.add_argument("--no-profile", action="store_true", help="only the CPU per request")
    args = ap.parse_args(argv)
    pyspy = None if args.no_profile else shutil.which("py-spy", path=str(Path(sys.executable).parent))
    home = Path(tempfile.mkdtemp(prefix="tokenport-profile-"))
    procs: list = []
    try:
        _, _, key, url, gateway = rb.start_governed(home, procs)
        usage = rb.ProcUsage([gateway.pid])
        common = {"stream": args.stream, "key": key, "timeout_s": 10.0}
        loadgen.run(loadgen.open_loop(url, args.rate, 2.0, **common))  # warm-up
        raw = args.raw or home / "profile.txt"
        if pyspy:
            spy = subprocess.Popen(
                [pyspy, "record", "-p", str(gateway.pid), "--subprocesses", "-f", "raw", "-r", "250",
                 "--nonblocking", "-d", str(int(args.duration)), "-o", str(raw)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            procs.insert(0, spy)
            time.sleep(0.5)
        c0 = usage.cpu_by_pid()
        res = loadgen.run(loadgen.open_loop(url, args.rate, args.duration, target="gateway", **common))
        c1 = usage.cpu_by_pid()
        per = {pid: c1[pid] - c0.get(pid, 0.0) for pid in c1}
        cpu = sum(per.values())
        print(loadgen.format_result(res))
        n = max(res.ok, 1)
        split = ", ".join(
            f"{'gateway' if pid == gateway.pid else 'writer'} {1e6 * c / n:.0f}" for pid, c in per.items()
        )
        print(
            f"gateway CPU: {cpu:.2f} s for {res.ok} requests = {1e6 * cpu / n:.0f} µs per request "
            f"({split}; {100 * cpu / res.wall_s:.0f}% of a core at {res.ok / res.wall_s:.0f} req/s)"
        )
        if pyspy:
            spy.wait(timeout=args.duration + 30)
            print(aggregate(raw, args.top) if raw.exists() else "py-spy wrote nothing")
        elif not args.no_profile:
            print("py-spy not found next to this Python: pip install py-spy for the profile")
        return 0
    finally:
        rb.clean_up(procs, home, False, lambda m: print(m, file=sys.stderr))


if __name__ == "__main__":
    raise SystemExit(main())
