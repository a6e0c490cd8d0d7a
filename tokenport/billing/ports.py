"""The repositories the billing service needs (implemented under `store/`: `billing.py`,
`invoices.py`, `plans.py`, `usage.py`); `runtime.py` and the CLI hand them over together."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from tokenport.billing.ledger import Lot, Transaction
from tokenport.billing.plans import Plan
from tokenport.billing.prices import Price


class LedgerRepository(Protocol):
    """Prices, credit lots and the ledger's transactions; each change audited."""

    def insert_price(self, price: Price, at: datetime) -> None: ...

    def load_prices(self) -> list[Price]: ...

    def post(self, tx: Transaction, lot: Lot | None = None) -> None: ...

    def post_expiry(self, lot: Lot, tx_id: str, at: datetime) -> bool: ...

    def is_reversed(self, tx_id: str) -> bool: ...

    def load_lots(self, tenant_id: str | None = None) -> list[Lot]: ...

    def account_balances(self, accounts: list[str]) -> dict[str, int]: ...

    def usage_charges(self, tenant_id: str, request_ids: set[str]) -> list[Transaction]: ...

    def load_transactions(self, tenant_id: str | None = None) -> list[Transaction]: ...

    def orphans(self) -> list[str]:
        """Transactions with no entries."""
        ...

    def cached_remaining(self) -> dict[str, int]: ...

    def set_fx_rate(self, period: str, micro: int, at: datetime) -> None: ...

    def fx_rates(self) -> dict[str, int]: ...


class InvoiceRepository(Protocol):
    """Issued invoice documents (raises `invoices.InvoiceConflict` on a concurrent issue)."""

    def insert(
        self, doc: dict, tenant_id: str, generation: int, issued_at: datetime, txs: list[Transaction] = ()
    ) -> None: ...

    def for_period(self, tenant_id: str, period: str) -> list[dict]: ...

    def get(self, invoice_id: str) -> dict | None: ...

    def list(self, tenant_id: str | None = None) -> list[dict]: ...

    def void(self, invoice_id: str, reason: str, at: datetime) -> bool: ...


class PlanRepository(Protocol):
    """Plans and their assignments (raises `plans.PlanConflict` on a taken name)."""

    def create(self, plan: Plan, at: datetime) -> None: ...

    def load(self) -> tuple[dict[str, Plan], dict[str, str]]: ...

    def assign(self, tenant_id: str, plan_name: str | None, at: datetime) -> None: ...

    def plans_in_force(self, tenant_id: str, start: datetime, end: datetime) -> list[str]: ...


class UsageReader(Protocol):
    def query(
        self,
        tenant_name: str | None = None,
        since: datetime | None = None,
        limit: int | None = None,
        until: datetime | None = None,
    ) -> list[dict]: ...


class PackageReader(Protocol):
    """A maker's device packages (docs/fleets.md), for its invoice's product lines."""

    def product_skus(self, tenant_id: str) -> dict[str, str]:
        """product id -> SKU, for every product of the tenant's fleets."""
        ...

    def activations(self, tenant_id: str, start: datetime, end: datetime) -> list[tuple[str, int]]:
        """(product id, package fee in nano-USD) of each device first activated in [start, end)."""
        ...

    def package_fees(self) -> dict[str, tuple[str, int]]:
        """Transaction id -> (tenant id, fee) of the package fee of every device activated with one."""
        ...


@dataclass(frozen=True)
class BillingRepositories:
    ledger: LedgerRepository
    invoices: InvoiceRepository
    plans: PlanRepository
    usage: UsageReader
    packages: PackageReader | None = None  # a tenant's device packages (fleets)
