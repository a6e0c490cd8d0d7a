"""Shared-mode admission's records, whichever store keeps the state (the database,
`store/shared.py`, or Redis, `store/redis_state.py`): what one admission reads (`Ask`), the state
it decides on (`View`), what it decided (`Grant`), and what settlement does with the shared state
for one request (`Charge`). The decision itself is the gateway's (`gateway/charging.py`).

A fleet's device adds its part (`Ask.device`, a `DeviceAsk`): its settled units in
its local day and month and its requests holding are read in the same transaction as the money,
so that one admission holds both or neither."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from tokenport.billing.ledger import Lot


@dataclass(frozen=True, slots=True)
class DeviceAsk:
    """What one admission asks of a fleet's device: to hold `units_most` (the most the request
    can count, weighted) in its local day and month, and one stream more (`fleets.quotas`:
    `device_ask` builds it, `check_device` is the rule); decided by the mode's admission
    strategy, with the money."""

    serial: str
    units_most: int
    day_limit: int
    month_limit: int
    day: str  # the local date the request counts on, YYYY-MM-DD
    month_first: str  # the first of its local month, YYYY-MM-01
    day_starts_at: datetime  # the local day and month as UTC instants
    day_resets_at: datetime
    month_starts_at: datetime
    month_resets_at: datetime
    concurrency: int | None = None  # streams at once
    rpm: int | None = None  # requests per minute

    @property
    def month_last(self) -> str:
        """The last possible local date of the month, for a range over YYYY-MM-DD strings."""
        return self.month_first[:8] + "31"


@dataclass(frozen=True)
class Ask:
    """What one admission needs to read."""

    request_id: str
    tenant_id: str
    key_id: str
    at: datetime
    money: bool = False  # the tenant's lots and holds
    budget: tuple[str, datetime] | None = None  # (period, start): the key's spend and holds in it
    rpm: bool = False
    tpm: bool = False
    plan: bool = False
    device: DeviceAsk | None = None  # the device's day, month, streams and rate bucket


@dataclass
class View:
    """The shared state one admission decides on, read under the tenant's lock."""

    lots: list[tuple[Lot, int]] = field(default_factory=list)  # (lot, balance)
    held: int = 0  # the tenant's active holds
    key_used: int = 0  # the key's spend in the budget period plus its active holds there
    bucket: tuple[int, int] | None = None  # (micro-requests left, as of this microsecond)
    tokens: list[tuple[int, int]] = field(default_factory=list)  # (second, tokens), last minute
    plan_minutes: list[tuple[int, int]] = field(default_factory=list)  # (minute, units), last 7 days
    device_day_used: int = 0  # the device's units settled on its local day plus its holds there
    device_month_used: int = 0  # ... in its local month
    device_streams: int = 0  # the device's active holds: its requests in flight
    device_bucket: tuple[int, int] | None = None  # the device's requests-per-minute bucket


@dataclass(frozen=True)
class Grant:
    """What an admission decided: the hold to write, the key's new rate bucket, plan coverage."""

    hold: int = 0
    expires_at: datetime | None = None
    bucket: tuple[int, int] | None = None
    covered: bool = False  # the tenant's plan covers the request
    device_hold: int | None = None  # the device's hold (weighted units; None: no device asked)
    device_bucket: tuple[int, int] | None = None  # the device's new rate bucket
    device_left: int | None = None  # what the device has left, this hold counted

    @property
    def holds(self) -> bool:
        """Something to release if nobody settles the request."""
        return self.hold > 0 or self.device_hold is not None


@dataclass(frozen=True)
class Charge:
    """What settlement does with the shared state for one request (with its usage record)."""

    request_id: str
    tenant_id: str
    key_id: str
    finished_at: datetime
    tx_id: str | None = None  # post a usage charge of `cost`, from the lots usable at `started_at`
    cost: int = 0
    started_at: datetime | None = None
    tokens: int = 0  # for the key's tokens-per-minute window
    device_serial: str | None = None  # a device's hold to release (its units are on the record)


class Unavailable(Exception):
    """The shared admission state could not be read or written (a refusal it is not)."""
