"""Clone detection in memory, with an injected clock: too many addresses within an hour, too
many streams; each device flagged at most once an hour; bounded per device."""

from __future__ import annotations

from datetime import UTC, datetime

from tokenport.fleets.records import ACTIVE, Device, Fleet, Product
from tokenport.gateway.clones import HOUR_S, TOO_MANY_ADDRESSES, TOO_MANY_STREAMS, CloneWatch
from tokenport.gateway.devices import DeviceEntry, maker_key
from tokenport.tenancy.records import Tenant

FLEET = Fleet("flt_1", "ten_1", "bears", "overseas", max_addresses_per_hour=2)
PRODUCT = Product("prd_1", "flt_1", "BEAR", 365, 1000, 3000, concurrency=2)
AT = datetime(2026, 12, 6, tzinfo=UTC)
ENTRY = DeviceEntry(
    Device("BEAR-1", "flt_1", "prd_1", "bat_1", ACTIVE, AT, AT),
    PRODUCT,
    FLEET,
    maker_key(FLEET, Tenant("ten_1", "toys", "overseas", AT, None)),
)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def watch() -> tuple[CloneWatch, Clock, list]:
    clock, flags = Clock(), []
    return (
        CloneWatch(clock, lambda e, kind, detail: flags.append((e.device.serial, kind, detail))),
        clock,
        flags,
    )


def test_more_addresses_in_an_hour_than_allowed_flag_once():
    w, clock, flags = watch()
    for address in ("10.0.0.1", "10.0.0.2", "10.0.0.1", None):
        w.seen(ENTRY, address)
    assert flags == []
    w.seen(ENTRY, "10.0.0.3")
    assert flags == [("BEAR-1", TOO_MANY_ADDRESSES, "3 client addresses within an hour (at most 2)")]
    for i in range(4, 50):  # still a clone: flagged once an hour, and its addresses stay bounded
        w.seen(ENTRY, f"10.0.0.{i}")
    assert len(flags) == 1 and len(w._addresses["BEAR-1"]) == 3
    clock.t += HOUR_S
    w.seen(ENTRY, "10.0.0.200")  # an hour on: the old addresses are forgotten
    assert len(flags) == 1
    w.seen(ENTRY, "10.0.0.201")
    w.seen(ENTRY, "10.0.0.202")
    assert [f[1] for f in flags] == [TOO_MANY_ADDRESSES, TOO_MANY_ADDRESSES]


def test_an_address_seen_an_hour_ago_no_longer_counts():
    w, clock, flags = watch()
    w.seen(ENTRY, "10.0.0.1")
    w.seen(ENTRY, "10.0.0.2")
    clock.t += HOUR_S + 1
    w.seen(ENTRY, "10.0.0.3")  # the first two are an hour old
    assert flags == []


def test_too_many_streams_flag_once_an_hour():
    w, clock, flags = watch()
    w.too_many_streams(ENTRY, 2)
    w.too_many_streams(ENTRY, 2)
    assert flags == [("BEAR-1", TOO_MANY_STREAMS, "more than 2 streams at once")]
    clock.t += HOUR_S
    w.too_many_streams(ENTRY, 2)
    assert len(flags) == 2
