"""Per-device token quotas: a local day and a local month in the product's time zone, reserved
at admission (the most a request can cost) and settled on what it used, as key budgets are; and
the device's streams at once.

Plain Python. What one admission asks of a device (`device_ask`, a `billing.admission.DeviceAsk`)
and the rules (`check_device`, `device_left`) are every admission strategy's; the counters here
(`DeviceQuotas`) are one gateway process's (shared mode keeps them in the database or Redis:
`store/shared.py`, `store/redis_state.py`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from tokenport.billing.admission import DeviceAsk

DAY, MONTH = "day", "month"
NO_LIMIT = 2**62  # a window without a quota


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


def device_ask(
    serial: str,
    units_most: int,
    day_limit: int,
    month_limit: int,
    at: datetime,
    tz: str,
    concurrency: int | None = None,
    rpm: int | None = None,
) -> DeviceAsk:
    day_start, day_end = window_bounds(DAY, at, tz)
    month_start, month_end = window_bounds(MONTH, at, tz)
    day = local_day(at, tz)
    return DeviceAsk(
        serial,
        units_most,
        day_limit,
        month_limit,
        day,
        day[:8] + "01",
        day_start,
        day_end,
        month_start,
        month_end,
        concurrency,
        rpm,
    )


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


class DeviceBusy(Exception):
    """The device has as many requests in flight as its product allows."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"device has {limit} requests in flight")


def check_quota(window: str, limit: int, used: int, amount: int, resets_at: datetime) -> None:
    """The one rule, for every admission strategy: what is used and held plus this request's most
    stays within the quota."""
    if used + amount > limit:
        raise DeviceQuotaExceeded(window, limit, used, resets_at)


def check_streams(concurrency: int | None, streams: int) -> None:
    if concurrency and streams >= concurrency:
        raise DeviceBusy(concurrency)


def check_device(ask: DeviceAsk, day_used: int, month_used: int, streams: int) -> None:
    """The device's part of an admission, in every strategy: its day, then its month (used: settled
    and held), then its streams at once (requests holding)."""
    check_quota(DAY, ask.day_limit, day_used, ask.units_most, ask.day_resets_at)
    check_quota(MONTH, ask.month_limit, month_used, ask.units_most, ask.month_resets_at)
    check_streams(ask.concurrency, streams)


def device_left(ask: DeviceAsk, day_used: int, month_used: int) -> int:
    """What the device has left once this request's hold is counted (the tighter window)."""
    held = ask.units_most
    return max(0, min(ask.day_limit - day_used - held, ask.month_limit - month_used - held))


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
        ask = device_ask(serial, amount, limits.get(DAY, NO_LIMIT), limits.get(MONTH, NO_LIMIT), at, tz)
        self.hold(request_id, ask)

    def hold(self, request_id: str, ask: DeviceAsk) -> None:
        """Hold the ask's most in its day and month and count one stream more, or raise
        (`check_device`: DeviceQuotaExceeded, DeviceBusy) holding nothing."""
        use = self._use.setdefault(ask.serial, _DeviceUse())
        day = self._counter(use, DAY, ask.day_starts_at)
        month = self._counter(use, MONTH, ask.month_starts_at)
        check_device(ask, day.used + day.held, month.used + month.held, len(use.holds))
        day.held += ask.units_most
        month.held += ask.units_most
        use.holds[request_id] = (ask.units_most, ask.day_starts_at, ask.month_starts_at)

    def left(self, ask: DeviceAsk) -> int:
        """What the device has left in the ask's windows, its holds (this one's too) counted."""
        use = self._use.get(ask.serial) or _DeviceUse()
        spent = []
        for window, start in ((DAY, ask.day_starts_at), (MONTH, ask.month_starts_at)):
            c = getattr(use, window)
            spent.append(c.used + c.held if c is not None and c.start == start else 0)
        return max(0, min(ask.day_limit - spent[0], ask.month_limit - spent[1]))

    def streams(self, serial: str) -> int:
        """The device's requests holding (in flight)."""
        use = self._use.get(serial)
        return len(use.holds) if use is not None else 0

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

    def forget_idle(self, serial: str) -> None:
        """Drop a device's counters unless a request of its is in flight (it is read again, with
        what it used, when it calls next)."""
        use = self._use.get(serial)
        if use is not None and not use.holds:
            del self._use[serial]

    def forget(self, serial: str) -> None:
        self._use.pop(serial, None)
