"""Coding-style plans: a monthly fee with included usage, limited per rolling 5-hour window and
per rolling 7-day window, weighted by model (a bigger model burns the quota faster).

Plain Python. Usage is kept in one-minute buckets, so memory per tenant is bounded (at most
10,080 buckets) whatever the traffic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime

FIVE_HOURS = 5 * 60  # minutes
SEVEN_DAYS = 7 * 24 * 60
UNITS = ("tokens", "requests")
OVERAGE = ("block", "charge")


class PlanConflict(Exception):
    """A plan of that name exists."""


@dataclass(frozen=True)
class Plan:
    name: str
    fee_nano: int  # per month
    unit: str  # "tokens" (prompt + completion) or "requests"
    five_hour_limit: int  # weighted units per rolling 5 hours
    weekly_limit: int  # weighted units per rolling 7 days
    multipliers: tuple[tuple[str, int], ...] = ()  # (model, per-mille): 2.0 -> 2000
    overage: str = "block"  # past a limit: refuse, or charge the prepaid balance

    def weight(self, model: str) -> int:
        return dict(self.multipliers).get(model, 1000)

    def units(self, model: str, tokens: int) -> int:
        base = tokens if self.unit == "tokens" else 1
        return math.ceil(base * self.weight(model) / 1000)


@dataclass(frozen=True)
class Window:
    name: str  # "5h" | "7d"
    limit: int
    used: int
    resets_at: datetime  # when enough usage has aged out to be under the limit again (or now)

    @property
    def remaining(self) -> int:
        return max(self.limit - self.used, 0)

    @property
    def exhausted(self) -> bool:
        return self.used >= self.limit


def minute_of(at: datetime) -> int:
    return int(at.timestamp() // 60)


@dataclass
class PlanUsage:
    _buckets: dict[str, dict[int, int]] = field(default_factory=dict)  # tenant -> minute -> units

    def add(self, tenant_id: str, units: int, at: datetime) -> None:
        if units <= 0:
            return
        buckets = self._buckets.setdefault(tenant_id, {})
        m = minute_of(at)
        buckets[m] = buckets.get(m, 0) + units
        floor = m - SEVEN_DAYS
        if len(buckets) > SEVEN_DAYS + 10:  # drop what no window can see any more
            for old in [k for k in buckets if k <= floor]:
                del buckets[old]

    def windows(self, plan: Plan, tenant_id: str, at: datetime) -> tuple[Window, Window]:
        return (
            self._window("5h", plan.five_hour_limit, FIVE_HOURS, tenant_id, at),
            self._window("7d", plan.weekly_limit, SEVEN_DAYS, tenant_id, at),
        )

    def _window(self, name: str, limit: int, minutes: int, tenant_id: str, at: datetime) -> Window:
        now = minute_of(at)
        live = sorted((m, u) for m, u in self._buckets.get(tenant_id, {}).items() if m > now - minutes)
        used = sum(u for _, u in live)
        resets_at = at
        over = used - limit
        for m, u in live:  # oldest first: when does enough of it age out?
            if over < 0:
                break
            over -= u
            resets_at = datetime.fromtimestamp((m + minutes) * 60, UTC)
        return Window(name, limit, used, max(resets_at, at))


def retry_after(windows: tuple[Window, ...], at: datetime) -> int:
    """Seconds until every exhausted window is usable again."""
    worst = max((w.resets_at for w in windows if w.exhausted), default=at)
    return max(1, math.ceil((worst - at).total_seconds()))


def ratelimit_headers(windows: tuple[Window, ...], at: datetime) -> dict[str, str]:
    """x-ratelimit-* headers describing the tightest window."""
    tight = min(windows, key=lambda w: w.remaining)
    return {
        "x-ratelimit-limit-plan": str(tight.limit),
        "x-ratelimit-remaining-plan": str(tight.remaining),
        "x-ratelimit-reset-plan": str(max(0, math.ceil((tight.resets_at - at).total_seconds()))),
        "x-ratelimit-window-plan": tight.name,
    }


def parse_multipliers(items: list[str]) -> tuple[tuple[str, int], ...]:
    """['big-model=2.5'] -> (('big-model', 2500),)."""
    out = []
    for item in items:
        model, sep, value = item.partition("=")
        try:
            factor = float(value)
        except ValueError:
            factor = math.nan
        if not sep or not model or not (math.isfinite(factor) and 0 < factor <= 1000):
            raise ValueError(f"a multiplier is MODEL=FACTOR with 0 < FACTOR <= 1000, got {item!r}")
        out.append((model, round(factor * 1000)))
    return tuple(out)
