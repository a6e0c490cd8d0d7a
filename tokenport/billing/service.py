"""Billing administration shared by the CLI and (later) the admin API: prices, credits, balances,
expiry and verification."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from tokenport.billing.invoices import (
    InvoiceConflict,
    InvoiceError,
    build_invoice,
    canonical,
    period_bounds,
    product_lines,
)
from tokenport.billing.ledger import Ledger, LedgerError, Lot, fee_tx, fee_tx_id, grant_tx, lot_account
from tokenport.billing.ledger_verify import cache_problems, package_problems, verify
from tokenport.billing.plans import OVERAGE, UNITS, Plan, PlanConflict, parse_multipliers
from tokenport.billing.ports import BillingRepositories
from tokenport.billing.prices import Price, PriceBook
from tokenport.clock import Clock, SystemClock
from tokenport.money import (
    MoneyError,
    nano_to_usd,
    nano_usd_to_cny,
    rate_to_micro,
    usd_per_m_to_price,
    usd_to_nano,
)
from tokenport.tenancy.keys import NAME_RE, new_id
from tokenport.tenancy.records import Tenant
from tokenport.tenancy.service import InvalidInput, NotFound, TenancyService


@dataclass(frozen=True)
class LotBalance:
    lot: Lot
    remaining: int
    expired: bool


@dataclass(frozen=True)
class Balance:
    tenant: str
    tenant_id: str
    available: int  # nano-USD spendable now
    lots: list[LotBalance]


class BillingService:
    def __init__(
        self, repos: BillingRepositories, tenancy: TenancyService, clock: Clock | None = None
    ) -> None:
        self.store = repos.ledger
        self.invoices = repos.invoices
        self.plan_store = repos.plans
        self.usage = repos.usage
        self.packages = repos.packages
        self.tenancy = tenancy
        self.clock = clock or SystemClock()

    # --- prices ---

    def set_price(
        self,
        model: str,
        input_usd_per_m: str | None,
        output_usd_per_m: str | None,
        cached_usd_per_m: str | None = None,
        reasoning_usd_per_m: str | None = None,
        free: bool = False,
        effective_from: datetime | None = None,
    ) -> Price:
        if not isinstance(model, str) or not 0 < len(model) <= 128:
            raise InvalidInput("model must be 1 to 128 characters")
        if free:
            values = (0, 0, 0, None)
        else:
            if input_usd_per_m is None or output_usd_per_m is None:
                raise InvalidInput("--input and --output are required (or --free)")
            try:
                inp = usd_per_m_to_price(input_usd_per_m, "input price")
                out = usd_per_m_to_price(output_usd_per_m, "output price")
                cached = usd_per_m_to_price(cached_usd_per_m, "cached price") if cached_usd_per_m else inp
                reasoning = (
                    usd_per_m_to_price(reasoning_usd_per_m, "reasoning price")
                    if reasoning_usd_per_m
                    else None
                )
            except MoneyError as exc:
                raise InvalidInput(str(exc)) from None
            values = (inp, out, cached, reasoning)
        now = self.clock.now()
        price = Price(
            model, effective_from or now, *values[:2], cached=values[2], reasoning=values[3], free=free
        )
        try:
            self.store.insert_price(price, now)
        except LedgerError as exc:
            raise InvalidInput(str(exc)) from None
        return price

    def price_book(self) -> PriceBook:
        return PriceBook(self.store.load_prices())

    # --- credits ---

    def grant(
        self, tenant_name: str, amount_usd: str, expires_at: datetime | None = None, promo: bool = False
    ) -> Lot:
        tenant = self.tenancy.tenant(tenant_name)
        try:
            amount = usd_to_nano(amount_usd)
        except MoneyError as exc:
            raise InvalidInput(str(exc)) from None
        if amount <= 0:
            raise InvalidInput("the amount must be positive")
        now = self.clock.now()
        if expires_at is not None and expires_at <= now:
            raise InvalidInput("the expiry must be in the future")
        lot = Lot(new_id("lot"), tenant.id, amount, promo, now, expires_at)
        self.store.post(grant_tx(new_id("tx"), lot), lot)
        return lot

    def balance(self, tenant_name: str) -> Balance:
        tenant = self.tenancy.tenant(tenant_name)
        now = self.clock.now()
        lots = self.store.load_lots(tenant.id)
        balances = self.store.account_balances([lot.account for lot in lots])
        items = [LotBalance(lot, balances[lot.account], lot.expired(now)) for lot in lots]
        available = sum(i.remaining for i in items if not i.expired)
        items.sort(key=lambda i: i.lot.burn_key())
        return Balance(tenant.name, tenant.id, available, items)

    def expire_due(self, grace: timedelta = timedelta(0)) -> list[str]:
        """Move the remainder of every lot expired more than `grace` ago out of the tenant's reach,
        by ledger entry. Each lot's expiry has a fixed transaction id, so overlapping runs expire a
        lot once. A grace period lets requests that started before the expiry settle first."""
        if grace < timedelta(0):
            raise InvalidInput("the grace period cannot be negative")
        now = self.clock.now()
        lots = self.store.load_lots()
        balances = self.store.account_balances([lot_account(lot.id) for lot in lots])
        posted = []
        for lot in lots:
            remaining = balances[lot.account]
            if lot.expired(now - grace) and remaining > 0 and (tx_id := self._expire(lot, now)):
                posted.append(tx_id)
        return posted

    def _expire(self, lot: Lot, now: datetime) -> str | None:
        """Post the lot's expiry (of what it holds then). Its id is fixed (`exp_<lot>`, then
        `exp_<lot>_2`, … after a reversal), so a concurrent run conflicts instead of expiring the
        lot twice."""
        n = 1
        while True:
            tx_id = f"exp_{lot.id}" if n == 1 else f"exp_{lot.id}_{n}"
            try:
                return tx_id if self.store.post_expiry(lot, tx_id, now) else None
            except LedgerError:
                if not self.store.is_reversed(tx_id):
                    return None  # another run expired it first
                n += 1

    # --- plans ---

    def create_plan(
        self,
        name: str,
        fee_usd: str,
        five_hour: int,
        weekly: int,
        unit: str = "tokens",
        multipliers: list[str] | None = None,
        overage: str = "block",
    ) -> Plan:
        if not NAME_RE.fullmatch(name or "") or len(name) > 64:
            raise InvalidInput("a plan name is 1-64 letters, digits, '.', '_' or '-'")
        if unit not in UNITS or overage not in OVERAGE:
            raise InvalidInput(f"unit must be one of {UNITS}; overage one of {OVERAGE}")
        if not (0 < five_hour <= 10**15 and 0 < weekly <= 10**15):
            raise InvalidInput("the 5-hour and weekly limits must be positive")
        try:
            fee = usd_to_nano(fee_usd, "fee")
            mults = parse_multipliers(multipliers or [])
        except (MoneyError, ValueError) as exc:
            raise InvalidInput(str(exc)) from None
        if fee < 0:
            raise InvalidInput("the fee cannot be negative")
        plan = Plan(name, fee, unit, five_hour, weekly, mults, overage)
        try:
            self.plan_store.create(plan, self.clock.now())
        except PlanConflict as exc:
            raise InvalidInput(str(exc)) from None
        return plan

    def list_plans(self) -> list[tuple[Plan, list[str]]]:
        plans, assigned = self.plan_store.load()
        names = {t.id: t.name for t in self.tenancy.list_tenants()}
        return [(p, sorted(names[t] for t, n in assigned.items() if n == p.name)) for p in plans.values()]

    def assign_plan(self, tenant_name: str, plan_name: str | None) -> None:
        tenant = self.tenancy.tenant(tenant_name)
        if plan_name is not None and plan_name not in self.plan_store.load()[0]:
            raise NotFound(f"no plan named {plan_name!r}")
        self.plan_store.assign(tenant.id, plan_name, self.clock.now())

    # --- exchange rates ---

    def set_fx_rate(self, period: str, cny_per_usd: str) -> int:
        try:
            period_bounds(period)
            micro = rate_to_micro(cny_per_usd, "the CNY/USD rate")
        except (InvoiceError, MoneyError) as exc:
            raise InvalidInput(str(exc)) from None
        self.store.set_fx_rate(period, micro, self.clock.now())
        return micro

    def fx_rates(self) -> dict[str, int]:
        return self.store.fx_rates()

    # --- invoices ---

    def issue_invoice(self, tenant_name: str, period: str) -> dict:
        """The tenant's invoice for a month. Issuing again returns the same document; after a void,
        a new document (the next generation) is issued. Documents are never edited."""
        tenant = self.tenancy.tenant(tenant_name)
        end = _bounds(period)[1]
        now = self.clock.now()
        if end > now:
            raise InvalidInput(
                f"the period {period} has not ended yet (see it to date: tokenport invoices preview)"
            )
        existing = self.invoices.for_period(tenant.id, period)
        if existing and existing[-1]["voided_at"] is None:
            return _document(existing[-1])
        generation = len(existing) + 1
        doc = self._compose(tenant, period, generation, now)
        fees = [fee_tx(f["ledger_tx"], tenant.id, f["amount_nano_usd"], now) for f in doc["plan_fees"]]
        try:
            self.invoices.insert(doc, tenant.id, generation, now, fees)
        except InvoiceConflict:  # issued concurrently: the other run's document stands
            return _document(self.invoices.for_period(tenant.id, period)[-1])
        return {**doc, "status": "issued"}

    def preview_invoice(self, tenant_name: str, period: str | None = None) -> dict:
        """The invoice for a month (default: the running one) as it stands now, from the ledger,
        without issuing or storing anything (no document, no plan-fee transaction, no audit
        entry). For a month that has ended, it is what `issue_invoice` would issue now."""
        tenant = self.tenancy.tenant(tenant_name)
        now = self.clock.now()
        period = period or now.strftime("%Y-%m")
        start, end = _bounds(period)
        if start > now:
            raise InvalidInput(f"the period {period} has not started yet")
        existing = self.invoices.for_period(tenant.id, period)
        generation = len(existing) + (0 if existing and existing[-1]["voided_at"] is None else 1)
        doc = self._compose(tenant, period, generation, now)
        return {**doc, "id": None, "status": "preview", "period_ended": end <= now}

    def _compose(self, tenant: Tenant, period: str, generation: int, now: datetime) -> dict:
        """The document for a tenant's month as the ledger has it at `now`."""
        start, end = _bounds(period)
        rows = self.usage.query(tenant.name, start, until=end)
        charges = self.store.usage_charges(tenant.id, {r["request_id"] for r in rows})
        lots = {lot.id: lot for lot in self.store.load_lots(tenant.id)}
        doc = _built(
            invoice_id=new_id("inv"),
            number=f"TP-{period.replace('-', '')}-{tenant.id[-8:]}-{generation}",
            tenant={"id": tenant.id, "name": tenant.name, "zone": tenant.zone},
            period=period,
            usage_rows=rows,
            book=self.price_book(),
            charges=charges,
            lots=lots,
            issued_at=now,
            plan_fees=self._plan_fees(tenant.id, start, end),
            products=self._products(tenant.id, rows, start, end),
        )
        for fee in doc["plan_fees"]:  # each fee is posted once, whatever the generation
            fee["ledger_tx"] = fee_tx_id(tenant.id, period, fee["plan"])
        rate = self.store.fx_rates().get(period)
        if rate is not None:  # for the operator's internal reports; the invoice is in USD
            doc["internal"] = {
                "cny_per_usd": f"{rate / 10**6:.6f}",
                "total_cny": nano_usd_to_cny(doc["total_nano_usd"], rate),
            }
        return doc

    def _products(self, tenant_id: str, rows: list[dict], start: datetime, end: datetime) -> list[dict]:
        """A maker's product lines: devices first activated in the month and their package fees
        (posted at activation), and the tokens its devices used, by model."""
        if self.packages is None:
            return []
        skus = self.packages.product_skus(tenant_id)
        return product_lines(skus, self.packages.activations(tenant_id, start, end), rows)

    def _plan_fees(self, tenant_id: str, start: datetime, end: datetime) -> list[tuple[str, int]]:
        """Each plan the tenant was on during the period, at its full monthly fee (no proration)."""
        plans, _ = self.plan_store.load()
        names = self.plan_store.plans_in_force(tenant_id, start, end)
        return [(n, plans[n].fee_nano) for n in names if n in plans and plans[n].fee_nano]

    def invoice(self, invoice_id: str, tenant_id: str | None = None) -> dict:
        row = self.invoices.get(invoice_id)
        if row is None or (tenant_id is not None and row["tenant_id"] != tenant_id):
            raise NotFound(f"no invoice {invoice_id!r}")
        return _document(row)

    def list_invoices(self, tenant_name: str | None = None) -> list[dict]:
        tenant_id = self.tenancy.tenant(tenant_name).id if tenant_name else None
        return [_summary(r) for r in self.invoices.list(tenant_id)]

    def void_invoice(self, invoice_id: str, reason: str) -> dict:
        if not reason or len(reason) > 500:
            raise InvalidInput("a void needs a reason (at most 500 characters)")
        self.invoice(invoice_id)
        if not self.invoices.void(invoice_id, reason, self.clock.now()):
            raise InvalidInput(f"invoice {invoice_id} is already void")
        return self.invoice(invoice_id)

    # --- integrity ---

    def verify(self) -> list[str]:
        problems = [f"transaction {t} has no entries" for t in self.store.orphans()]
        transactions = self.store.load_transactions()
        problems += verify(transactions, self.store.load_lots())
        if self.packages is not None:
            problems += package_problems(transactions, self.packages.package_fees())
        return problems + cache_problems(transactions, self.store.cached_remaining())

    def ledger(self) -> Ledger:
        """The whole ledger in memory (what a gateway process keeps for its fast path)."""
        ledger = Ledger()
        for lot in self.store.load_lots():
            ledger.add_lot(lot)
        for tx in self.store.load_transactions():
            ledger.post(tx)
        return ledger


def _built(**kw) -> dict:
    try:
        return build_invoice(**kw)
    except InvoiceError as exc:
        raise InvalidInput(str(exc)) from None


def _bounds(period: str) -> tuple[datetime, datetime]:
    try:
        return period_bounds(period)
    except InvoiceError as exc:
        raise InvalidInput(str(exc)) from None


def _document(row: dict) -> dict:
    doc = json.loads(row["document"])
    assert canonical(doc) == row["document"]
    status = (
        {"status": "void", "void": {"reason": row["reason"], "voided_at": row["voided_at"].isoformat()}}
        if row.get("voided_at")
        else {"status": "issued"}
    )
    return {**doc, **status, "sha256": row["sha256"]}


def _summary(row: dict) -> dict:
    return {
        "id": row["id"],
        "number": row["number"],
        "period": row["period"],
        "total_usd": nano_to_usd(row["total_nano_usd"]),
        "total_nano_usd": row["total_nano_usd"],
        "issued_at": row["issued_at"].isoformat(),
        "status": "void" if row["voided_at"] else "issued",
    }
