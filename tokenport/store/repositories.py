"""The domain services' repositories over one database, as `runtime.py` and the CLI hand them over."""

from __future__ import annotations

from sqlalchemy import Engine

from tokenport.billing.ports import BillingRepositories
from tokenport.store.billing import BillingStore
from tokenport.store.invoices import InvoiceStore
from tokenport.store.plans import PlanStore
from tokenport.store.usage import UsageStore


def billing_repositories(engine: Engine) -> BillingRepositories:
    """What the billing service works on: the ledger, invoices, plans and usage records."""
    return BillingRepositories(
        BillingStore(engine), InvoiceStore(engine), PlanStore(engine), UsageStore(engine)
    )
