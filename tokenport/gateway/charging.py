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

A fleet's device adds its part to the same admission (`DeviceAsk`, from `gateway/device_gate.py`):
its local day and month quotas, its streams at once and (shared mode) its requests per minute, by
the rules of `fleets.quotas.check_device`, before the money; held with the money or not at all.
One process holds it in memory (`DeviceQuotas`); shared mode reads the device's settled units
(`device_days`) and holds in the admission's transaction and writes its hold there.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from tokenport.billing.accountant import InsufficientQuota, ModelNotPriced, check_credit, max_cost
from tokenport.billing.admission import Ask, Charge, DeviceAsk, Grant, Unavailable, View
from tokenport.billing.budgets import BudgetExceeded, check_budget, period_start
from tokenport.billing.ledger import Ledger, Transaction
from tokenport.billing.plans import Plan, PlanUsage, Window, ratelimit_headers, retry_after
from tokenport.billing.prices import BillableTokens, Cost, Price, cost_of
from tokenport.fleets.quotas import (
    DeviceBusy,
    DeviceQuotaExceeded,
    DeviceQuotas,
    check_device,
    device_left,
)
from tokenport.gateway.admission_queue import AdmissionQueue, AdmissionStore, ThreadedStore
from tokenport.gateway.billing import BillingState
from tokenport.gateway.device_gate import device_refusal
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
        device: DeviceAsk | None = None,
    ) -> tuple[Price, Plan | None, int | None]:
        """The price; the plan when the tenant's plan covers the request (no money is held then);
        and, for a device, what it has left once this request's hold is counted. `prompt_bound`:
        the most prompt tokens it can bill (counted, or the body's size in bytes). The device's
        hold and the money's are taken together or not at all."""
        try:
            price = self.state.accountant.quote(model, at)
        except ModelNotPriced:
            raise not_priced(model) from None
        plan = self.state.plan_for(key.tenant_id)
        # Prompt tokens are at most the body's bytes (a token covers at least one byte) unless
        # counted; output at most what the request allows (`max_output`; None: the context).
        max_out = context if max_output is None else max_output
        amount = max_cost(price, min(prompt_bound, context), min(max_out, context))
        covered, left = await self.hold(request_id, key, plan, amount, at, device)
        return price, plan if covered else None, left

    @staticmethod
    def usage_fields(price: Price, counts: Counts) -> dict:
        """What the client's `usage` object gains: the cost, exact, in two spellings."""
        cost = cost_of(_billable(counts), price)
        return {"cost": nano_to_usd(cost.nano), "cost_nano_usd": cost.nano}

    # --- each mode ---

    async def hold(
        self,
        request_id: str,
        key: KeyRecord,
        plan: Plan | None,
        amount: int,
        at: datetime,
        device: DeviceAsk | None = None,
    ) -> tuple[bool, int | None]:
        """Hold the device's ask, then `amount` against the key's budget and the tenant's credit,
        or raise the refusal holding nothing; (True when the plan covers the request and no money
        is held, what the device has left)."""
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
        device: str | None = None,
    ) -> Charge | None:
        """What the usage writer does with the shared state for this request, if anything;
        `device`: the serial whose hold the request has (its units are on the usage record)."""
        return None

    def settle_device(self, request_id: str, serial: str, units: int) -> None:
        """Count what a device's request used and release its hold, where this mode does it here
        (shared mode: with the usage record, `charge`)."""

    def release_device(self, request_id: str, key: KeyRecord, serial: str) -> None:
        """Drop a device's hold without counting (its settlement failed)."""
        raise NotImplementedError

    def release(self, request_id: str, key: KeyRecord, started_at: datetime) -> None:
        """Drop the request's holds without charging (its settlement failed)."""
        raise NotImplementedError

    def held(self, tenant_id: str, at: datetime) -> int:
        """Money held by the tenant's requests in flight."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class LocalCharging(Charging):
    """One process: holds, budgets, plan windows and devices' quotas in memory, no round trip.
    A device's requests per minute are the rate limiter's, in the device step (as a key's are)."""

    def __init__(self, state: BillingState, quotas: DeviceQuotas | None = None) -> None:
        super().__init__(state)
        self.quotas = quotas if quotas is not None else DeviceQuotas()

    async def hold(
        self,
        request_id: str,
        key: KeyRecord,
        plan: Plan | None,
        amount: int,
        at: datetime,
        device: DeviceAsk | None = None,
    ) -> tuple[bool, int | None]:
        if device is None:
            return self._hold_money(request_id, key, plan, amount, at), None
        try:
            self.quotas.hold(request_id, device)
        except (DeviceQuotaExceeded, DeviceBusy) as exc:
            raise device_refusal(exc, at) from None
        try:
            covered = self._hold_money(request_id, key, plan, amount, at)
        except BaseException:
            self.quotas.settle(request_id, device.serial, 0)  # the money refused: no device hold
            raise
        return covered, self.quotas.left(device)

    def _hold_money(
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

    def settle_device(self, request_id: str, serial: str, units: int) -> None:
        self.quotas.settle(request_id, serial, units)

    def release_device(self, request_id: str, key: KeyRecord, serial: str) -> None:
        self.quotas.settle(request_id, serial, 0)

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
        self,
        request_id: str,
        key: KeyRecord,
        plan: Plan | None,
        amount: int,
        at: datetime,
        device: DeviceAsk | None = None,
    ) -> tuple[bool, int | None]:
        # a device token's maker key (no secret of its own): the device's limits, not the default
        rpm = key.rpm_limit or (self.default_rpm if key.key_hash else 0)
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
            device=device,
        )
        if not (ask.money or ask.rpm or ask.tpm or ask.plan or device is not None):
            return False, None  # nothing to hold or count: no round trip

        def decide(view: View) -> Grant:
            return _decide(view, key, plan, amount, at, rpm, budget, device)

        try:
            grant = await self._queue.admit(ask, decide)
        except Unavailable:
            raise unavailable() from None
        return grant.covered, grant.device_left

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
        device: str | None = None,
    ) -> Charge | None:
        """Post the charge, release the holds (money, the device's), count the tokens: in the
        usage writer's transaction."""
        held = price is not None and not price.free  # admitted on money: a hold may exist
        tokens = counts.prompt + counts.completion if counts is not None and key.tpm_limit else 0
        if not held and not tokens and device is None:
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
            device_serial=device,
        )

    def release(self, request_id: str, key: KeyRecord, started_at: datetime) -> None:
        """In the background, on the event loop (what fails there expires after `HOLD_TTL`); the
        device's hold of the request, if any, goes with it."""
        self._spawn_release(key.tenant_id, request_id)

    def _spawn_release(self, tenant_id: str, request_id: str) -> None:
        task = asyncio.get_running_loop().create_task(self._release(tenant_id, request_id))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    def release_device(self, request_id: str, key: KeyRecord, serial: str) -> None:
        """The store drops a request's holds together, the money's and the device's."""
        self._spawn_release(key.tenant_id, request_id)

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
    view: View,
    key: KeyRecord,
    plan: Plan | None,
    amount: int,
    at: datetime,
    rpm: int,
    budget: bool,
    device: DeviceAsk | None = None,
) -> Grant:
    """The same rules as one process's, on the shared state as the transaction read it: the
    device's part first (its day, month, streams, rate), then the key's and the money's. Refused
    anywhere, nothing is written; granted, both holds are."""
    if device is None:
        return _decide_money(view, key, plan, amount, at, rpm, budget)
    device_bucket, left = _decide_device(view, device, at)
    grant = _decide_money(view, key, plan, amount, at, rpm, budget)
    return replace(
        grant,
        expires_at=grant.expires_at or at + HOLD_TTL,
        device_hold=device.units_most,
        device_bucket=device_bucket,
        device_left=left,
    )


def _decide_device(view: View, device: DeviceAsk, at: datetime) -> tuple[tuple[int, int] | None, int]:
    """The device's part (`fleets.quotas.check_device`, then its requests per minute): its new
    rate bucket and what it has left once this request's hold is counted; or the refusal."""
    try:
        check_device(device, view.device_day_used, view.device_month_used, view.device_streams)
    except (DeviceQuotaExceeded, DeviceBusy) as exc:
        raise device_refusal(exc, at) from None
    bucket = take_request(view.device_bucket, _us(at), device.rpm) if device.rpm else None
    return bucket, device_left(device, view.device_day_used, view.device_month_used)


def _decide_money(
    view: View, key: KeyRecord, plan: Plan | None, amount: int, at: datetime, rpm: int, budget: bool
) -> Grant:
    """The key's rate limits, the plan, the key's budget and the tenant's credit."""
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
    quotas: DeviceQuotas | None = None,
) -> Charging:
    """One process (`shared` None; devices' quotas in `quotas`, which the device step reads too),
    or shared mode: admission in the database (`shared`), or in Redis (`fast`, with the database
    as the ledger)."""
    if shared is None:
        return LocalCharging(state, quotas)
    return SharedCharging(state, fast or ThreadedStore(shared, ADMISSION_THREADS), default_rpm)


def _billable(counts: Counts) -> BillableTokens:
    return BillableTokens.from_openai(counts.prompt, counts.cached, counts.completion)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _us(at: datetime) -> int:
    return (at - _EPOCH) // timedelta(microseconds=1)
