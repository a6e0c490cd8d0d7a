"""Admit (money) and settle: the gateway's side of the accountant.

Admission quotes the model's price and holds the most the request can cost; it answers
403 `model_not_priced` or 429 `insufficient_quota` (with `x-should-retry: false`) before any
upstream call. Settlement prices the engine's own counts and posts the charge.
"""

from __future__ import annotations

import math
from datetime import datetime

from tokenport.billing.accountant import InsufficientQuota, ModelNotPriced, max_cost
from tokenport.billing.budgets import BudgetExceeded
from tokenport.billing.ledger import Transaction
from tokenport.billing.money import nano_to_usd
from tokenport.billing.plans import Plan, ratelimit_headers, retry_after
from tokenport.billing.prices import BillableTokens, Cost, Price, cost_of
from tokenport.gateway.billing import BillingState
from tokenport.gateway.errors import ApiError
from tokenport.gateway.sse import Counts
from tokenport.tenancy.keys import KeyRecord, new_id


class Charging:
    def __init__(self, state: BillingState) -> None:
        self.state = state

    def admit(
        self,
        request_id: str,
        key: KeyRecord,
        model: str,
        body: dict,
        body_size: int,
        context: int,
        at: datetime,
    ) -> tuple[Price, Plan | None]:
        """The price, and the plan when the tenant's plan covers the request (nothing is held then)."""
        acct = self.state.accountant
        try:
            price = acct.quote(model, at)
        except ModelNotPriced:
            raise ApiError(
                403,
                f"The model '{model}' has no price in force, so it cannot be served",
                "permission_error",
                "model_not_priced",
                "model",
            ) from None
        plan = self.state.plan_for(key.tenant_id)
        if plan is not None:
            windows = self.state.plan_usage.windows(plan, key.tenant_id, at)
            if not any(w.exhausted for w in windows):
                return price, plan
            if plan.overage == "block":
                wait = retry_after(windows, at)
                raise ApiError(
                    429,
                    f"The '{plan.name}' plan's usage limit is reached; it resets in {wait} s.",
                    "rate_limit_error",
                    "plan_quota_exceeded",
                    headers={"retry-after": str(wait), **ratelimit_headers(windows, at)},
                )
            # overage "charge": past the plan's limits the prepaid balance pays, as below
        # Prompt tokens are at most the body's bytes (a token covers at least one byte).
        max_out = body.get("max_tokens") or body.get("max_completion_tokens") or context
        amount = max_cost(price, min(body_size, context), min(max_out, context))
        try:
            self.state.budgets.reserve(key.id, request_id, key.budget_nano_usd, key.budget_period, amount, at)
        except BudgetExceeded as exc:
            wait = max(1, math.ceil((exc.resets_at - at).total_seconds()))
            raise ApiError(
                429,
                f"This key's {key.budget_period}ly budget of {nano_to_usd(exc.budget)} USD would be exceeded "
                f"(spent or held: {nano_to_usd(exc.spent)} USD; this request may cost up to "
                f"{nano_to_usd(exc.needed)} USD). It resets at {exc.resets_at.isoformat()}.",
                "insufficient_quota",
                "budget_exceeded",
                headers={"retry-after": str(wait)},
            ) from None
        try:
            acct.reserve(request_id, key.tenant_id, amount, at)
        except InsufficientQuota as exc:
            self.state.budgets.settle(key.id, request_id, None, 0, at)  # release the budget hold
            raise ApiError(
                429,
                f"Insufficient credit: this request may cost up to {nano_to_usd(exc.needed)} USD and "
                f"{nano_to_usd(exc.available)} USD is available. Add credit, or lower max_tokens.",
                "insufficient_quota",
                "insufficient_quota",
            ) from None
        return price, None

    @staticmethod
    def usage_fields(price: Price, counts: Counts) -> dict:
        """What the client's `usage` object gains: the cost, exact, in two spellings."""
        cost = cost_of(BillableTokens.from_openai(counts.prompt, counts.cached, counts.completion), price)
        return {"cost": nano_to_usd(cost.nano), "cost_nano_usd": cost.nano}

    def settle_plan(self, key: KeyRecord, plan: Plan, model: str, counts: Counts | None, at: datetime) -> int:
        """Count a plan-covered request against the plan's windows; nothing is charged."""
        if counts is None:
            return 0
        units = plan.units(model, counts.prompt + counts.completion)
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
        """Charge what was used and release the holds (credit and key budget)."""
        cost = tx = None
        if counts is None:
            self.state.accountant.release(request_id)
        else:
            tokens = BillableTokens.from_openai(counts.prompt, counts.cached, counts.completion)
            cost, tx = self.state.accountant.settle(
                new_id("tx"), request_id, key.tenant_id, price, tokens, started_at, at
            )
        self.state.budgets.settle(key.id, request_id, key.budget_period, cost.nano if cost else 0, started_at)
        return cost, tx
