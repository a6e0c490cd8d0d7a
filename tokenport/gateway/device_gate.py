"""Admit a device (the lifecycle's device step, before the maker's money): its state and
entitlement, its product's models and output cap, its requests per minute and streams at once,
and its daily and monthly token quotas (held at admission, settled on what was used)."""

from __future__ import annotations

import math
from datetime import datetime

from tokenport.clock import Clock
from tokenport.fleets.quotas import DAY, MONTH, DeviceQuotaExceeded, DeviceQuotas, local_day, window_bounds
from tokenport.fleets.records import ACTIVE, IMPORTED
from tokenport.gateway.devices import DeviceEntry
from tokenport.gateway.errors import ApiError, forbidden
from tokenport.gateway.ratelimit import RateLimiter
from tokenport.gateway.request import ParsedRequest

REMAINING_HEADER = "x-tokenport-device-remaining-tokens"


def _limits(entry: DeviceEntry) -> dict[str, int]:
    return {DAY: entry.product.daily_tokens, MONTH: entry.product.monthly_tokens}


def quota_exceeded(exc: DeviceQuotaExceeded, at: datetime) -> ApiError:
    wait = max(1, math.ceil((exc.resets_at - at).total_seconds()))
    return ApiError(
        429,
        f"This device has used its {exc.window}ly quota of {exc.limit} tokens; it resets at "
        f"{exc.resets_at.isoformat().replace('+00:00', 'Z')}",
        "insufficient_quota",
        "device_quota_exceeded",
        headers={"retry-after": str(wait), REMAINING_HEADER: str(exc.remaining)},
    )


class DeviceGate:
    def __init__(self, quotas: DeviceQuotas, limiter: RateLimiter, clock: Clock) -> None:
        self.quotas = quotas
        self.limiter = limiter
        self.clock = clock
        self.streams: dict[str, int] = {}  # serial -> requests in flight

    def restore(self, entry: DeviceEntry, used: tuple[int, int]) -> None:
        """What a device used today and this month before this process saw it (from the database)."""
        at, tz = self.clock.now(), entry.product.reset_tz
        day_used, month_used = used
        self.quotas.restore(entry.device.serial, DAY, window_bounds(DAY, at, tz)[0], day_used)
        self.quotas.restore(entry.device.serial, MONTH, window_bounds(MONTH, at, tz)[0], month_used)

    def check(self, entry: DeviceEntry, req: ParsedRequest, at: datetime) -> None:
        """State, entitlement, models, output cap (lowered to it), rate and concurrency."""
        device, product = entry.device, entry.product
        if device.state != ACTIVE:
            code = "device_not_activated" if device.state == IMPORTED else f"device_{device.state}"
            raise forbidden(f"This device is {device.state.replace('imported', 'not activated')}", code)
        if not device.entitled(at):
            raise forbidden("This device's service package has ended", "device_entitlement_expired")
        if product.models and req.model not in product.models:
            raise forbidden(
                f"This device's product may use {', '.join(product.models)}, not {req.model!r}",
                "model_not_allowed",
            )
        if product.max_output is not None and req.endpoint != "embeddings":
            cap = product.max_output
            if req.max_output is None or req.max_output > cap:
                fields = [f for f in ("max_tokens", "max_completion_tokens") if f in req.body]
                for name in fields or ["max_tokens"]:
                    req.body[name] = cap
        if product.rpm:
            self.limiter.admit("dev:" + device.serial, product.rpm)
        if product.concurrency and self.streams.get(device.serial, 0) >= product.concurrency:
            raise ApiError(
                429,
                f"This device has {product.concurrency} requests in flight, its most at once",
                "rate_limit_error",
                "device_concurrency_exceeded",
                headers={"retry-after": "1"},
            )

    def reserve(
        self, request_id: str, entry: DeviceEntry, model: str, most_tokens: int, at: datetime
    ) -> None:
        """Hold the most the request can count against the device's quotas; one stream more."""
        serial = entry.device.serial
        amount = entry.product.units(model, most_tokens)
        try:
            self.quotas.reserve(request_id, serial, amount, _limits(entry), at, entry.product.reset_tz)
        except DeviceQuotaExceeded as exc:
            raise quota_exceeded(exc, at) from None
        self.streams[serial] = self.streams.get(serial, 0) + 1

    def settle(
        self, request_id: str, entry: DeviceEntry, model: str | None, tokens: int, admitted_at: datetime
    ) -> tuple[int, str]:
        """Count what the request used in the windows it was admitted in; (weighted units, the
        local day they count on)."""
        serial = entry.device.serial
        units = entry.product.units(model or "", tokens)
        self.quotas.settle(request_id, serial, units)
        n = self.streams.get(serial, 0) - 1
        if n > 0:
            self.streams[serial] = n
        else:
            self.streams.pop(serial, None)
        return units, local_day(admitted_at, entry.product.reset_tz)

    def remaining(self, entry: DeviceEntry, at: datetime) -> int:
        return self.quotas.remaining(entry.device.serial, _limits(entry), at, entry.product.reset_tz)
