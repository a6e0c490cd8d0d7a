"""Per-device quotas in the product's time zone: local midnight and month starts (DST-aware),
held at admission, settled on what was used."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tokenport.fleets.quotas import DAY, MONTH, DeviceQuotaExceeded, DeviceQuotas, local_day, window_bounds

LONDON = "Europe/London"


def test_a_local_day_in_london_across_the_dst_change():
    # 2026-03-29: clocks go forward at 01:00 UTC; the local day lasts 23 hours.
    start, end = window_bounds(DAY, datetime(2026, 3, 29, 12, tzinfo=UTC), LONDON)
    assert start == datetime(2026, 3, 29, 0, tzinfo=UTC)
    assert end == datetime(2026, 3, 29, 23, tzinfo=UTC)
    # the next day starts at local midnight = 23:00 UTC
    assert window_bounds(DAY, datetime(2026, 3, 29, 23, 30, tzinfo=UTC), LONDON)[0] == end
    # 2026-10-25: clocks go back; the local day lasts 25 hours.
    start, end = window_bounds(DAY, datetime(2026, 10, 25, 12, tzinfo=UTC), LONDON)
    assert (end - start).total_seconds() == 25 * 3600


def test_a_local_month_in_tokyo():
    start, end = window_bounds(
        MONTH, datetime(2026, 11, 30, 16, tzinfo=UTC), "Asia/Tokyo"
    )  # Dec 1, 01:00 JST
    assert start == datetime(2026, 11, 30, 15, tzinfo=UTC)
    assert end == datetime(2026, 12, 31, 15, tzinfo=UTC)
    assert local_day(datetime(2026, 11, 30, 16, tzinfo=UTC), "Asia/Tokyo") == "2026-12-01"


def test_reserve_settle_and_the_reset_at_local_midnight():
    q = DeviceQuotas()
    limits = {DAY: 1000, MONTH: 5000}
    t = datetime(2026, 12, 6, 23, 30, tzinfo=UTC)  # 23:30 in London (UTC+0 in December)
    q.reserve("r1", "TOY-1", 800, limits, t, LONDON)
    assert q.remaining("TOY-1", limits, t, LONDON) == 200
    with pytest.raises(DeviceQuotaExceeded) as exc:
        q.reserve("r2", "TOY-1", 300, limits, t, LONDON)
    assert exc.value.window == DAY and exc.value.resets_at == datetime(2026, 12, 7, tzinfo=UTC)
    q.settle("r1", "TOY-1", 600)  # used less than held
    assert q.remaining("TOY-1", limits, t, LONDON) == 400
    q.reserve("r2", "TOY-1", 400, limits, t, LONDON)  # exactly what is left
    q.settle("r2", "TOY-1", 400)
    assert q.remaining("TOY-1", limits, t, LONDON) == 0
    after = datetime(2026, 12, 7, 0, 0, 1, tzinfo=UTC)
    assert q.remaining("TOY-1", limits, after, LONDON) == 1000  # a new local day
    q.reserve("r3", "TOY-1", 1000, limits, after, LONDON)
    q.settle("r3", "TOY-1", 1000)
    with pytest.raises(DeviceQuotaExceeded) as exc:  # the month: 600 + 400 + 1000 = 2000 of 5000 ...
        q.reserve("r4", "TOY-1", 3001, {DAY: 10_000, MONTH: 5000}, after, LONDON)
    assert exc.value.window == MONTH and exc.value.remaining == 3000


def test_a_settlement_counts_in_the_day_it_was_admitted():
    q = DeviceQuotas()
    limits = {DAY: 1000, MONTH: 5000}
    before = datetime(2026, 12, 6, 23, 59, tzinfo=UTC)
    q.reserve("r1", "TOY-1", 500, limits, before, LONDON)
    q.settle("r1", "TOY-1", 500)  # settles after midnight, counted on the 6th
    assert q.remaining("TOY-1", limits, datetime(2026, 12, 7, 0, 1, tzinfo=UTC), LONDON) == 1000
    assert q.remaining("TOY-1", limits, before, LONDON) == 500


def test_restored_usage_counts():
    q = DeviceQuotas()
    t = datetime(2026, 12, 6, 12, tzinfo=UTC)
    q.restore("TOY-1", DAY, window_bounds(DAY, t, LONDON)[0], 900)
    with pytest.raises(DeviceQuotaExceeded):
        q.reserve("r1", "TOY-1", 101, {DAY: 1000, MONTH: 5000}, t, LONDON)
