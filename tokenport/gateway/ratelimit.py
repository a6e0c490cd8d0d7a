"""Admission limits per key: requests per minute (a token bucket) and tokens per minute (the
tokens of the requests settled in the last 60 s). `RateLimiter` keeps them in memory (one
process); in shared mode `Charging` applies the same rules to counters in the database."""

from __future__ import annotations

import math
from collections import deque

from tokenport.clock import Clock
from tokenport.gateway.errors import ApiError

MICRO = 1_000_000  # micro-requests per request


def limit_error(limit: int, unit: str, wait: int) -> ApiError:
    """429 for a key's `unit` ("requests" or "tokens") per minute, with Retry-After."""
    return ApiError(
        429,
        f"Rate limit reached: {limit} {unit} per minute for this key. Retry in {wait} s.",
        "rate_limit_error",
        "rate_limit_exceeded",
        headers={"retry-after": str(wait), f"x-ratelimit-limit-{unit}": str(limit)},
    )


def take_request(bucket: tuple[int, int] | None, now_us: int, rpm: int) -> tuple[int, int]:
    """One request from an integer token bucket (micro-requests, as of a microsecond): the new
    bucket, or `limit_error`. It refills at rpm per minute up to rpm."""
    full = rpm * MICRO
    level, at_us = bucket if bucket is not None else (full, now_us)
    level = min(full, level + max(0, now_us - at_us) * rpm // 60)
    if level < MICRO:
        raise limit_error(rpm, "requests", max(1, math.ceil((MICRO - level) * 60 / rpm / MICRO)))
    return level - MICRO, now_us


def check_tokens(window: list[tuple[int, int]], now_s: int, tpm: int) -> None:
    """`limit_error` when the tokens settled in the last 60 s ((second, tokens) rows) reach `tpm`."""
    live = [(s, n) for s, n in window if s > now_s - 60]
    if sum(n for _, n in live) >= tpm:
        raise limit_error(tpm, "tokens", max(1, min(s for s, _ in live) + 60 - now_s))


class RateLimiter:
    def __init__(self, clock: Clock, default_rpm: int = 0, local: bool = True) -> None:
        self.clock = clock
        self.default_rpm = default_rpm if local else 0
        self.local = local  # False in shared mode: the limits are applied at money admission
        self._buckets: dict[str, tuple[int, int]] = {}  # key id -> (micro-requests, as of µs)
        self._tokens: dict[str, tuple[deque, list[int]]] = {}  # key id -> ((time, n) ..., [sum])

    def admit_tokens(self, key_id: str, tpm: int | None) -> None:
        if not tpm or not self.local:
            return
        now = self.clock.monotonic()
        window, total = self._window(key_id, now)
        if total[0] >= tpm:
            raise limit_error(tpm, "tokens", max(1, math.ceil(window[0][0] + 60 - now)))

    def record_tokens(self, key_id: str, n: int) -> None:
        if n > 0 and self.local:
            window, total = self._window(key_id, self.clock.monotonic())
            window.append((self.clock.monotonic(), n))
            total[0] += n

    def _window(self, key_id: str, now: float) -> tuple[deque, list[int]]:
        window, total = self._tokens.setdefault(key_id, (deque(), [0]))
        while window and window[0][0] <= now - 60:
            total[0] -= window.popleft()[1]
        return window, total

    def forget(self, key_id: str) -> None:
        """Drop a key's (or a device's) request bucket: a new one is full, as a minute-old one is."""
        self._buckets.pop(key_id, None)

    def admit(self, key_id: str, rpm: int | None) -> None:
        rpm = rpm or self.default_rpm
        if rpm <= 0 or not self.local:
            return
        now_us = int(self.clock.monotonic() * 1_000_000)
        self._buckets[key_id] = take_request(self._buckets.get(key_id), now_us, rpm)  # or raises
