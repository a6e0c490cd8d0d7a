"""Admit a device (the lifecycle's device step, before the maker's money): its state and
entitlement, its product's models and output cap, its requests per minute and streams at once;
and what its quotas are asked (`ask`: the most the request can count in its local day and month),
which the mode's admission strategy holds with the money (`gateway/charging.py`: in this
process's memory, or in the shared state)."""

from __future__ import annotations

import math
from datetime import datetime

from tokenport.billing.admission import DeviceAsk
from tokenport.clock import Clock
from tokenport.fleets.quotas import (
    DAY,
    MONTH,
    DeviceBusy,
    DeviceQuotaExceeded,
    DeviceQuotas,
    check_streams,
    device_ask,
    local_day,
    window_bounds,
)
from tokenport.fleets.records import ACTIVE, IMPORTED
from tokenport.gateway.devices import DeviceEntry
from tokenport.gateway.errors import ApiError, forbidden
from tokenport.gateway.ratelimit import RateLimiter
from tokenport.gateway.request import ParsedRequest

REMAINING_HEADER = "x-tokenport-device-remaining-tokens"
ADJECTIVE = {DAY: "daily", MONTH: "monthly"}


def _limits(entry: DeviceEntry) -> dict[str, int]:
    return {DAY: entry.product.daily_tokens, MONTH: entry.product.monthly_tokens}


def quota_exceeded(exc: DeviceQuotaExceeded, at: datetime) -> ApiError:
    wait = max(1, math.ceil((exc.resets_at - at).total_seconds()))
    return ApiError(
        429,
        f"This device has used its {ADJECTIVE[exc.window]} quota of {exc.limit} tokens; it resets at "
        f"{exc.resets_at.isoformat().replace('+00:00', 'Z')}",
        "insufficient_quota",
        "device_quota_exceeded",
        headers={"retry-after": str(wait), REMAINING_HEADER: str(exc.remaining)},
    )


def concurrency_exceeded(exc: DeviceBusy) -> ApiError:
    return ApiError(
        429,
        f"This device has {exc.limit} requests in flight, its most at once",
        "rate_limit_error",
        "device_concurrency_exceeded",
        headers={"retry-after": "1"},
    )


def device_refusal(exc: DeviceQuotaExceeded | DeviceBusy, at: datetime) -> ApiError:
    """The client's answer to a device's refusal by the rules (`fleets.quotas.check_device`)."""
    if isinstance(exc, DeviceBusy):
        return concurrency_exceeded(exc)
    return quota_exceeded(exc, at)


def counted(entry: DeviceEntry, model: str | None, tokens: int, admitted_at: datetime) -> tuple[int, str]:
    """What a request counts against its device: (weighted units, the local day they count on)."""
    return entry.product.units(model or "", tokens), local_day(admitted_at, entry.product.reset_tz)


def check_standing(entry: DeviceEntry, at: datetime) -> None:
    """The device may be served at all: active, and within its entitlement."""
    device = entry.device
    if device.state != ACTIVE:
        code = "device_not_activated" if device.state == IMPORTED else f"device_{device.state}"
        raise forbidden(f"This device is {device.state.replace('imported', 'not activated')}", code)
    if not device.entitled(at):
        raise forbidden("This device's service package has ended", "device_entitlement_expired")


def cap_output(req: ParsedRequest, cap: int) -> None:
    """Every output limit the request gives, lowered to the product's cap (both of OpenAI's
    fields: an engine may honour either); none given: `max_tokens` is the cap."""
    fields = [f for f in ("max_tokens", "max_completion_tokens") if f in req.body]
    for name in fields or ["max_tokens"]:
        value = req.body.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value > cap:
            req.body[name] = cap


class DeviceGate:
    """`quotas`: this process's counters (one process: the same `DeviceQuotas` that `LocalCharging`
    holds in), or None in shared mode, where the shared state counts streams and quotas."""

    def __init__(self, quotas: DeviceQuotas | None, limiter: RateLimiter, clock: Clock) -> None:
        self.quotas = quotas
        self.limiter = limiter
        self.clock = clock

    def restore(self, entry: DeviceEntry, used: tuple[int, int]) -> None:
        """What a device used today and this month before this process saw it (from the database)."""
        if self.quotas is None:
            return
        at, tz = self.clock.now(), entry.product.reset_tz
        day_used, month_used = used
        self.quotas.restore(entry.device.serial, DAY, window_bounds(DAY, at, tz)[0], day_used)
        self.quotas.restore(entry.device.serial, MONTH, window_bounds(MONTH, at, tz)[0], month_used)

    def forget(self, serial: str) -> None:
        """The directory dropped the device: its idle counters and its rate bucket go too (memory
        stays bounded by the directory's size)."""
        if self.quotas is not None:
            self.quotas.forget_idle(serial)
        self.limiter.forget("dev:" + serial)

    def check(self, entry: DeviceEntry, req: ParsedRequest, at: datetime) -> None:
        """State, entitlement, models, output cap (lowered to it); in one process also its rate
        and concurrency (shared mode: decided with its quotas, at admission)."""
        device, product = entry.device, entry.product
        check_standing(entry, at)
        if product.models and req.model not in product.models:
            raise forbidden(
                f"This device's product may use {', '.join(product.models)}, not {req.model!r}",
                "model_not_allowed",
            )
        if product.max_output is not None and req.endpoint != "embeddings":
            cap_output(req, product.max_output)
        if product.rpm:
            self.limiter.admit("dev:" + device.serial, product.rpm)  # one process only (else no-op)
        if self.quotas is not None:
            try:
                check_streams(product.concurrency, self.quotas.streams(device.serial))
            except DeviceBusy as exc:
                raise concurrency_exceeded(exc) from None

    @staticmethod
    def ask(entry: DeviceEntry, model: str, most_tokens: int, at: datetime) -> DeviceAsk:
        """What the request asks of its device: the most it can count, weighted, in the local day
        and month it starts in; one stream more; one request of its rate."""
        product = entry.product
        return device_ask(
            entry.device.serial,
            product.units(model, most_tokens),
            product.daily_tokens,
            product.monthly_tokens,
            at,
            product.reset_tz,
            product.concurrency,
            product.rpm,
        )

    # --- one process's counters (LocalCharging holds in the same `quotas`) ---

    def reserve(
        self, request_id: str, entry: DeviceEntry, model: str, most_tokens: int, at: datetime
    ) -> None:
        """Hold the most the request can count against the device's quotas; one stream more."""
        assert self.quotas is not None, "one process's counters"
        try:
            self.quotas.hold(request_id, self.ask(entry, model, most_tokens, at))
        except (DeviceQuotaExceeded, DeviceBusy) as exc:
            raise device_refusal(exc, at) from None

    def settle(
        self, request_id: str, entry: DeviceEntry, model: str | None, tokens: int, admitted_at: datetime
    ) -> tuple[int, str]:
        """Count what the request used in the windows it was admitted in; (weighted units, the
        local day they count on)."""
        units, day = counted(entry, model, tokens, admitted_at)
        if self.quotas is not None:
            self.quotas.settle(request_id, entry.device.serial, units)
        return units, day

    def remaining(self, entry: DeviceEntry, at: datetime) -> int:
        assert self.quotas is not None, "one process's counters"
        return self.quotas.remaining(entry.device.serial, _limits(entry), at, entry.product.reset_tz)
