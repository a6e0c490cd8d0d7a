"""Device fleets' benchmark figures (docs/benchmarks.md, "Device fleets"):

- `--import N`: `tokenport devices import` of N serials (with the flashing station's secrets
  file), then the same file again (nothing new): wall time and the CLI's peak memory.
- `--memory N`: what a gateway keeps per device: N devices in the directory, each with its two
  quota counters and a rate bucket (tracemalloc, in process).
- `--path RATE`: the device path against the plain key path on one gateway over the mock engine,
  interleaved open-loop rounds at RATE requests/s: added p50 / p99.

Usage: .venv/bin/python bench/fleets.py --import 1000000 --memory 100000 --path 500
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadgen
from run_bench import (
    MODEL,
    child_env,
    free_port,
    governed_tenant,
    start_gateway,
    start_mock,
    stop,
    tokenport_cmd,
    wait_health,
    wait_key_works,
    write_config,
)

from tokenport.clock import FakeClock
from tokenport.fleets.identity import activation_mac
from tokenport.fleets.quotas import DeviceQuotas
from tokenport.fleets.records import ACTIVE, Device, Fleet, Product
from tokenport.gateway.device_gate import DeviceGate
from tokenport.gateway.devices import DeviceDirectory
from tokenport.gateway.ratelimit import RateLimiter
from tokenport.tenancy.records import Tenant


def cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*tokenport_cmd(), *args], env=child_env(home), capture_output=True, text=True, check=True
    )


def maker(home: Path, cfg: Path) -> None:
    """Tenant `bench` (made by governed_tenant) gets a fleet `toys` and a product `TOY`."""
    c = ("--config", str(cfg))
    cli(home, "fleets", "create", "bench", "toys", *c)
    cli(home, "products", "create", "toys", "TOY", "--entitlement-days", "365", "--daily-tokens",
        "100000000", "--monthly-tokens", "1000000000", *c)  # fmt: skip


def bench_import(n: int) -> str:
    home = Path(tempfile.mkdtemp(prefix="tokenport-fleet-import-"))
    try:
        cfg = write_config(home, "http://127.0.0.1:9")
        governed_tenant(home, cfg)
        maker(home, cfg)
        csv_path = home / "serials.csv"
        with csv_path.open("w") as f:
            f.write("serial\n")
            f.writelines(f"TOY-{i:08d}\n" for i in range(n))
        rows = []
        for label, extra in (("first import", ("--secrets-out", str(home / "secrets.csv"))), ("again", ())):
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            t0 = time.monotonic()
            cli(home, "devices", "import", "toys", "--sku", "TOY", "--batch", "B1", "--csv", str(csv_path),
                "--config", str(cfg), *extra)  # fmt: skip
            wall = time.monotonic() - t0
            peak = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
            rows.append(f"| {label} | {n:,} | {wall:.1f} s | {n / wall:,.0f} | {peak:.0f} MiB |")
        head = "| import | serials | wall | serials/s | CLI peak RSS |\n|---|---|---|---|---|"
        return head + "\n" + "\n".join(rows)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def bench_memory(n: int) -> str:
    """Directory entries, quota counters and rate buckets of `n` devices that called today."""
    clock = FakeClock(datetime(2026, 12, 6, 12, tzinfo=UTC))
    fleet = Fleet("flt_bench", "ten_bench", "toys", "overseas")
    tenant = Tenant("ten_bench", "bench", "overseas", clock.now(), None)
    product = Product("prd_bench", fleet.id, "TOY", 365, 10**8, 10**9, rpm=60, reset_tz="Asia/Tokyo")
    ends = clock.now() + timedelta(days=365)

    class Reader:
        def device(self, serial: str) -> Device:
            return Device(serial, fleet.id, product.id, "bat_bench", ACTIVE, clock.now(), ends)

        def product_by_id(self, product_id: str) -> Product:
            return product

        def fleet_by_id(self, fleet_id: str) -> Fleet:
            return fleet

    gate = DeviceGate(DeviceQuotas(), RateLimiter(clock), clock)
    directory = DeviceDirectory(Reader(), lambda _: tenant, b"k" * 32, clock, max_devices=n)

    async def fill() -> None:
        for i in range(n):
            entry = await directory.lookup(f"TOY-{i:08d}")
            assert entry is not None
            gate.reserve(f"r{i}", entry, MODEL, 100, clock.now())  # a hold, then settled: counters stay
            gate.settle(f"r{i}", entry, MODEL, 30, clock.now())
            gate.limiter.admit("dev:" + entry.device.serial, product.rpm)

    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    asyncio.run(fill())
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return (
        "| devices in memory | traced | per device |\n|---|---|---|\n"
        f"| {n:,} | {used / 2**20:.1f} MiB | {used / n:.0f} B |"
    )


def _activate(url: str, serial: str, secret: bytes) -> str:
    with httpx.Client(base_url=url, timeout=10) as http:
        nonce = http.post("/v1/devices/challenge", json={"serial": serial}).json()["nonce"]
        mac = activation_mac(secret, serial, nonce)
        r = http.post("/v1/devices/activate", json={"serial": serial, "nonce": nonce, "mac": mac})
        r.raise_for_status()
        return r.json()["device_token"]


async def _interleaved(url: str, key: str, token: str, rate: float, rounds: int, seconds: float) -> dict:
    out: dict[str, list[loadgen.Result]] = {"key": [], "device": []}
    for secret in (key, token):  # warm-up, discarded
        await loadgen.open_loop(url, rate, 1.0, key=secret, model=MODEL)
    for _ in range(rounds):
        for who, secret in (("key", key), ("device", token)):
            out[who].append(await loadgen.open_loop(url, rate, seconds, key=secret, model=MODEL, target=who))
    return out


def bench_path(rate: float, rounds: int = 3, seconds: float = 8.0) -> str:
    home = Path(tempfile.mkdtemp(prefix="tokenport-fleet-path-"))
    procs = []
    try:
        mock, mock_url = start_mock(home, 0.0)
        procs.append(mock)
        cfg = write_config(home, mock_url)
        key = governed_tenant(home, cfg)
        maker(home, cfg)
        (home / "one.csv").write_text("TOY-1\n")
        one, secrets = home / "one.csv", home / "secret.csv"
        cli(home, "devices", "import", "toys", "--sku", "TOY", "--batch", "B1", "--csv", str(one),
            "--secrets-out", str(secrets), "--config", str(cfg))  # fmt: skip
        secret = bytes.fromhex(secrets.read_text().splitlines()[1].split(",")[1])
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        gateway = start_gateway(home, cfg, port)
        procs.insert(0, gateway)
        wait_health(url, gateway, timeout=60)
        wait_key_works(url, key, timeout=30)
        token = _activate(url, "TOY-1", secret)
        results = loadgen.run(_interleaved(url, key, token, rate, rounds, seconds))
        lines = ["| path | ok / sent | p50 | p99 |", "|---|---|---|---|"]
        for who, res in results.items():
            lat = sorted(x for r in res for x in r.latencies)
            sent, ok = sum(r.sent for r in res), sum(r.ok for r in res)
            p50, p99 = lat[len(lat) // 2] * 1000, lat[int(len(lat) * 0.99)] * 1000
            lines.append(f"| {who} | {ok} / {sent} | {p50:.2f} ms | {p99:.2f} ms |")
        return "\n".join(lines)
    finally:
        for p in procs:
            stop(p)
        shutil.rmtree(home, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--import", dest="import_n", type=int, default=0, help="serials to import")
    ap.add_argument("--memory", type=int, default=0, help="devices held in memory")
    ap.add_argument("--path", type=float, default=0, help="requests/s for the device vs key path")
    a = ap.parse_args()
    if a.import_n:
        print(bench_import(a.import_n), flush=True)
    if a.memory:
        print(bench_memory(a.memory), flush=True)
    if a.path:
        print(bench_path(a.path), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
