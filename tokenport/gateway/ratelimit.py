"""Admission limits: a token bucket per key (requests per minute), in memory."""

from __future__ import annotations

import math

from tokenport.clock import Clock
from tokenport.gateway.errors import ApiError


class RateLimiter:
    def __init__(self, clock: Clock, default_rpm: int = 0) -> None:
        self.clock = clock
        self.default_rpm = default_rpm
        self._buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, last refill)

    def admit(self, key_id: str, rpm: int | None) -> None:
        rpm = rpm or self.default_rpm
        if rpm <= 0:
            return
        now = self.clock.monotonic()
        rate = rpm / 60.0
        tokens, last = self._buckets.get(key_id, (float(rpm), now))
        tokens = min(float(rpm), tokens + (now - last) * rate)
        if tokens < 1.0:
            self._buckets[key_id] = (tokens, now)
            wait = math.ceil((1.0 - tokens) / rate)
            raise ApiError(
                429,
                f"Rate limit reached: {rpm} requests per minute for this key. Retry in {wait} s.",
                "rate_limit_error",
                "rate_limit_exceeded",
                headers={"retry-after": str(wait), "x-ratelimit-limit-requests": str(rpm)},
            )
        self._buckets[key_id] = (tokens - 1.0, now)
