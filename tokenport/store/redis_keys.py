"""How admission's state is laid out in Redis: one tenant's keys (under its hash tag, so one
tenant lives on one node of a cluster) and the encodings of what they hold.

Per tenant `T` (`tp:{T}:…`): `v` (version), `loaded`, `lots`, `spend`, `plan`, `tokens` (the
mirror), `holds` and `buckets` (Redis only); and for its fleets' devices:
- `dholds`: hash, request id -> `serial|units|day|expires (µs)`: the devices' quota holds of
  requests in flight (Redis only; as many as the tenant's device requests in flight);
- `dev:SERIAL`: hash, the device's mirror of `device_days`, loaded per local day D on its first
  request that day: `l:D` (loaded), `u:D` (units settled on D), `m:YYYY-MM` (units settled in the
  month); expires after `DEVICE_TTL_S` unused, so only devices in use take memory;
- `rpm:SERIAL`: `micro|at_us`, the device's requests-per-minute bucket (Redis only), expiring
  once it would be full again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson

from tokenport.billing.ledger import Lot
from tokenport.billing.plans import SEVEN_DAYS

PLAN_TTL_S = (SEVEN_DAYS + 1) * 60
TOKENS_TTL_S = 61
DEVICE_TTL_S = 2 * 86400  # a device's mirror unused this long goes (it loads again when used)
DEVICE_RPM_TTL_S = 61  # a bucket untouched for a minute is full: the same as none
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
        self.prefix = p
        self.version, self.loaded, self.lots = p + "v", p + "loaded", p + "lots"
        self.holds, self.spend, self.plan = p + "holds", p + "spend", p + "plan"
        self.tokens, self.buckets = p + "tokens", p + "buckets"
        self.dholds = p + "dholds"

    def device(self, serial: str) -> str:
        """A device's mirror of its `device_days` (see the module's docstring)."""
        return self.prefix + "dev:" + serial

    def device_rpm(self, serial: str) -> str:
        return self.prefix + "rpm:" + serial

    @property
    def mirrored(self) -> list[str]:
        """What a load replaces (holds and buckets live in Redis only)."""
        return [self.loaded, self.lots, self.spend, self.plan, self.tokens]

    @property
    def read(self) -> list[str]:
        """What admission reads, in `Snapshot`'s order, after the version (the devices' own keys
        follow, two per device: `device`, `device_rpm`)."""
        return [self.version, *self.mirrored, self.holds, self.buckets, self.dholds]


def spend_field(key_id: str, period: str, start: datetime) -> str:
    return f"{key_id}|{period}|{ts(start)}"


def lot_value(lot: Lot, remaining: int) -> bytes:
    exp = lot.expires_at
    return orjson.dumps([lot.amount, lot.promo, us(lot.created_at), us(exp) if exp else None, remaining])


def device_fields(day: str) -> tuple[str, str, str]:
    """A device mirror's fields for local day `day`: (loaded, day's units, month's units)."""
    return f"l:{day}", f"u:{day}", f"m:{day[:7]}"


def device_hold_value(serial: str, units: int, day: str, expires_us: int) -> str:
    return f"{serial}|{units}|{day}|{expires_us}"


def parse_device_hold(value: bytes) -> tuple[str, int, str, int]:
    """(serial, units, day, expires µs); the expiry last, as in `holds` (purge reads it so)."""
    serial, units, day, exp = value.decode().split("|")
    return serial, int(units), day, int(exp)
