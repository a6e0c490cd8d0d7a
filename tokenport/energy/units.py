"""The energy reports' periods and units: a period is a calendar month (UTC); figures go out as
decimal strings at fixed places (kWh to the microwatt-hour, USD to the micro-dollar, grams)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal

PERIOD_RE = re.compile(r"\d{4}-(0[1-9]|1[0-2])")


class EnergyInputError(ValueError):
    """A period, amount or source the energy commands refuse."""


def period_bounds(period: str) -> tuple[datetime, datetime]:
    if not isinstance(period, str) or not PERIOD_RE.fullmatch(period):
        raise EnergyInputError(f"a period is YYYY-MM, not {period!r}")
    year, month = int(period[:4]), int(period[5:])
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
    return start, end


def period_of(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m")


def fixed(value: Decimal, places: str) -> str:
    """A decimal at a fixed number of places, never in exponent notation."""
    return format(Decimal(value).quantize(Decimal(places)), "f")


def kwh(mj: int) -> str:
    """Millijoules as kWh, a decimal string (nine places: microwatt-hours)."""
    return fixed(Decimal(mj) / Decimal(3_600_000_000), "0.000000001")


def usd(nano: int) -> str:
    return fixed(Decimal(nano) / 1_000_000_000, "0.000001")


def ratio(part: int, whole: int) -> str | None:
    return fixed(Decimal(part) / whole, "0.0001") if whole else None


def grams(ug: int) -> str:
    return fixed(Decimal(ug) / 1_000_000, "0.001")


def per_million(value: Decimal, tokens: int) -> str | None:
    return fixed(value * 1_000_000 / tokens, "0.001") if tokens else None
