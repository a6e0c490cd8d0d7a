"""Settlement throughput: usage events settled (priced, posted to the ledger, and persisted by
the batched writer's own path, `UsageStore.write_settlements`, with their usage records) per second.

    python bench/settlement.py [--events 20000] [--database-url URL] [--shared]

Default database: a fresh SQLite file. One process (default): reports the in-memory cost per
request of reserve + settle and the end-to-end rate to the database. `--shared`: admission is
the shared mode's database transaction per request (p50 / p99 reported) and settlement allocates
each charge against the lots in the writer's transaction.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from datetime import UTC, datetime, timedelta

from tokenport.billing.accountant import Accountant, max_cost
from tokenport.billing.ledger import Ledger, grant_tx
from tokenport.billing.prices import BillableTokens, Price, PriceBook
from tokenport.billing.service import BillingService
from tokenport.store.billing import BillingStore
from tokenport.store.db import open_database
from tokenport.store.repositories import billing_repositories
from tokenport.store.tenants import TenantStore
from tokenport.store.usage import UsageStore
from tokenport.tenancy.service import TenancyService


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--database-url")
    ap.add_argument("--shared", action="store_true", help="several-process mode (admission in the database)")
    args = ap.parse_args()
    url = args.database_url or f"sqlite:///{tempfile.mkdtemp()}/bench.db"
    engine = open_database(url)
    tenancy = TenancyService(TenantStore(engine), "overseas")
    tenant = tenancy.create_tenant(f"bench{int(time.time() * 1000) % 10**9}")
    billing = BillingService(billing_repositories(engine), tenancy)
    lot = billing.grant(tenant.name, "1000000")

    now = datetime.now(UTC)
    price = Price("m", now - timedelta(days=1), 300_000, 1_200_000, 30_000)
    if args.shared:
        return shared(args, engine, billing, tenant, price, now)
    ledger = Ledger()
    ledger.add_lot(lot)
    ledger.post(grant_tx("g", lot))
    acct = Accountant(ledger, PriceBook([price]))

    # In memory: reserve + settle per request.
    t0 = time.perf_counter()
    txs, rows = [], []
    for i in range(args.events):
        rid = f"req_{i:012d}"
        p = acct.quote("m", now)
        acct.reserve(rid, tenant.id, max_cost(p, 200, 100), now)
        _, tx = acct.settle(
            f"tx_{i:012d}", rid, tenant.id, p, BillableTokens.from_openai(150, 50, 80), now, now
        )
        txs.append(tx)
        rows.append(_usage_row(rid, tenant.id, now))
    in_memory = time.perf_counter() - t0

    # Persist in batches, usage row and ledger transaction in one database transaction.
    store = UsageStore(engine)
    t0 = time.perf_counter()
    for i in range(0, args.events, args.batch):
        store.write_settlements(
            [
                {"usage": r, "tx": tx}
                for r, tx in zip(rows[i : i + args.batch], txs[i : i + args.batch], strict=True)
            ]
        )
    persist = time.perf_counter() - t0

    problems = billing.verify()
    dialect = engine.dialect.name
    print(
        f"| {dialect} | {args.events} | {in_memory / args.events * 1e6:.1f} µs | "
        f"{args.events / persist:,.0f} | {args.events / (in_memory + persist):,.0f} | "
        f"{'ok' if not problems else problems[:3]} |"
    )


def shared(args, engine, billing, tenant, price, now) -> None:
    """Admission through the shared mode's real path (a database transaction per request, in a
    worker thread, as the gateway does it), then settlement through the writer's path."""
    from tokenport.billing.prices import BillableTokens, cost_of
    from tokenport.gateway.billing import BillingState
    from tokenport.gateway.charging import charging_for
    from tokenport.gateway.sse import Counts
    from tokenport.store.feed import snapshot
    from tokenport.store.shared import SharedStore
    from tokenport.tenancy.keys import KeyRecord

    billing.set_price("m", "0.30", "1.20", "0.03", effective_from=now - timedelta(days=1))
    state = BillingState(BillingStore(engine), UsageStore(engine), billing.clock)
    with snapshot(engine) as conn:
        state.load(conn)
    charging = charging_for(state, SharedStore(engine))
    key = KeyRecord("key_bench", tenant.id, tenant.name, "overseas", "h", None, False)
    body = {"max_tokens": 100}
    admit_ms: list[float] = []

    async def admit_all() -> None:
        for i in range(args.events):
            t0 = time.perf_counter()
            await charging.admit(f"req_{i:012d}", key, "m", body, 200, 4096, now)
            admit_ms.append((time.perf_counter() - t0) * 1000)

    asyncio.run(admit_all())
    counts = Counts(prompt=150, cached=50, completion=80)
    cost = cost_of(BillableTokens.from_openai(150, 50, 80), price)
    items = []
    for i in range(args.events):
        rid = f"req_{i:012d}"
        charge = charging.charge(rid, key, price, cost, counts, now, now)
        items.append(
            {"usage": {**_usage_row(rid, tenant.id, now), "cost_nano_usd": cost.nano}, "charge": charge}
        )
    store = UsageStore(engine)
    t0 = time.perf_counter()
    for i in range(0, args.events, args.batch):
        store.write_settlements(items[i : i + args.batch])
    persist = time.perf_counter() - t0
    problems = billing.verify()
    admit_ms.sort()
    p50, p99 = admit_ms[len(admit_ms) // 2], admit_ms[int(len(admit_ms) * 0.99)]
    print(
        f"| {engine.dialect.name} (shared) | {args.events} | admission p50 {p50:.2f} ms, "
        f"p99 {p99:.2f} ms | {args.events / persist:,.0f} | "
        f"{'ok' if not problems else problems[:3]} |"
    )


def _usage_row(rid: str, tenant_id: str, at: datetime) -> dict:
    return dict(
        request_id=rid,
        tenant_id=tenant_id,
        key_id="key_bench",
        zone="overseas",
        endpoint="chat",
        model="m",
        backend="b",
        stream=True,
        prompt_tokens=150,
        cached_tokens=50,
        completion_tokens=80,
        usage_source="engine",
        finish_reason="stop",
        status=200,
        error_code=None,
        ttft_ms=5,
        duration_ms=50,
        client_disconnected=False,
        started_at=at,
        finished_at=at,
    )


if __name__ == "__main__":
    main()
