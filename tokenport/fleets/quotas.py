"""Per-device token quotas: a local day and a local month in the product's time zone, reserved
at admission (the most a request can cost) and settled on what it used, as key budgets are.

Plain Python; in memory for one gateway process (shared mode keeps the same counters in the
database or Redis)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

DAY, MONTH = "day", "month"


def window_bounds(window: str, at: datetime, tz: str) -> tuple[datetime, datetime]:
    """The local day or month around `at` in `tz`, as UTC instants (DST-aware: a local day may
    last 23 or 25 hours)."""
    zone = ZoneInfo(tz)
    local = at.astimezone(zone)
    if window == DAY:
        start = datetime(local.year, local.month, local.day, tzinfo=zone)
        nxt = start.date() + timedelta(days=1)
        end = datetime(nxt.year, nxt.month, nxt.day, tzinfo=zone)
    else:
        start = datetime(local.year, local.month, 1, tzinfo=zone)
        year, month = (local.year + 1, 1) if local.month == 12 else (local.year, local.month + 1)
        end = datetime(year, month, 1, tzinfo=zone)
    return start.astimezone(UTC), end.astimezone(UTC)


def local_day(at: datetime, tz: str) -> str:
    """The local date (YYYY-MM-DD) of `at` in `tz`: the day a request counts against."""
    return at.astimezone(ZoneInfo(tz)).date().isoformat()


class DeviceQuotaExceeded(Exception):
    def __init__(self, window: str, limit: int, used: int, resets_at: datetime) -> None:
        self.window, self.limit, self.used, self.resets_at = window, limit, used, resets_at
        super().__init__(f"device {window} quota of {limit} tokens used ({used})")

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)


@dataclass
class _Counter:
    start: datetime
    used: int = 0  # settled
    held: int = 0  # reserved by requests in flight


@dataclass
class _DeviceUse:
    day: _Counter | None = None
    month: _Counter | None = None
    holds: dict[str, tuple[int, datetime, datetime]] = field(default_factory=dict)


def check_quota(window: str, limit: int, used: int, amount: int, resets_at: datetime) -> None:
    """The one rule, for every admission strategy: what is used and held plus this request's most
    stays within the quota."""
    if used + amount > limit:
        raise DeviceQuotaExceeded(window, limit, used, resets_at)


class DeviceQuotas:
    """Counters per device for the current local day and month (other windows are dropped)."""

    def __init__(self) -> None:
        self._use: dict[str, _DeviceUse] = {}

    def restore(self, serial: str, window: str, start: datetime, used: int) -> None:
        """What the device used in a window before this process counted (from the database);
        a window this process already counts in keeps its own count (and its holds)."""
        use = self._use.setdefault(serial, _DeviceUse())
        counter = getattr(use, window)
        if counter is None or counter.start != start:
            setattr(use, window, _Counter(start, used))

    def _counter(self, use: _DeviceUse, window: str, start: datetime) -> _Counter:
        counter = getattr(use, window)
        if counter is None or counter.start != start:
            counter = _Counter(start)
            setattr(use, window, counter)
        return counter

    def remaining(self, serial: str, limits: dict[str, int], at: datetime, tz: str) -> int:
        """Tokens left in the tighter of the windows."""
        use = self._use.get(serial) or _DeviceUse()
        left = []
        for window, limit in limits.items():
            start, _ = window_bounds(window, at, tz)
            c = getattr(use, window)
            spent = c.used + c.held if c is not None and c.start == start else 0
            left.append(max(0, limit - spent))
        return min(left)

    def reserve(
        self, request_id: str, serial: str, amount: int, limits: dict[str, int], at: datetime, tz: str
    ) -> None:
        """Hold `amount` in each window, or raise DeviceQuotaExceeded for the first one short."""
        use = self._use.setdefault(serial, _DeviceUse())
        bounds = {w: window_bounds(w, at, tz) for w in limits}
        counters = {w: self._counter(use, w, bounds[w][0]) for w in limits}
        for window, limit in limits.items():
            c = counters[window]
            check_quota(window, limit, c.used + c.held, amount, bounds[window][1])
        for c in counters.values():
            c.held += amount
        use.holds[request_id] = (amount, bounds.get(DAY, (at,))[0], bounds.get(MONTH, (at,))[0])

    def settle(self, request_id: str, serial: str, used: int) -> None:
        """Release the hold and count what the request used, in the windows it was admitted in."""
        use = self._use.get(serial)
        if use is None or request_id not in use.holds:
            return
        amount, day_start, month_start = use.holds.pop(request_id)
        for window, start in ((DAY, day_start), (MONTH, month_start)):
            c = getattr(use, window)
            if c is not None and c.start == start:
                c.held -= amount
                c.used += used

    def forget(self, serial: str) -> None:
        self._use.pop(serial, None)
