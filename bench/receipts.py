"""Receipts: the cost of building and signing one processing receipt (what GET /v1/receipts/{id}
does: find the audit entry, a signed head, an O(log n) inclusion proof from stored subtrees,
sign), and of verifying one offline, as the zone's log grows.

    python bench/receipts.py [--sizes 1000,10000,100000] [--samples 300] [--database-url URL]

Default database: a fresh SQLite file. Entries are written through the usage writer's own path
(`UsageStore.write_settlements`), so each size also reports the append rate.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tokenport.audit.receipts import verify_receipt
from tokenport.audit.service import AuditService
from tokenport.store.audit import AuditStore
from tokenport.store.db import open_database
from tokenport.store.usage import UsageStore


def row(i: int, t0: datetime) -> dict:
    started = t0 + timedelta(milliseconds=i)
    return {
        "request_id": f"req_{i:012d}",
        "tenant_id": "ten_bench",
        "key_id": "key_bench",
        "zone": "overseas",
        "other_zone": None,
        "endpoint": "chat",
        "model": "m",
        "backend": "b",
        "stream": True,
        "prompt_tokens": 100,
        "cached_tokens": 0,
        "completion_tokens": 50,
        "usage_source": "engine",
        "finish_reason": "stop",
        "status": 200,
        "error_code": None,
        "ttft_ms": 5,
        "duration_ms": 50,
        "client_disconnected": False,
        "cost_nano_usd": 1000,
        "plan_units": None,
        "request_sha256": "ab" * 32,
        "response_sha256": "cd" * 32,
        "retention": "none",
        "started_at": started,
        "finished_at": started + timedelta(milliseconds=50),
    }


def ms(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100)[int(q) - 1] * 1000 if len(samples) > 1 else samples[0] * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--database-url")
    args = ap.parse_args()
    url = args.database_url or f"sqlite:///{tempfile.mkdtemp()}/bench.db"
    engine = open_database(url)
    usage = UsageStore(engine)
    audit = AuditService(AuditStore(engine), Path(tempfile.mkdtemp()) / "keys")
    t0 = datetime.now(UTC)
    written = 0
    print(f"database: {engine.dialect.name}")
    print("entries   append/s   build p50 ms   build p99 ms   verify p50 ms")
    for size in (int(s) for s in args.sizes.split(",")):
        start = time.perf_counter()
        for lo in range(written, size, 500):
            usage.write_settlements([{"usage": row(i, t0)} for i in range(lo, min(lo + 500, size))])
        rate = (size - written) / (time.perf_counter() - start)
        written = size
        audit.sign_heads()
        ids = [f"req_{random.randrange(size):012d}" for _ in range(args.samples)]
        build, check = [], []
        for rid in ids:
            s = time.perf_counter()
            doc = audit.receipt(rid, "ten_bench")
            build.append(time.perf_counter() - s)
            s = time.perf_counter()
            assert doc is not None and verify_receipt(doc) == []
            check.append(time.perf_counter() - s)
        b50, b99, v50 = ms(build, 50), ms(build, 99), ms(check, 50)
        print(f"{size:>7}   {rate:>8.0f}   {b50:>12.2f}   {b99:>12.2f}   {v50:>13.2f}")


if __name__ == "__main__":
    main()
