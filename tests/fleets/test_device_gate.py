"""The device step of admission, in memory with an injected clock: state, entitlement, models,
the output cap, concurrency, and quotas with `Retry-After` to the next local midnight (across a
DST change) or month start; and device tokens' expiry."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from tokenport.clock import FakeClock
from tokenport.fleets.identity import issue_token
from tokenport.fleets.quotas import DeviceQuotas
from tokenport.fleets.records import ACTIVE, IMPORTED, QUARANTINED, REVOKED, Device, Fleet, Product
from tokenport.gateway.device_gate import REMAINING_HEADER, DeviceGate
from tokenport.gateway.devices import DeviceDirectory, DeviceEntry, maker_key
from tokenport.gateway.errors import ApiError
from tokenport.gateway.ratelimit import RateLimiter
from tokenport.gateway.request import ParsedRequest
from tokenport.tenancy.records import Tenant

FLEET = Fleet("flt_1", "ten_1", "bears", "overseas")
TENANT = Tenant("ten_1", "shantou-toys", "overseas", datetime(2026, 1, 1, tzinfo=UTC), None)
PRODUCT = Product(
    "prd_1", "flt_1", "BEAR", 365, daily_tokens=1000, monthly_tokens=3000, concurrency=2,
    models=("toy-chat",), max_output=100, reset_tz="Europe/London",
)  # fmt: skip


def entry(state: str = ACTIVE, ends: datetime | None = None, product: Product = PRODUCT) -> DeviceEntry:
    ends = ends or datetime(2027, 6, 1, tzinfo=UTC)
    device = Device("BEAR-1", FLEET.id, product.id, "bat_1", state, datetime(2026, 6, 1, tzinfo=UTC), ends)
    return DeviceEntry(device, product, FLEET, maker_key(FLEET, TENANT))


def chat(model: str = "toy-chat", **body) -> ParsedRequest:
    return ParsedRequest("chat", model, True, True, {"model": model, "messages": [], **body})


def gate(clock: FakeClock) -> DeviceGate:
    return DeviceGate(DeviceQuotas(), RateLimiter(clock), clock)


def refusal(fn, *args) -> ApiError:
    with pytest.raises(ApiError) as exc:
        fn(*args)
    return exc.value


@pytest.mark.parametrize(
    "state,code",
    [(IMPORTED, "device_not_activated"), (QUARANTINED, "device_quarantined"), (REVOKED, "device_revoked")],
)
def test_a_device_not_active_is_refused(state, code):
    clock = FakeClock(datetime(2026, 12, 6, 12, tzinfo=UTC))
    err = refusal(gate(clock).check, entry(state), chat(), clock.now())
    assert (err.status, err.code) == (403, code)


def test_an_ended_entitlement_and_a_model_outside_the_product_are_refused():
    clock = FakeClock(datetime(2026, 12, 6, 12, tzinfo=UTC))
    err = refusal(gate(clock).check, entry(ends=clock.now()), chat(), clock.now())
    assert (err.status, err.code) == (403, "device_entitlement_expired")
    err = refusal(gate(clock).check, entry(), chat("big-model"), clock.now())
    assert (err.status, err.code) == (403, "model_not_allowed")


def test_the_output_cap_lowers_what_is_asked():
    clock = FakeClock(datetime(2026, 12, 6, 12, tzinfo=UTC))
    g = gate(clock)
    for body, field in (({}, "max_tokens"), ({"max_completion_tokens": 5000}, "max_completion_tokens")):
        req = chat(**body)
        g.check(entry(), req, clock.now())
        assert req.body[field] == 100 and req.max_output == 100
    small = chat(max_tokens=7)
    g.check(entry(), small, clock.now())
    assert small.body["max_tokens"] == 7


def test_concurrency_counts_requests_in_flight():
    clock = FakeClock(datetime(2026, 12, 6, 12, tzinfo=UTC))
    g, e = gate(clock), entry()
    g.reserve("r1", e, "toy-chat", 10, clock.now())
    g.reserve("r2", e, "toy-chat", 10, clock.now())
    err = refusal(g.check, e, chat(), clock.now())
    assert (err.status, err.code) == (429, "device_concurrency_exceeded")
    g.settle("r1", e, "toy-chat", 5, clock.now())
    g.check(e, chat(), clock.now())


@pytest.mark.parametrize(
    "now,reset",
    [
        # a winter evening in London (UTC+0): local midnight is 00:00 UTC
        (datetime(2026, 12, 6, 22, 0, tzinfo=UTC), datetime(2026, 12, 7, 0, 0, tzinfo=UTC)),
        # the evening before the clocks go forward (29 March 2026): still UTC+0 at midnight
        (datetime(2026, 3, 28, 23, 0, tzinfo=UTC), datetime(2026, 3, 29, 0, 0, tzinfo=UTC)),
        # the day the clocks went forward: the next local midnight is 23:00 UTC
        (datetime(2026, 3, 29, 20, 0, tzinfo=UTC), datetime(2026, 3, 29, 23, 0, tzinfo=UTC)),
        # the day the clocks go back (25 October 2026): local midnight is 00:00 UTC again
        (datetime(2026, 10, 25, 20, 0, tzinfo=UTC), datetime(2026, 10, 26, 0, 0, tzinfo=UTC)),
    ],
)
def test_the_daily_quota_resets_at_local_midnight(now, reset):
    clock = FakeClock(now)
    g, e = gate(clock), entry()
    g.reserve("r1", e, "toy-chat", 900, now)
    g.settle("r1", e, "toy-chat", 900, now)
    err = refusal(g.reserve, "r2", e, "toy-chat", 101, now)
    assert (err.status, err.code, err.type) == (429, "device_quota_exceeded", "insufficient_quota")
    assert int(err.headers["retry-after"]) == int((reset - now).total_seconds())
    assert err.headers[REMAINING_HEADER] == "100"
    g.reserve("r3", e, "toy-chat", 1000, reset)  # a new local day: the whole quota again


def test_the_monthly_quota_waits_for_the_local_month():
    now = datetime(2026, 12, 20, 12, tzinfo=UTC)
    clock = FakeClock(now)
    g, e = gate(clock), entry()
    for day in range(3):  # 3 x 1000: the month's 3000
        at = now + timedelta(days=day)
        g.reserve(f"r{day}", e, "toy-chat", 1000, at)
        g.settle(f"r{day}", e, "toy-chat", 1000, at)
    at = now + timedelta(days=3)
    err = refusal(g.reserve, "r9", e, "toy-chat", 1, at)
    assert err.code == "device_quota_exceeded"
    assert int(err.headers["retry-after"]) == int((datetime(2027, 1, 1, tzinfo=UTC) - at).total_seconds())


def test_models_are_weighted_as_the_product_says():
    product = Product(
        "prd_2", "flt_1", "BEAR-PRO", 365, 1000, 3000, models=(), reset_tz="UTC",
        multipliers=(("big-model", 2500),),
    )  # fmt: skip
    clock = FakeClock(datetime(2026, 12, 6, 12, tzinfo=UTC))
    g, e = gate(clock), entry(product=product)
    g.reserve("r1", e, "big-model", 400, clock.now())  # 1000 units: all of the day
    assert g.settle("r1", e, "big-model", 100, clock.now()) == (250, "2026-12-06")
    assert g.remaining(e, clock.now()) == 750


class _Reader:
    def __init__(self, device: Device) -> None:
        self.devices = {device.serial: device}
        self.reads = 0

    def device(self, serial: str) -> Device | None:
        self.reads += 1
        return self.devices.get(serial)

    def product_by_id(self, product_id: str) -> Product | None:
        return PRODUCT if product_id == PRODUCT.id else None

    def fleet_by_id(self, fleet_id: str) -> Fleet | None:
        return FLEET if fleet_id == FLEET.id else None


def test_device_tokens_expire_and_the_directory_reads_a_device_once():
    clock = FakeClock(datetime(2026, 12, 6, 12, tzinfo=UTC))
    reader = _Reader(entry().device)
    directory = DeviceDirectory(reader, lambda tid: TENANT if tid == TENANT.id else None, b"k" * 32, clock)
    token = issue_token(b"k" * 32, "BEAR-1", int((clock.now() + timedelta(hours=24)).timestamp()))
    found = asyncio.run(directory.from_token(token))
    assert found.device.serial == "BEAR-1" and found.maker.tenant_id == TENANT.id
    assert found.maker.id == FLEET.id and found.maker.budget_nano_usd is None
    asyncio.run(directory.from_token(token))
    assert reader.reads == 1  # the second request found it in memory
    directory.apply([(1, "device", "BEAR-1")])  # revoked elsewhere: dropped, read on its next request
    assert len(directory) == 0 and reader.reads == 1
    asyncio.run(directory.from_token(token))
    assert reader.reads == 2
    clock.advance(24 * 3600)
    with pytest.raises(ApiError) as exc:
        asyncio.run(directory.from_token(token))
    assert (exc.value.status, exc.value.code) == (401, "device_token_expired")
    forged = issue_token(b"x" * 32, "BEAR-1", int((clock.now() + timedelta(hours=1)).timestamp()))
    with pytest.raises(ApiError) as exc:
        asyncio.run(directory.from_token(forged))
    assert exc.value.status == 401
