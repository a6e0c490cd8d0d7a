"""End-to-end gateway benchmark: mock engine direct (A) vs through `tokenport serve` (B).

Starts the mock engine and the gateway on loopback with a throwaway TOKENPORT_HOME,
creates a tenant and key with the CLI, then runs open-loop cells A B A B at each rate,
streaming and not, and writes a markdown table to bench/results/latest.md.
Run it through `bench/run` (see bench/README.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadgen

ROOT = Path(__file__).resolve().parent.parent
MODEL = "mock-model"
PROMPT_TOKENS, MAX_TOKENS = 10, 20  # the mock's defaults; requests ask for max_tokens 20
PRICE_ARGS = ("--input", "0.30", "--output", "1.20")  # USD per million tokens
COST_NANO = PROMPT_TOKENS * 300 + MAX_TOKENS * 1200  # per request: 10 x $0.30/M + 20 x $1.20/M
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(home: Path) -> dict[str, str]:
    env = dict(os.environ, TOKENPORT_HOME=str(home), PYTHONUNBUFFERED="1")
    env.pop("TOKENPORT_DATABASE_URL", None)  # always the throwaway SQLite in `home`
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def tokenport_cmd() -> list[str]:
    if override := os.environ.get("TOKENPORT_BIN"):  # e.g. a wrapper or another checkout
        return shlex.split(override)
    exe = Path(sys.executable).parent / "tokenport"
    if exe.exists():
        return [str(exe)]
    if found := shutil.which("tokenport"):
        return [found]
    return [sys.executable, "-c", "import sys; from tokenport.cli import main; sys.exit(main())"]


def stop(proc: subprocess.Popen[Any] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def start_mock(home: Path, chunk_delay_ms: float) -> tuple[subprocess.Popen[str], str]:
    cmd = [
        sys.executable,
        "-m",
        "tokenport.testing.mock_engine",
        "--port",
        "0",
        "--chunk-delay-ms",
        str(chunk_delay_ms),
    ]
    log = open(home / "mock.log", "w")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=child_env(home))
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = proc.stdout.readline()  # the mock prints exactly one line
        if line.startswith("READY "):
            return proc, line.split()[1]
        if not line and proc.poll() is not None:
            break
    stop(proc)
    raise RuntimeError(f"mock engine did not start; see {home / 'mock.log'}")


def write_config(
    home: Path,
    mock_url: str,
    database_url: str | None = None,
    shared: bool = False,
    redis_url: str | None = None,
    models: tuple[str, ...] = (MODEL,),
) -> Path:
    cfg = home / "tokenport.toml"
    cluster = ("shared = true\n" if shared else "") + (f'redis_url = "{redis_url}"\n' if redis_url else "")
    cfg.write_text(
        "[engine]\nenabled = false\n\n"
        + (f'[database]\nurl = "{database_url}"\n\n' if database_url else "")
        + (f"[cluster]\n{cluster}\n" if cluster else "")
        + f'[[backends]]\nname = "mock"\nurl = "{mock_url}"\nmodels = {json.dumps(list(models))}\n'
        + 'kind = "llamacpp"\n\n'
        # energy metered per request too: a power-model node over the mock, its token counters read
        + '[[energy.nodes]]\nname = "mock-node"\nsource = "model"\nbackends = ["mock"]\n'
    )
    return cfg


def governed_tenant(home: Path, cfg: Path, model: str = MODEL) -> str:
    """Tenant "bench" with a key (returned), a priced model and prepaid credit, so every request
    is held and settled. Before the server starts: the CLI migrates the fresh database."""
    cli_json(home, "tenants", "create", "bench", "--config", str(cfg), "--json")
    key = cli_json(home, "keys", "create", "--tenant", "bench", "--config", str(cfg), "--json")["key"]
    cli_json(home, "prices", "set", model, *PRICE_ARGS, "--config", str(cfg), "--json")
    cli_json(home, "credits", "grant", "bench", "1000000", "--config", str(cfg), "--json")
    return key


def start_governed(
    home: Path, procs: list, chunk_delay_ms: float = 0.0
) -> tuple[str, Path, str, str, subprocess.Popen[bytes]]:
    """The mock and one governed gateway, ready for load: (mock URL, config, key, gateway URL,
    gateway process). Both processes are appended to `procs` (for `clean_up`) as they start."""
    mock, mock_url = start_mock(home, chunk_delay_ms)
    procs.append(mock)
    cfg = write_config(home, mock_url)
    key = governed_tenant(home, cfg)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    gateway = start_gateway(home, cfg, port)
    procs.insert(0, gateway)  # stopped first: its usage records are flushed while the mock is up
    wait_health(url, gateway, timeout=60)
    wait_key_works(url, key, timeout=30)
    return mock_url, cfg, key, url, gateway


def publish(text: str, out: Path) -> None:
    """Print a report and write it to `out`."""
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    print(f"\nwritten to {out}")


def start_gateway(home: Path, cfg: Path, port: int, index: int = 0) -> subprocess.Popen[bytes]:
    log = open(home / f"gateway{index or ''}.log", "wb")  # noqa: SIM115
    cmd = [*tokenport_cmd(), "serve", "--port", str(port), "--config", str(cfg)]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env(home))


def cli_json(home: Path, *args: str) -> dict[str, Any]:
    out = subprocess.run(
        [*tokenport_cmd(), *args], capture_output=True, text=True, timeout=60, env=child_env(home)
    )
    if out.returncode != 0:
        raise RuntimeError(
            f"tokenport {' '.join(args)} failed ({out.returncode}): {out.stderr or out.stdout}"
        )
    return json.loads(out.stdout)


def wait_health(url: str, proc: subprocess.Popen[Any], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url}/health not 200 after {timeout:.0f}s")


def wait_key_works(url: str, key: str, timeout: float, model: str = MODEL) -> None:
    """The gateway may pick a new key up a little later; poll one real request."""
    body = loadgen.request_body(model, False)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    deadline, last = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        req = urllib.request.Request(url + loadgen.PATH, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                if r.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}: {exc.read()[:300]!r}"
        except (urllib.error.URLError, OSError) as exc:
            last = repr(exc)
        time.sleep(0.25)
    raise RuntimeError(f"an authenticated request through the gateway never succeeded: {last}")


@dataclass
class ProcUsage:
    """CPU time and memory of the gateway processes and their children (the usage writer's
    process), from /proc, summed over them. A child that has exited is not counted any more."""

    pids: list[int]

    def tree(self) -> list[int]:
        found: list[int] = []
        todo = list(self.pids)
        while todo:
            pid = todo.pop()
            found.append(pid)
            for task in Path(f"/proc/{pid}/task").glob("*/children"):
                with contextlib.suppress(OSError):  # the thread or process ended meanwhile
                    todo += [int(c) for c in task.read_text().split()]
        return found

    def cpu_s(self) -> float:
        return sum(self.cpu_by_pid().values())

    def cpu_by_pid(self) -> dict[int, float]:
        out = {}
        for pid in self.tree():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[pid] = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime
        return out

    def mem_mib(self) -> tuple[float, float]:
        """(VmRSS, VmHWM) in MiB, summed over the processes."""
        per = self.mem_by_pid().values()
        return sum(m[0] for m in per), sum(m[1] for m in per)

    def mem_by_pid(self) -> dict[int, tuple[float, float]]:
        out = {}
        for pid in self.tree():
            vals = {"VmRSS": 0.0, "VmHWM": 0.0}
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                k, _, v = line.partition(":")
                if k in vals:
                    vals[k] = int(v.split()[0]) / 1024
            out[pid] = (vals["VmRSS"], vals["VmHWM"])
        return out


def pin(gateways: ProcUsage, others: list[int]) -> None:
    """The last CPU for the gateways (and their writer processes), the others for the load
    generator and the mock: what each side measures is then less the other's scheduling."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return
    for pid in gateways.tree():
        os.sched_setaffinity(pid, cpus[-1:])
    for pid in others:
        os.sched_setaffinity(pid, cpus[:-1])


# ---------------------------------------------------------------- measuring


@dataclass
class Cell:
    rate: float
    stream: bool
    direct: list[loadgen.Result] = field(default_factory=list)
    gateway: list[loadgen.Result] = field(default_factory=list)
    gw_cpu_s: float = 0.0
    gw_wall_s: float = 0.0
    rss_mib: float = 0.0
    hwm_mib: float = 0.0


def merged(results: list[loadgen.Result]) -> loadgen.Result:
    m = loadgen.Result(results[0].target, "open", results[0].stream, 0.0, rate=results[0].rate)
    for r in results:
        m.sent += r.sent
        m.ok += r.ok
        m.latencies += r.latencies
        m.ttfts += r.ttfts
        m.errors.update(r.errors)
        m.wall_s += r.wall_s
        m.max_lag_s = max(m.max_lag_s, r.max_lag_s)
    return m


async def measure(
    args: argparse.Namespace, mock_url: str, gw_url: str, key: str, gw: ProcUsage, log: Any
) -> tuple[list[Cell], dict[str, loadgen.Result], list[loadgen.Result]]:
    """Returns the open-loop cells, the closed-loop results and every result through the gateway."""
    seg = args.duration / args.rounds
    cells: list[Cell] = []
    via_gw: list[loadgen.Result] = []
    for rate in args.rates:
        for stream in (False, True):
            cell = Cell(rate, stream)
            common = {"stream": stream, "model": MODEL, "timeout_s": args.timeout}
            # warm-up (discarded): open connections, fill caches
            await loadgen.open_loop(mock_url, rate, args.warmup, **common)
            via_gw.append(await loadgen.open_loop(gw_url, rate, args.warmup, key=key, **common))
            for _ in range(args.rounds):
                cell.direct.append(await loadgen.open_loop(mock_url, rate, seg, target="direct", **common))
                c0, t0 = gw.cpu_s(), time.monotonic()
                res = await loadgen.open_loop(gw_url, rate, seg, key=key, target="gateway", **common)
                cell.gw_cpu_s += gw.cpu_s() - c0
                cell.gw_wall_s += time.monotonic() - t0
                cell.gateway.append(res)
                via_gw.append(res)
                log(
                    f"  {rate:g} rps stream={stream}: "
                    f"A {loadgen.format_result(cell.direct[-1])}\n    B {loadgen.format_result(res)}"
                )
            cell.rss_mib, cell.hwm_mib = gw.mem_mib()
            cells.append(cell)
    closed: dict[str, loadgen.Result] = {}
    if args.workers:
        for name, url, k in (("direct", mock_url, None), ("gateway", gw_url, key)):
            closed[name] = await loadgen.closed_loop(
                url,
                args.workers,
                args.closed_duration,
                model=MODEL,
                key=k,
                timeout_s=args.timeout,
                target=name,
            )
            log(f"  closed {loadgen.format_result(closed[name])}")
        via_gw.append(closed["gateway"])
    return cells, closed, via_gw


def metering_check(home: Path, cfg: Path, via_gw: list[loadgen.Result], probes: int = 1) -> str:
    """Compare the gateway's usage records (after a graceful stop) with what the client saw."""
    ok = sum(r.ok for r in via_gw) + probes  # + the readiness probes (one per gateway)
    failed = sum(r.error_count for r in via_gw)
    want = {"requests": ok, "prompt_tokens": ok * PROMPT_TOKENS, "completion_tokens": ok * MAX_TOKENS}
    try:
        got = cli_json(home, "usage", "--tenant", "bench", "--limit", "1", "--config", str(cfg), "--json")
        totals = got["totals"]
    except (RuntimeError, KeyError, json.JSONDecodeError) as exc:
        return f"- metering check: could not read usage ({exc})"
    same = all(totals.get(k) == v for k, v in want.items())
    seen = ", ".join(f"{k} {totals.get(k)}" for k in want)
    verdict = "exact match" if same else f"MISMATCH, expected {want}"
    extra = f" ({failed} client-side errors may be recorded too)" if failed and not same else ""
    line = f"- metering check: gateway recorded {seen} for {ok} successful requests: {verdict}{extra}"
    try:
        bal = cli_json(home, "balance", "bench", "--config", str(cfg), "--json")
        charged = 1_000_000 * 10**9 - bal["available_nano_usd"]
        ledger = cli_json(home, "ledger", "verify", "--config", str(cfg), "--json")
    except (RuntimeError, KeyError, json.JSONDecodeError) as exc:
        return line + f"\n- billing check: could not read the ledger ({exc})"
    billed = "exact" if charged == ok * COST_NANO else f"MISMATCH, expected {ok * COST_NANO}"
    return line + (
        f"\n- billing check: charged {charged} nano-USD for {ok} requests at {COST_NANO} each: {billed}; "
        f"ledger verify: {'ok' if ledger.get('ok') else ledger.get('problems')}"
    )


# ---------------------------------------------------------------- report


def _ms(vals: list[float], q: float) -> float:
    return loadgen.percentile(sorted(vals), q) * 1000


def _pair(vals: list[float]) -> str:
    return f"{_ms(vals, 50):.2f} / {_ms(vals, 99):.2f}"


def _added(b: list[float], a: list[float]) -> tuple[str, str]:
    return f"{_ms(b, 50) - _ms(a, 50):+.2f}", f"{_ms(b, 99) - _ms(a, 99):+.2f}"


def _errs(r: loadgen.Result) -> str:
    if not r.errors:
        return "0"
    return f"{r.error_count} ({', '.join(f'{k}:{v}' for k, v in r.errors.items())})"


def report(
    args: argparse.Namespace, cells: list[Cell], closed: dict[str, loadgen.Result], lg_cpu: float, wall: float
) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    lines = [
        "# tokenport gateway benchmark",
        "",
        f"- {when}, {os.cpu_count()} CPUs, Python {platform.python_version()}, aiohttp {aiohttp.__version__}",
        f"- mock engine: 10 prompt / 20 completion tokens, chunk delay {args.chunk_delay_ms:g} ms; "
        "request `max_tokens: 20`",
        f"- open loop, {args.duration:g} s per cell and target as {args.rounds} x (A direct, B gateway) "
        f"segments after {args.warmup:g} s warm-up; latency counted from the scheduled send time",
        f"- loadgen, mock and gateway share this machine; loadgen used {lg_cpu:.0f}% of one core "
        f"over {wall:.0f} s"
        + (
            "; gateway (and its writer process) pinned to the last CPU, loadgen and mock to the others"
            if args.pin
            else ""
        ),
        f"- database: {(args.database_url or 'sqlite').split(':', 1)[0]}; "
        f"{args.gateways} gateway process{'es' if args.gateways > 1 else ''}; admission: "
        + (
            "shared mode, state in Redis"
            if args.redis_url
            else "shared mode (a database transaction per request)"
            if args.shared
            else "one process, in memory"
        ),
        "",
        "| mode | rate | direct p50 / p99 ms | gateway p50 / p99 ms | added p50 | added p99 | "
        "added TTFT p50 / p99 | errors direct / gw | gw RSS (peak) MiB | gw CPU % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    detail = [
        "",
        "Details (ms): p99.9 and raw TTFT",
        "",
        "| mode | rate | direct p99.9 | gateway p99.9 | direct TTFT p50 / p99 | gateway TTFT p50 / p99 | "
        "gw achieved rps | max send lag ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cells:
        a, b = merged(c.direct), merged(c.gateway)
        mode = "stream" if c.stream else "non-stream"
        add50, add99 = _added(b.latencies, a.latencies)
        ttft = " / ".join(_added(b.ttfts, a.ttfts)) if c.stream else "-"
        cpu = 100 * c.gw_cpu_s / c.gw_wall_s if c.gw_wall_s else 0.0
        lines.append(
            f"| {mode} | {c.rate:g} | {_pair(a.latencies)} | {_pair(b.latencies)} | {add50} | {add99} | "
            f"{ttft} | {_errs(a)} / {_errs(b)} | {c.rss_mib:.0f} ({c.hwm_mib:.0f}) | {cpu:.0f} |"
        )
        tt_a, tt_b = (_pair(a.ttfts), _pair(b.ttfts)) if c.stream else ("-", "-")
        rps = b.ok / b.wall_s if b.wall_s else 0.0
        lag = 1000 * max(a.max_lag_s, b.max_lag_s)
        detail.append(
            f"| {mode} | {c.rate:g} | {_ms(a.latencies, 99.9):.2f} | {_ms(b.latencies, 99.9):.2f} | "
            f"{tt_a} | {tt_b} | {rps:.0f} | {lag:.1f} |"
        )
    lines += detail
    if closed:
        lines += [
            "",
            f"Closed loop, {args.workers} workers, {args.closed_duration:g} s, non-stream "
            "(bounded by this machine's cores, which loadgen shares):",
            "",
            "| target | req/s | p50 ms | p99 ms | errors |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, r in closed.items():
            lines.append(
                f"| {name} | {r.ok / r.wall_s:.0f} | {_ms(r.latencies, 50):.2f} | "
                f"{_ms(r.latencies, 99):.2f} | {_errs(r)} |"
            )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- main


def load_options(ap: argparse.ArgumentParser, rates: str, out: str) -> None:
    """The load options every benchmark driver shares."""
    ap.add_argument("--quick", action="store_true", help="short cells (3 s)")
    ap.add_argument("--rates", default=rates, help="comma-separated requests/s")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per cell and target")
    ap.add_argument("--rounds", type=int, default=2, help="alternations of the targets per cell")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds of discarded warm-up per target")
    ap.add_argument("--workers", type=int, default=32, help="closed-loop workers (0 = skip)")
    ap.add_argument("--closed-duration", type=float, default=5.0)
    ap.add_argument("--timeout", type=float, default=10.0, help="per-request timeout, s")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / out)
    ap.add_argument("--keep", action="store_true", help="keep the temporary TOKENPORT_HOME (logs, DB)")
    ap.add_argument(
        "--pin", action="store_true", help="gateways on the last CPU; load generator and mock on the others"
    )


def finish_options(a: argparse.Namespace) -> None:
    a.rates = [float(r) for r in a.rates.split(",") if r]
    if a.quick:
        a.duration, a.warmup, a.closed_duration = 3.0, 0.5, 2.0


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    load_options(ap, "100,300", "latest.md")
    ap.add_argument("--chunk-delay-ms", type=float, default=0.0, help="mock delay between tokens")
    ap.add_argument("--database-url", help="an empty database (default: SQLite in the temporary home)")
    ap.add_argument("--shared", action="store_true", help="shared mode: admission in the database")
    ap.add_argument("--redis-url", help="shared mode with admission state in this Redis (implies --shared)")
    ap.add_argument("--gateways", type=int, default=1, help="gateway processes (requests go to each in turn)")
    a = ap.parse_args(argv)
    finish_options(a)
    a.shared = a.shared or bool(a.redis_url)
    if a.gateways > 1 and not (a.shared and a.database_url):
        ap.error("--gateways N > 1 needs --shared (or --redis-url) and --database-url")
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    home = Path(tempfile.mkdtemp(prefix="tokenport-bench-"))
    mock = None
    gateways: list[subprocess.Popen[bytes]] = []
    t_start, cpu0 = time.monotonic(), time.process_time()

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        log(f"TOKENPORT_HOME={home}")
        mock, mock_url = start_mock(home, args.chunk_delay_ms)
        log(f"mock engine at {mock_url}")
        cfg = write_config(home, mock_url, args.database_url, args.shared, args.redis_url)
        ports = [free_port() for _ in range(args.gateways)]
        gw_urls = [f"http://127.0.0.1:{port}" for port in ports]
        key = governed_tenant(home, cfg)
        for i, port in enumerate(ports):
            gateways.append(start_gateway(home, cfg, port, i))
        for url, gateway in zip(gw_urls, gateways, strict=True):
            wait_health(url, gateway, timeout=60)
            wait_key_works(url, key, timeout=30)
        log(f"gateways at {', '.join(gw_urls)} (pids {[g.pid for g in gateways]}); measuring")
        usage = ProcUsage([g.pid for g in gateways])
        if args.pin:
            pin(usage, [mock.pid, os.getpid()])
        cells, closed, via_gw = loadgen.run(measure(args, mock_url, ",".join(gw_urls), key, usage, log))
        with urllib.request.urlopen(mock_url + "/mock/stats", timeout=5) as r:
            st = json.loads(r.read())
        log(
            f"mock saw (last request): keys {st['last_request_keys']}, "
            f"stream_options {st['last_stream_options']}; cancelled streams {st['streams_cancelled']}"
        )
        wall = time.monotonic() - t_start
        text = report(args, cells, closed, 100 * (time.process_time() - cpu0) / wall, wall)
        for gateway in gateways:  # a graceful stop flushes the usage writer
            stop(gateway)
            if gateway.returncode not in (0, -signal.SIGTERM):
                log(f"gateway exited with {gateway.returncode}")
        text += "\n" + metering_check(home, cfg, via_gw, len(gateways)) + "\n"
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(text)
        log(f"written to {args.out}")
        return 0
    except (RuntimeError, OSError, KeyError, json.JSONDecodeError) as exc:
        log(f"benchmark failed: {exc}")
        for name in [*(f"gateway{i or ''}.log" for i in range(args.gateways)), "mock.log"]:
            p = home / name
            if p.exists() and p.stat().st_size:
                log(f"--- tail of {p}:\n" + "\n".join(p.read_text(errors="replace").splitlines()[-30:]))
        args.keep = True
        return 1
    finally:
        clean_up([*gateways, mock], home, args.keep, log)


def clean_up(procs: list[subprocess.Popen[Any] | None], home: Path, keep: bool, log) -> None:
    """Stop the processes (in order), then remove the temporary home unless asked to keep it."""
    for proc in procs:
        stop(proc)
    if keep:
        log(f"kept {home}")
    else:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
