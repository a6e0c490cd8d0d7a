"""How admission's state is laid out in Redis: one tenant's keys (under its hash tag, so one
tenant lives on one node of a cluster) and the encodings of what they hold."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson

from tokenport.billing.ledger import Lot
from tokenport.billing.plans import SEVEN_DAYS

PLAN_TTL_S = (SEVEN_DAYS + 1) * 60
TOKENS_TTL_S = 61
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def us(at: datetime) -> int:
    return (at - EPOCH) // timedelta(microseconds=1)


def from_us(n: int) -> datetime:
    return EPOCH + timedelta(microseconds=n)


def ts(at: datetime) -> int:
    return int(at.timestamp())


class Keys:
    """The Redis keys of one tenant."""

    def __init__(self, tenant_id: str) -> None:
        p = "tp:{" + tenant_id + "}:"
        self.version, self.loaded, self.lots = p + "v", p + "loaded", p + "lots"
        self.holds, self.spend, self.plan = p + "holds", p + "spend", p + "plan"
        self.tokens, self.buckets = p + "tokens", p + "buckets"

    @property
    def mirrored(self) -> list[str]:
        """What a load replaces (holds and buckets live in Redis only)."""
        return [self.loaded, self.lots, self.spend, self.plan, self.tokens]

    @property
    def read(self) -> list[str]:
        """What admission reads, in `Snapshot`'s order, after the version."""
        return [self.version, *self.mirrored, self.holds, self.buckets]


def spend_field(key_id: str, period: str, start: datetime) -> str:
    return f"{key_id}|{period}|{ts(start)}"


def lot_value(lot: Lot, remaining: int) -> bytes:
    exp = lot.expires_at
    return orjson.dumps([lot.amount, lot.promo, us(lot.created_at), us(exp) if exp else None, remaining])
