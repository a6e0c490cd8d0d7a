"""The domain services' repositories over one database, as `runtime.py` and the CLI hand them over."""

from __future__ import annotations

from sqlalchemy import Engine

from tokenport.billing.ports import BillingRepositories
from tokenport.store.billing import BillingStore
from tokenport.store.fleets import FleetStore
from tokenport.store.invoices import InvoiceStore
from tokenport.store.plans import PlanStore
from tokenport.store.usage import UsageStore


def billing_repositories(engine: Engine) -> BillingRepositories:
    """What the billing service works on: the ledger, invoices, plans, usage records and the
    device packages of a maker's fleets."""
    return BillingRepositories(
        BillingStore(engine), InvoiceStore(engine), PlanStore(engine), UsageStore(engine), FleetStore(engine)
    )
