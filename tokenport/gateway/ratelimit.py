"""Admission limits per key, in memory: requests per minute (a token bucket) and tokens per
minute (the tokens of the requests settled in the last 60 s)."""

from __future__ import annotations

import math
from collections import deque

from tokenport.clock import Clock
from tokenport.gateway.errors import ApiError


class RateLimiter:
    def __init__(self, clock: Clock, default_rpm: int = 0) -> None:
        self.clock = clock
        self.default_rpm = default_rpm
        self._buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, last refill)
        self._tokens: dict[str, tuple[deque, list[int]]] = {}  # key id -> ((time, n) ..., [sum])

    def admit_tokens(self, key_id: str, tpm: int | None) -> None:
        if not tpm:
            return
        now = self.clock.monotonic()
        window, total = self._window(key_id, now)
        if total[0] >= tpm:
            wait = max(1, math.ceil(window[0][0] + 60 - now))
            raise ApiError(
                429,
                f"Rate limit reached: {tpm} tokens per minute for this key. Retry in {wait} s.",
                "rate_limit_error",
                "rate_limit_exceeded",
                headers={"retry-after": str(wait), "x-ratelimit-limit-tokens": str(tpm)},
            )

    def record_tokens(self, key_id: str, n: int) -> None:
        if n > 0:
            window, total = self._window(key_id, self.clock.monotonic())
            window.append((self.clock.monotonic(), n))
            total[0] += n

    def _window(self, key_id: str, now: float) -> tuple[deque, list[int]]:
        window, total = self._tokens.setdefault(key_id, (deque(), [0]))
        while window and window[0][0] <= now - 60:
            total[0] -= window.popleft()[1]
        return window, total

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
