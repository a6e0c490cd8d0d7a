"""Failed authentications throttled per client address: a flood of wrong keys gets 429 with
`Retry-After` instead of 401 once an address has failed `per_minute` times within a minute.

Only failures are counted and only failures are throttled, so a valid key from the same address
is served as ever and costs nothing extra; every kind of failure (no key, a wrong one, a revoked
one) goes through the same path. Counts are per process, in memory, bounded in size.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from tokenport.gateway.errors import ApiError

WINDOW_S = 60.0
MAX_ADDRESSES = 100_000  # above this, addresses whose minute has passed are forgotten


def throttled(wait: int) -> ApiError:
    return ApiError(
        429,
        f"Too many failed authentications from this address; retry in {wait} s",
        "rate_limit_error",
        "too_many_auth_failures",  # not `rate_limit_exceeded`: the SDKs are told not to retry
        headers={"retry-after": str(wait)},
    )


class AuthThrottle:
    def __init__(
        self, per_minute: int, monotonic: Callable[[], float], counted: Callable[[bool], None]
    ) -> None:
        self.per_minute = per_minute  # 0: no throttling
        self.mono = monotonic
        self.counted = counted  # told of each failure: whether it was throttled (metrics)
        self._failures: dict[str, tuple[float, int]] = {}  # address -> (its minute's start, count)

    def failed(self, address: str | None, err: ApiError) -> ApiError:
        """The answer to a failed authentication from `address`: `err`, or 429 over the limit."""
        return self.count(address) or err

    def over(self, address: str | None) -> ApiError | None:
        """The 429 if `address` is already over the limit this minute (nothing counted)."""
        if not self.per_minute or address is None or address not in self._failures:
            return None
        start, n = self._failures[address]
        now = self.mono()
        if now - start >= WINDOW_S or n < self.per_minute:
            return None
        return throttled(max(1, math.ceil(start + WINDOW_S - now)))

    def count(self, address: str | None) -> ApiError | None:
        """Count one event from `address` (a failure, or a device's challenge): the 429 once the
        address is over the limit, else None."""
        if not self.per_minute or address is None:
            self.counted(False)
            return None
        now = self.mono()
        start, n = self._failures.get(address, (now, 0))
        if now - start >= WINDOW_S:
            start, n = now, 0
        if address not in self._failures and len(self._failures) >= MAX_ADDRESSES:
            self._forget(now)
        self._failures[address] = (start, n + 1)
        over = n + 1 > self.per_minute
        self.counted(over)
        return throttled(max(1, math.ceil(start + WINDOW_S - now))) if over else None

    def _forget(self, now: float) -> None:
        self._failures = {a: v for a, v in self._failures.items() if now - v[0] < WINDOW_S}
        if len(self._failures) >= MAX_ADDRESSES:  # all within the minute: start over
            self._failures.clear()
