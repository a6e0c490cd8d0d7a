"""Side by side, in one run: the mock engine direct, tokenport bare, tokenport governed and
LiteLLM's proxy, interleaved (direct, bare, governed, LiteLLM, then again) at each open-loop
rate, streaming and not, then a closed loop for each; one table of added latency, errors,
throughput, CPU and memory per process, and the governed ledger checked against the mock's fixed
counts. Run it as `bench/compare` (see bench/README.md); it installs LiteLLM's proxy into
`bench/.litellm-venv` on first use and stops by itself.

- bare: tokenport with a free model (authentication, key lookup, zone, routing, relay, the usage
  record and its audit entry; no money);
- governed: a priced model and prepaid credit (every request held and settled in the ledger,
  plus everything bare does, and a receipt for each);
- LiteLLM: `litellm --config` with one worker, a master key, a model pointing at the mock; no
  database (its spend tracking needs Prisma, whose engines are downloaded from outside the
  package registries, so a governed LiteLLM can't be set up here).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadgen
import run_bench as rb

LITELLM = "litellm[proxy]==1.108.7"  # the version the performance notes measured
VENV = rb.ROOT / "bench" / ".litellm-venv"
FREE_MODEL = "free-model"
LITELLM_KEY = "sk-bench-master"
TARGETS = ("direct", "bare", "governed", "litellm")


def ensure_litellm(log) -> Path:
    exe = VENV / "bin" / "litellm"
    if exe.exists():
        return exe
    log(f"installing {LITELLM} into {VENV} (once) ...")
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", LITELLM], check=True)
    return exe


def start_litellm(home: Path, mock_url: str, port: int) -> subprocess.Popen[bytes]:
    cfg = home / "litellm.yaml"
    cfg.write_text(
        "model_list:\n"
        f"  - model_name: {rb.MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{rb.MODEL}\n"
        f"      api_base: {mock_url}/v1\n"
        "      api_key: unused\n"
        "general_settings:\n"
        f"  master_key: {LITELLM_KEY}\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
    )
    env = {**os.environ, "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False", "NO_DOCS": "True"}
    log = open(home / "litellm.log", "wb")  # noqa: SIM115
    cmd = [str(VENV / "bin" / "litellm"), "--config", str(cfg), "--port", str(port), "--num_workers", "1"]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=home)


def wait_litellm(url: str, proc: subprocess.Popen[Any], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    body = loadgen.request_body(rb.MODEL, False)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {LITELLM_KEY}"}
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"litellm exited with {proc.returncode}")
        req = urllib.request.Request(url + "/v1/chat/completions", data=body, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = repr(exc)
        time.sleep(0.5)
    raise RuntimeError(f"LiteLLM never answered a request: {last}")


def tree(pid: int) -> list[int]:
    """The process and its descendants (LiteLLM may fork a worker)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


async def quiet(proc: rb.ProcUsage, idle_pct: float = 5.0, limit_s: float = 60.0) -> None:
    """Wait until the process uses under `idle_pct` of a core (it has drained its backlog)."""
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        c0 = proc.cpu_s()
        await asyncio.sleep(0.5)
        if 100 * (proc.cpu_s() - c0) / 0.5 < idle_pct:
            return


@dataclass
class Cell:
    rate: float
    stream: bool
    results: dict[str, list[loadgen.Result]] = field(default_factory=lambda: {t: [] for t in TARGETS})
    cpu_s: dict[str, float] = field(default_factory=dict)
    wall_s: dict[str, float] = field(default_factory=dict)
    rss: dict[str, float] = field(default_factory=dict)


async def measure(args, urls: dict[str, tuple[str, str | None, str]], procs: dict[str, rb.ProcUsage], log):
    seg = args.duration / args.rounds
    cells: list[Cell] = []
    governed: list[loadgen.Result] = []
    for rate in args.rates:
        for stream in (False, True):
            cell = Cell(rate, stream)
            for name in TARGETS:  # warm-up, discarded (the governed one is billed: counted)
                url, key, model = urls[name]
                r = await loadgen.open_loop(
                    url, rate, args.warmup, stream=stream, model=model, key=key, timeout_s=args.timeout
                )
                if name == "governed":
                    governed.append(r)
            for _ in range(args.rounds):
                for name in TARGETS:
                    url, key, model = urls[name]
                    proc = procs.get(name)
                    c0, t0 = (proc.cpu_s() if proc else 0.0), time.monotonic()
                    res = await loadgen.open_loop(
                        url,
                        rate,
                        seg,
                        stream=stream,
                        model=model,
                        key=key,
                        timeout_s=args.timeout,
                        target=name,
                    )
                    if proc:
                        cell.cpu_s[name] = cell.cpu_s.get(name, 0.0) + proc.cpu_s() - c0
                        cell.wall_s[name] = cell.wall_s.get(name, 0.0) + time.monotonic() - t0
                    cell.results[name].append(res)
                    if name == "governed":
                        governed.append(res)
                    if proc:  # an overloaded target works on after its segment: not during the next
                        await quiet(proc)
                    log(f"  {rate:g} rps stream={stream} {name}: {loadgen.format_result(res)}")
            for name, proc in procs.items():
                cell.rss[name] = proc.mem_mib()[0]
            cells.append(cell)
    closed: dict[tuple[str, bool], loadgen.Result] = {}
    if args.workers:
        for stream in (False, True):
            for name in TARGETS:
                url, key, model = urls[name]
                r = await loadgen.closed_loop(
                    url,
                    args.workers,
                    args.closed_duration,
                    stream=stream,
                    model=model,
                    key=key,
                    timeout_s=args.timeout,
                    target=name,
                )
                closed[(name, stream)] = r
                if name == "governed":
                    governed.append(r)
                if name in procs:
                    await quiet(procs[name])
                log(f"  closed stream={stream} {name}: {loadgen.format_result(r)}")
    return cells, closed, governed


def _ms(vals: list[float], q: float) -> float:
    return loadgen.percentile(sorted(vals), q) * 1000 if vals else float("nan")


def report(args, cells: list[Cell], closed, versions: str, wall: float) -> str:
    lines = [
        "# tokenport vs LiteLLM, side by side",
        "",
        f"- {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}; {versions}",
        f"- open loop: {args.duration:g} s per cell and target, as {args.rounds} rounds of (direct, bare, "
        f"governed, litellm) after {args.warmup:g} s warm-ups; request timeout {args.timeout:g} s; "
        f"{wall:.0f} s in all. Loadgen, mock, tokenport and LiteLLM share this machine"
        + (
            " (tokenport and LiteLLM pinned to the last CPU, loadgen and mock to the others)."
            if args.pin
            else "."
        ),
        "- added = the target's percentile minus the direct percentile in the same cell; CPU % = the "
        "process's CPU time over its own segments' wall time, in % of one core; RSS after the cell.",
        "",
        "| mode | rate | target | p50 / p99 / p99.9 ms | added p50 / p99 / p99.9 | added TTFT p50 | "
        "errors | achieved rps | CPU % | RSS MiB |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cells:
        mode = "stream" if c.stream else "non-stream"
        base = rb.merged(c.results["direct"])
        for name in TARGETS:
            r = rb.merged(c.results[name])
            pct = " / ".join(f"{_ms(r.latencies, q):.2f}" for q in (50, 99, 99.9))
            if name == "direct":
                added, ttft = "-", "-"
            else:
                added = " / ".join(
                    f"{_ms(r.latencies, q) - _ms(base.latencies, q):+.2f}" for q in (50, 99, 99.9)
                )
                ttft = f"{_ms(r.ttfts, 50) - _ms(base.ttfts, 50):+.2f}" if c.stream else "-"
            rps = r.ok / r.wall_s if r.wall_s else 0.0
            cpu = 100 * c.cpu_s[name] / c.wall_s[name] if c.wall_s.get(name) else None
            lines.append(
                f"| {mode} | {c.rate:g} | {name} | {pct} | {added} | {ttft} | {rb._errs(r)} | {rps:.0f} | "
                f"{'-' if cpu is None else f'{cpu:.0f}'} | {c.rss.get(name, 0):.0f} |"
            )
    if closed:
        lines += [
            "",
            f"Closed loop, {args.workers} connections, {args.closed_duration:g} s each:",
            "",
            "| mode | target | req/s | p50 ms | p99 ms | errors |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for (name, stream), r in closed.items():
            lines.append(
                f"| {'stream' if stream else 'non-stream'} | {name} | {r.ok / r.wall_s:.0f} | "
                f"{_ms(r.latencies, 50):.2f} | {_ms(r.latencies, 99):.2f} | {rb._errs(r)} |"
            )
        for stream in (False, True):
            g, lite = closed.get(("governed", stream)), closed.get(("litellm", stream))
            if g and lite and lite.ok:
                ratio = (g.ok / g.wall_s) / (lite.ok / lite.wall_s)
                lines.append(
                    f"\nGoverned / LiteLLM max throughput ({'stream' if stream else 'non-stream'}): "
                    f"{ratio:.1f}x"
                )
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    rb.load_options(ap, "100,300,500,1000", "compare.md")
    a = ap.parse_args(argv)
    if a.quick:
        a.rates = "100,300"
    rb.finish_options(a)
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    t_start = time.monotonic()

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    ensure_litellm(log)
    home = Path(tempfile.mkdtemp(prefix="tokenport-compare-"))
    procs: list[subprocess.Popen[Any]] = []
    try:
        mock, mock_url = rb.start_mock(home, 0.0)
        procs.append(mock)
        cfg = rb.write_config(home, mock_url, models=(rb.MODEL, FREE_MODEL))
        c = ("--config", str(cfg))
        rb.cli_json(home, "tenants", "create", "bench", *c, "--json")
        rb.cli_json(home, "tenants", "create", "bare", *c, "--json")
        governed_key = rb.cli_json(home, "keys", "create", "--tenant", "bench", *c, "--json")["key"]
        bare_key = rb.cli_json(home, "keys", "create", "--tenant", "bare", *c, "--json")["key"]
        rb.cli_json(home, "prices", "set", rb.MODEL, *rb.PRICE_ARGS, *c, "--json")
        rb.cli_json(home, "prices", "set", FREE_MODEL, "--free", *c, "--json")
        rb.cli_json(home, "credits", "grant", "bench", "1000000", *c, "--json")
        port, lport = rb.free_port(), rb.free_port()
        gateway = rb.start_gateway(home, cfg, port)
        procs.append(gateway)
        litellm = start_litellm(home, mock_url, lport)
        procs.append(litellm)
        gw_url, lite_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{lport}"
        rb.wait_health(gw_url, gateway, timeout=60)
        rb.wait_key_works(gw_url, governed_key, timeout=30)
        rb.wait_key_works(gw_url, bare_key, timeout=30, model=FREE_MODEL)
        wait_litellm(lite_url, litellm, timeout=180)
        if args.pin:  # tokenport and LiteLLM on the same CPU (measured in turn), load and mock apart
            rb.pin(rb.ProcUsage([gateway.pid, litellm.pid]), [mock.pid, os.getpid()])
        urls = {
            "direct": (mock_url, None, rb.MODEL),
            "bare": (gw_url, bare_key, FREE_MODEL),
            "governed": (gw_url, governed_key, rb.MODEL),
            "litellm": (lite_url, LITELLM_KEY, rb.MODEL),
        }
        usage = {
            "bare": rb.ProcUsage([gateway.pid]),
            "governed": rb.ProcUsage([gateway.pid]),
            "litellm": rb.ProcUsage(tree(litellm.pid)),
        }
        log(f"mock {mock_url}, tokenport {gw_url}, litellm {lite_url}; measuring")
        cells, closed, governed = loadgen.run(measure(args, urls, usage, log))
        wall = time.monotonic() - t_start
        lite_version = subprocess.run(
            [
                str(VENV / "bin" / "python"),
                "-c",
                "import importlib.metadata as m; print(m.version('litellm'))",
            ],
            capture_output=True,
            text=True,
        ).stdout.strip()
        versions = f"tokenport (this checkout), litellm {lite_version}"
        text = report(args, cells, closed, versions, wall)
        rb.stop(gateway)  # a graceful stop flushes the usage writer
        text += "\n" + rb.metering_check(home, cfg, governed) + "\n"
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(text)
        log(f"written to {args.out}")
        return 0
    except (RuntimeError, OSError, KeyError, json.JSONDecodeError, subprocess.CalledProcessError) as exc:
        log(f"comparison failed: {exc}")
        for name in ("gateway.log", "mock.log", "litellm.log"):
            p = home / name
            if p.exists() and p.stat().st_size:
                log(f"--- tail of {p}:\n" + "\n".join(p.read_text(errors="replace").splitlines()[-30:]))
        args.keep = True
        return 1
    finally:
        rb.clean_up(list(reversed(procs)), home, args.keep, log)


if __name__ == "__main__":
    raise SystemExit(main())
