"""What each group of HTTP handlers may use, typed: one narrow view per surface.

Handlers receive one of these, never the whole composition root; `runtime.Runtime` satisfies
them all (structurally), and the app hands it over once per request, in `keyed`/`guarded`.
Adding a service to a surface means adding it here, visibly."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import aiohttp

    from tokenport.audit.service import AuditService
    from tokenport.billing.service import BillingService
    from tokenport.clock import Clock
    from tokenport.config import Settings
    from tokenport.energy.request_figures import RequestFigures
    from tokenport.energy.service import EnergyService
    from tokenport.engines.embedded import EmbeddedEngine
    from tokenport.fleets.service import FleetService
    from tokenport.gateway.auth import KeyCache
    from tokenport.gateway.auth_throttle import AuthThrottle
    from tokenport.gateway.backends import BackendPool
    from tokenport.gateway.charging import Charging
    from tokenport.gateway.lifecycle import Gateway
    from tokenport.gateway.metrics import Metrics
    from tokenport.store.admins import AdminStore
    from tokenport.store.usage import UsageStore
    from tokenport.store.writer import BatchWriter
    from tokenport.tenancy.service import TenancyService
    from tokenport.zones.vault import Vault


class Keyed(Protocol):
    """Anything answering a tenant's key: the key cache authenticates it."""

    keys: KeyCache


class AccountServices(Keyed, Protocol):
    """`/v1/account/*`: a tenant's own balance, usage, invoices, retained records, green report."""

    clock: Clock
    billing_service: BillingService
    charging: Charging
    usage_store: UsageStore
    energy: EnergyService
    request_energy: RequestFigures
    vault: Vault
    fleets: FleetService


class AuditServices(Keyed, Protocol):
    """`/v1/receipts`, `/v1/audit/*`, the zones' public keys."""

    audit: AuditService


class AdminServices(Protocol):
    """`/admin/v1/*`: tenants, keys, retention, usage across the admin's zones."""

    settings: Settings
    clock: Clock
    admins: AdminStore
    tenancy: TenancyService
    vault: Vault
    usage_store: UsageStore
    request_energy: RequestFigures


class OpsServices(Keyed, Protocol):
    """`/health`, `/metrics`, `/v1/models`."""

    started: bool
    pool: BackendPool
    engine: EmbeddedEngine | None
    metrics: Metrics
    gateway: Gateway | None
    writer: BatchWriter


class CountingServices(Protocol):
    """`/v1/messages/count_tokens`: the lifecycle's first steps and an HTTP session to the engine."""

    settings: Settings
    clock: Clock
    gateway: Gateway | None
    session: aiohttp.ClientSession | None


class DeviceServices(Protocol):
    """`/v1/devices/*`: a device's challenge and activation, each throttled per address."""

    fleets: FleetService
    challenge_throttle: AuthThrottle  # challenges (each stores a nonce)
    activation_throttle: AuthThrottle  # wrong answers, as failed authentications
