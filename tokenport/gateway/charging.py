"""Admit (money) and settle: the gateway's side of the accountant.

Admission quotes the model's price, asks whether the tenant's plan covers the request, and
otherwise holds the most the request can cost against the key's budget and the tenant's credit.
It answers 403 `model_not_priced`, 429 `plan_quota_exceeded`, `budget_exceeded` or
`insufficient_quota` (with `x-should-retry: false`) before any upstream call. Settlement prices
the engine's own counts and posts the charge.

Two strategies behind one interface (`Charging`), chosen by `charging_for` in `runtime.py`, with
one set of rules (the plan's windows here; the key's budget `billing.budgets.check_budget`; the
tenant's credit `billing.accountant.check_credit`):
- `LocalCharging` (one process, the default): everything in memory, no database round trip;
- `SharedCharging` (several processes on one database): one transaction per admission (or per
  batch of one tenant's concurrent admissions, `gateway/admission_queue.py`) on the tenant's
  shared state, which also applies the key's rate limits: in the database under the tenant's lock
  (`store/shared.py`), or in Redis when one is configured (`store/redis_state.py`, no database
  round trip); settlement posts the charge against the lots as they are then, in the usage
  writer's transaction.
"""

from __future__ import annotations

import asyncio
import logging
import math
from datetime import UTC, datetime, timedelta

from tokenport.billing.accountant import InsufficientQuota, ModelNotPriced, check_credit, max_cost
from tokenport.billing.admission import Ask, Charge, Grant, Unavailable, View
from tokenport.billing.budgets import BudgetExceeded, check_budget, period_start
from tokenport.billing.ledger import Ledger, Transaction
from tokenport.billing.plans import Plan, PlanUsage, Window, ratelimit_headers, retry_after
from tokenport.billing.prices import BillableTokens, Cost, Price, cost_of
from tokenport.gateway.admission_queue import AdmissionQueue, AdmissionStore, ThreadedStore
from tokenport.gateway.billing import BillingState
from tokenport.gateway.errors import ApiError
from tokenport.gateway.ratelimit import check_tokens, take_request
from tokenport.gateway.sse import Counts
from tokenport.money import nano_to_usd
from tokenport.store.shared import SharedStore
from tokenport.tenancy.keys import KeyRecord, new_id

log = logging.getLogger("tokenport.charging")

HOLD_TTL = timedelta(minutes=30)
ADMISSION_THREADS = 8  # shared mode; the database pool allows for them (store/db.py)


def not_priced(model: str) -> ApiError:
    return ApiError(
        403,
        f"The model '{model}' has no price in force, so it cannot be served",
        "permission_error",
        "model_not_priced",
        "model",
    )


def plan_exhausted(plan: Plan, windows: tuple[Window, Window], at: datetime) -> ApiError:
    wait = retry_after(windows, at)
    return ApiError(
        429,
        f"The '{plan.name}' plan's usage limit is reached; it resets in {wait} s.",
        "rate_limit_error",
        "plan_quota_exceeded",
        headers={"retry-after": str(wait), **ratelimit_headers(windows, at)},
    )


def over_budget(key: KeyRecord, exc: BudgetExceeded, at: datetime) -> ApiError:
    wait = max(1, math.ceil((exc.resets_at - at).total_seconds()))
    return ApiError(
        429,
        f"This key's {key.budget_period}ly budget of {nano_to_usd(exc.budget)} USD would be exceeded "
        f"(spent or held: {nano_to_usd(exc.spent)} USD; this request may cost up to "
        f"{nano_to_usd(exc.needed)} USD). It resets at {exc.resets_at.isoformat()}.",
        "insufficient_quota",
        "budget_exceeded",
        headers={"retry-after": str(wait)},
    )


def no_credit(exc: InsufficientQuota) -> ApiError:
    return ApiError(
        429,
        f"Insufficient credit: this request may cost up to {nano_to_usd(exc.needed)} USD and "
        f"{nano_to_usd(exc.available)} USD is available. Add credit, or lower max_tokens.",
        "insufficient_quota",
        "insufficient_quota",
    )


def plan_covers(plan: Plan, windows: tuple[Window, Window], at: datetime) -> bool:
    """True while both windows have room; past them, False if overage is charged, else refused."""
    if not any(w.exhausted for w in windows):
        return True
    if plan.overage == "block":
        raise plan_exhausted(plan, windows, at)
    return False  # overage "charge": the prepaid balance pays, like any other request


def unavailable() -> ApiError:
    return ApiError(
        503,
        "Admission is briefly unavailable (the shared state did not answer); retry shortly.",
        "api_error",
        "admission_unavailable",
        headers={"retry-after": "1"},
    )


class Charging:
    """What the lifecycle asks of admission and settlement, whatever the mode: the price and the
    most a request can cost are worked out here; holding it, and settling, are each mode's
    (`LocalCharging`, `SharedCharging`; `charging_for` picks one)."""

    def __init__(self, state: BillingState) -> None:
        self.state = state

    async def admit(
        self,
        request_id: str,
        key: KeyRecord,
        model: str,
        max_output: int | None,
        prompt_bound: int,
        context: int,
        at: datetime,
    ) -> tuple[Price, Plan | None]:
        """The price, and the plan when the tenant's plan covers the request (nothing is held then).
        `prompt_bound`: the most prompt tokens it can bill (counted, or the body's size in bytes)."""
        try:
            price = self.state.accountant.quote(model, at)
        except ModelNotPriced:
            raise not_priced(model) from None
        plan = self.state.plan_for(key.tenant_id)
        # Prompt tokens are at most the body's bytes (a token covers at least one byte) unless
        # counted; output at most what the request allows (`max_output`; None: the context).
        max_out = context if max_output is None else max_output
        amount = max_cost(price, min(prompt_bound, context), min(max_out, context))
        covered = await self.hold(request_id, key, plan, amount, at)
        return price, plan if covered else None

    @staticmethod
    def usage_fields(price: Price, counts: Counts) -> dict:
        """What the client's `usage` object gains: the cost, exact, in two spellings."""
        cost = cost_of(_billable(counts), price)
        return {"cost": nano_to_usd(cost.nano), "cost_nano_usd": cost.nano}

    # --- each mode ---

    async def hold(
        self, request_id: str, key: KeyRecord, plan: Plan | None, amount: int, at: datetime
    ) -> bool:
        """Hold `amount` against the key's budget and the tenant's credit, or raise the refusal;
        True (nothing held) when the plan covers the request."""
        raise NotImplementedError

    def settle_plan(self, key: KeyRecord, plan: Plan, model: str, counts: Counts | None, at: datetime) -> int:
        """Count a plan-covered request against the plan's windows; nothing is charged. Its units."""
        return 0 if counts is None else plan.units(model, counts.prompt + counts.completion)

    def settle(
        self,
        request_id: str,
        key: KeyRecord,
        price: Price,
        counts: Counts | None,
        started_at: datetime,
        at: datetime,
    ) -> tuple[Cost | None, Transaction | None]:
        """Price what was used; where this mode posts it here, the charge and the holds released."""
        raise NotImplementedError

    def charge(
        self,
        request_id: str,
        key: KeyRecord,
        price: Price | None,
        cost: Cost | None,
        counts: Counts | None,
        started_at: datetime,
        at: datetime,
    ) -> Charge | None:
        """What the usage writer does with the shared state for this request, if anything."""
        return None

    def release(self, request_id: str, key: KeyRecord, started_at: datetime) -> None:
        """Drop the request's holds without charging (its settlement failed)."""
        raise NotImplementedError

    def held(self, tenant_id: str, at: datetime) -> int:
        """Money held by the tenant's requests in flight."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class LocalCharging(Charging):
    """One process: holds, budgets and plan windows in memory, no round trip."""

    async def hold(
        self, request_id: str, key: KeyRecord, plan: Plan | None, amount: int, at: datetime
    ) -> bool:
        if plan is not None and plan_covers(plan, self.state.plan_usage.windows(plan, key.tenant_id, at), at):
            return True
        try:
            self.state.budgets.reserve(key.id, request_id, key.budget_nano_usd, key.budget_period, amount, at)
        except BudgetExceeded as exc:
            raise over_budget(key, exc, at) from None
        try:
            self.state.accountant.reserve(request_id, key.tenant_id, amount, at)
        except InsufficientQuota as exc:
            self.state.budgets.settle(key.id, request_id, None, 0, at)  # release the budget hold
            raise no_credit(exc) from None
        return False

    def settle_plan(self, key: KeyRecord, plan: Plan, model: str, counts: Counts | None, at: datetime) -> int:
        units = super().settle_plan(key, plan, model, counts, at)
        if units:
            self.state.plan_usage.add(key.tenant_id, units, at)
        return units

    def settle(
        self,
        request_id: str,
        key: KeyRecord,
        price: Price,
        counts: Counts | None,
        started_at: datetime,
        at: datetime,
    ) -> tuple[Cost | None, Transaction | None]:
        """Charge what was used (the ledger transaction goes to the writer) and release the holds
        (credit and key budget)."""
        if counts is None:  # nothing generated: nothing to charge
            self.release(request_id, key, started_at)
            return None, None
        cost, tx = self.state.accountant.settle(
            new_id("tx"), request_id, key.tenant_id, price, _billable(counts), started_at, at
        )
        self.state.budgets.settle(key.id, request_id, key.budget_period, cost.nano, started_at)
        return cost, tx

    def release(self, request_id: str, key: KeyRecord, started_at: datetime) -> None:
        self.state.accountant.release(request_id)
        self.state.budgets.settle(key.id, request_id, key.budget_period, 0, started_at)

    def held(self, tenant_id: str, at: datetime) -> int:
        return self.state.accountant.held(tenant_id)


class SharedCharging(Charging):
    """Several processes on one database: one transaction per admission (or per batch of one
    tenant's concurrent admissions) on the tenant's shared state, which also applies the key's
    rate limits; settlement posts the charge in the usage writer's transaction (`charge`)."""

    def __init__(self, state: BillingState, store: AdmissionStore, default_rpm: int = 0) -> None:
        super().__init__(state)
        self.store = store
        self.fast = store if not isinstance(store, ThreadedStore) else None  # Redis
        self.default_rpm = default_rpm  # applied here (the limiter does it in one process)
        self._queue = AdmissionQueue(store)
        self._releasing: set[asyncio.Task] = set()

    async def hold(
        self, request_id: str, key: KeyRecord, plan: Plan | None, amount: int, at: datetime
    ) -> bool:
        rpm = key.rpm_limit or self.default_rpm
        budget = bool(key.budget_nano_usd and key.budget_period and amount > 0)
        ask = Ask(
            request_id,
            key.tenant_id,
            key.id,
            at,
            money=amount > 0,
            budget=(key.budget_period, period_start(key.budget_period, at)) if budget else None,
            rpm=rpm > 0,
            tpm=bool(key.tpm_limit),
            plan=plan is not None,
        )
        if not (ask.money or ask.rpm or ask.tpm or ask.plan):
            return False  # nothing to hold or count: no round trip

        def decide(view: View) -> Grant:
            return _decide(view, key, plan, amount, at, rpm, budget)

        try:
            grant = await self._queue.admit(ask, decide)
        except Unavailable:
            raise unavailable() from None
        return grant.covered

    def settle(
        self,
        request_id: str,
        key: KeyRecord,
        price: Price,
        counts: Counts | None,
        started_at: datetime,
        at: datetime,
    ) -> tuple[Cost | None, Transaction | None]:
        """The cost only: the charge is posted by `charge()`'s item, with the usage record."""
        if counts is None:
            return None, None
        return cost_of(_billable(counts), price), None

    def charge(
        self,
        request_id: str,
        key: KeyRecord,
        price: Price | None,
        cost: Cost | None,
        counts: Counts | None,
        started_at: datetime,
        at: datetime,
    ) -> Charge | None:
        """Post the charge, release the hold, count the tokens: in the usage writer's transaction."""
        held = price is not None and not price.free  # admitted on money: a hold may exist
        tokens = counts.prompt + counts.completion if counts is not None and key.tpm_limit else 0
        if not held and not tokens:
            return None
        return Charge(
            request_id,
            key.tenant_id,
            key.id,
            at,
            tx_id=new_id("tx") if cost is not None and cost.nano > 0 else None,
            cost=cost.nano if cost is not None else 0,
            started_at=started_at,
            tokens=tokens,
        )

    def release(self, request_id: str, key: KeyRecord, started_at: datetime) -> None:
        """In the background, on the event loop (what fails there expires after `HOLD_TTL`)."""
        task = asyncio.get_running_loop().create_task(self._release(key.tenant_id, request_id))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def _release(self, tenant_id: str, request_id: str) -> None:
        try:
            await self.store.release(tenant_id, [request_id])
        except Exception as exc:
            log.warning("could not release the hold of %s (%s); it expires", request_id, type(exc).__name__)

    def held(self, tenant_id: str, at: datetime) -> int:
        return self.store.held(tenant_id, at)

    def close(self) -> None:
        self._queue.close()


def _decide(
    view: View, key: KeyRecord, plan: Plan | None, amount: int, at: datetime, rpm: int, budget: bool
) -> Grant:
    """The same rules as one process's, on the shared state as the transaction read it."""
    bucket = take_request(view.bucket, _us(at), rpm) if rpm > 0 else None
    if key.tpm_limit:
        check_tokens(view.tokens, int(at.timestamp()), key.tpm_limit)
    if plan is not None and plan_covers(plan, _plan_windows(view, key.tenant_id, plan, at), at):
        return Grant(bucket=bucket, covered=True)
    if amount <= 0:
        return Grant(bucket=bucket)
    if budget:
        try:
            check_budget(key.budget_nano_usd, view.key_used, amount, key.budget_period, at)
        except BudgetExceeded as exc:
            raise over_budget(key, exc, at) from None
    lots = Ledger.restore([lot for lot, _ in view.lots], {lot.account: n for lot, n in view.lots})
    try:
        check_credit(key.tenant_id, amount, lots.tenant_balance(key.tenant_id, at) - view.held)
    except InsufficientQuota as exc:
        raise no_credit(exc) from None
    return Grant(hold=amount, expires_at=at + HOLD_TTL, bucket=bucket)


def _plan_windows(view: View, tenant_id: str, plan: Plan, at: datetime) -> tuple[Window, Window]:
    """The plan's windows, from the units per minute the transaction read."""
    usage = PlanUsage()
    for minute, units in view.plan_minutes:
        usage.add(tenant_id, units, datetime.fromtimestamp(minute * 60, UTC))
    return usage.windows(plan, tenant_id, at)


def charging_for(
    state: BillingState,
    shared: SharedStore | None = None,
    default_rpm: int = 0,
    fast: AdmissionStore | None = None,
) -> Charging:
    """One process (`shared` None), or shared mode: admission in the database (`shared`), or in
    Redis (`fast`, with the database as the ledger)."""
    if shared is None:
        return LocalCharging(state)
    return SharedCharging(state, fast or ThreadedStore(shared, ADMISSION_THREADS), default_rpm)


def _billable(counts: Counts) -> BillableTokens:
    return BillableTokens.from_openai(counts.prompt, counts.cached, counts.completion)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _us(at: datetime) -> int:
    return (at - _EPOCH) // timedelta(microseconds=1)
