"""Settlement throughput: usage events settled (priced, posted to the in-memory ledger, and
persisted by the batched writer's path with their usage records) per second.

    python bench/settlement.py [--events 20000] [--database-url URL]

Default database: a fresh SQLite file. Reports the in-memory cost per request of reserve +
settle (what admission and settlement add to a request) and the end-to-end rate to the database.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert

from tokenport.billing.accountant import Accountant, max_cost
from tokenport.billing.ledger import Ledger, grant_tx
from tokenport.billing.prices import BillableTokens, Price, PriceBook
from tokenport.billing.service import BillingService
from tokenport.store.billing import BillingStore, write_transactions
from tokenport.store.db import open_database
from tokenport.store.schema import usage
from tokenport.store.tenants import TenantStore
from tokenport.tenancy.service import TenancyService


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--database-url")
    args = ap.parse_args()
    url = args.database_url or f"sqlite:///{tempfile.mkdtemp()}/bench.db"
    engine = open_database(url)
    tenancy = TenancyService(TenantStore(engine), "overseas")
    tenant = tenancy.create_tenant(f"bench{int(time.time() * 1000) % 10**9}")
    billing = BillingService(BillingStore(engine), tenancy)
    lot = billing.grant(tenant.name, "1000000")

    now = datetime.now(UTC)
    price = Price("m", now - timedelta(days=1), 300_000, 1_200_000, 30_000)
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
    t0 = time.perf_counter()
    for i in range(0, args.events, args.batch):
        with engine.begin() as conn:
            conn.execute(insert(usage), rows[i : i + args.batch])
            write_transactions(conn, txs[i : i + args.batch])
    persist = time.perf_counter() - t0

    problems = billing.verify()
    dialect = engine.dialect.name
    print(
        f"| {dialect} | {args.events} | {in_memory / args.events * 1e6:.1f} µs | "
        f"{args.events / persist:,.0f} | {args.events / (in_memory + persist):,.0f} | "
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
