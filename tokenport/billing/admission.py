"""Shared-mode admission's records, whichever store keeps the state (the database,
`store/shared.py`, or Redis, `store/redis_state.py`): what one admission reads (`Ask`), the state
it decides on (`View`), what it decided (`Grant`), and what settlement does with the shared state
for one request (`Charge`). The decision itself is the gateway's (`gateway/charging.py`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from tokenport.billing.ledger import Lot


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


@dataclass
class View:
    """The shared state one admission decides on, read under the tenant's lock."""

    lots: list[tuple[Lot, int]] = field(default_factory=list)  # (lot, balance)
    held: int = 0  # the tenant's active holds
    key_used: int = 0  # the key's spend in the budget period plus its active holds there
    bucket: tuple[int, int] | None = None  # (micro-requests left, as of this microsecond)
    tokens: list[tuple[int, int]] = field(default_factory=list)  # (second, tokens), last minute
    plan_minutes: list[tuple[int, int]] = field(default_factory=list)  # (minute, units), last 7 days


@dataclass(frozen=True)
class Grant:
    """What an admission decided: the hold to write, the key's new rate bucket, plan coverage."""

    hold: int = 0
    expires_at: datetime | None = None
    bucket: tuple[int, int] | None = None
    covered: bool = False  # the tenant's plan covers the request


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


class Unavailable(Exception):
    """The shared admission state could not be read or written (a refusal it is not)."""
