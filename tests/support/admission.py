"""A shared-mode admission harness: the real `Charging` over the real stores (the database, and
Redis where given), with an injected clock; each `process()` is another gateway process."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy import Engine

from support.rows import usage_row
from tokenport.billing.service import BillingService
from tokenport.clock import FakeClock
from tokenport.gateway.billing import BillingState
from tokenport.gateway.charging import Charging, charging_for
from tokenport.gateway.errors import ApiError
from tokenport.gateway.sse import Counts
from tokenport.store.billing import BillingStore
from tokenport.store.feed import snapshot
from tokenport.store.redis_state import RedisState
from tokenport.store.repositories import billing_repositories
from tokenport.store.shared import SharedStore
from tokenport.store.tenants import TenantStore
from tokenport.store.usage import UsageStore
from tokenport.tenancy.keys import KeyRecord
from tokenport.tenancy.service import TenancyService

MAX_OUTPUT = 100  # the request's max_tokens
# 100 body bytes x $0.30/M + 100 output tokens x $1.20/M = 150,000 nano-USD held per request.
HOLD = 150_000


class Harness:
    def __init__(self, engine: Engine, clock: FakeClock, redis_url: str | None = None) -> None:
        self.engine, self.clock, self.redis_url = engine, clock, redis_url
        self.tenancy = TenancyService(TenantStore(engine), "overseas", clock)
        self.billing = BillingService(billing_repositories(engine), self.tenancy, clock)
        self.usage = UsageStore(engine)
        self.tenant = self.tenancy.create_tenant("acme")
        self.billing.set_price("m", "0.30", "1.20", effective_from=clock.now() - timedelta(days=1))
        self.state = BillingState(BillingStore(engine), self.usage, clock)
        with snapshot(engine) as conn:
            self.state.load(conn)
        self.shared = SharedStore(engine)
        self.redis = RedisState(redis_url, engine) if redis_url else None
        self.usage.mirror = self.redis  # Redis: settlements are mirrored there
        self.charging = charging_for(self.state, self.shared, fast=self.redis)  # for settlement

    def key(self, key_id: str = "key_a", **limits) -> KeyRecord:
        limits.setdefault("rpm_limit", None)
        return KeyRecord(key_id, self.tenant.id, "acme", "overseas", "h", revoked=False, **limits)

    def process(self) -> Charging:
        """Another gateway process's admission (its own queue, threads and Redis connections) on
        the same database (and Redis)."""
        fast = RedisState(self.redis_url, self.engine) if self.redis_url else None
        return charging_for(self.state, SharedStore(self.engine), fast=fast)

    def held(self) -> int:
        return self.charging.held(self.tenant.id, self.clock.now())

    def admit(self, request_id: str, key: KeyRecord, charging: Charging | None = None) -> str:
        return asyncio.run(self.admit_async(request_id, key, charging or self.process()))

    async def admit_async(self, request_id: str, key: KeyRecord, charging: Charging) -> str:
        try:
            await charging.admit(request_id, key, "m", MAX_OUTPUT, 100, 1000, self.clock.now())
            return "ok"
        except ApiError as exc:
            return exc.code or str(exc.status)

    def settle(self, request_id: str, key: KeyRecord, prompt: int = 10, completion: int = 20) -> int:
        """What the settler hands the writer for a finished request; returns its cost."""
        now = self.clock.now()
        price = self.state.accountant.quote("m", now)
        counts = Counts(prompt=prompt, completion=completion)
        cost, tx = self.charging.settle(request_id, key, price, counts, now, now)
        assert tx is None  # shared mode: the writer posts the charge
        charge = self.charging.charge(request_id, key, price, cost, counts, now, now)
        row = usage_row(request_id, self.tenant.id, now, key_id=key.id, cost_nano_usd=cost.nano)
        self.item = {"usage": row, "tx": None, "charge": charge}
        self.usage.write_settlements([self.item])
        return cost.nano
