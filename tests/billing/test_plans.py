"""Coding plans: rolling 5-hour and 7-day windows, model multipliers, an injected clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tokenport.billing.plans import Plan, PlanUsage, parse_multipliers, ratelimit_headers, retry_after

T0 = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
PLAN = Plan(
    "pro", 200 * 10**9, "tokens", five_hour_limit=1000, weekly_limit=3000, multipliers=(("big", 2500),)
)


def test_multipliers_weigh_usage():
    assert PLAN.units("small", 100) == 100
    assert PLAN.units("big", 100) == 250
    assert Plan("r", 0, "requests", 10, 100, (("big", 2000),)).units("big", 99_999) == 2
    assert parse_multipliers(["big=2.5", "tiny=0.5"]) == (("big", 2500), ("tiny", 500))
    for bad in ("big", "=2", "big=0", "big=-1", "big=abc", "big=nan", "big=1e9"):
        with pytest.raises(ValueError):
            parse_multipliers([bad])


def test_five_hour_window_rolls_over():
    usage = PlanUsage()
    usage.add("t", PLAN.units("small", 600), T0)
    usage.add("t", PLAN.units("big", 200), T0 + timedelta(hours=1))  # 500 units
    five, week = usage.windows(PLAN, "t", T0 + timedelta(hours=2))
    assert (five.used, five.exhausted, week.used) == (1100, True, 1100)
    # The first 600 age out at T0 + 5h: then 500 used, under the limit again.
    assert five.resets_at == T0 + timedelta(hours=5)
    assert retry_after((five, week), T0 + timedelta(hours=2)) == 3 * 3600
    headers = ratelimit_headers((five, week), T0 + timedelta(hours=2))
    assert headers["x-ratelimit-window-plan"] == "5h" and headers["x-ratelimit-remaining-plan"] == "0"
    five, _ = usage.windows(PLAN, "t", T0 + timedelta(hours=5))
    assert (five.used, five.exhausted) == (500, False)
    five, week = usage.windows(PLAN, "t", T0 + timedelta(hours=6, minutes=1))
    assert (five.used, week.used) == (0, 1100)  # gone from 5 hours, still in the week


def test_weekly_window_outlasts_the_five_hour_one():
    usage = PlanUsage()
    for day in range(4):  # 900 units a day: under 5h each time, 3600 in the week
        usage.add("t", 900, T0 + timedelta(days=day))
    now = T0 + timedelta(days=3, hours=6)
    five, week = usage.windows(PLAN, "t", now)
    assert (five.exhausted, week.used, week.exhausted) == (False, 3600, True)
    assert week.resets_at == T0 + timedelta(days=7)  # the first day's 900 age out: 2700 < 3000
    assert usage.windows(PLAN, "t", T0 + timedelta(days=7))[1].exhausted is False
    assert usage.windows(PLAN, "other", now)[1].used == 0


def test_memory_is_bounded_by_minute_buckets():
    usage = PlanUsage()
    for i in range(20_000):  # two weeks of one request a minute
        usage.add("t", 1, T0 + timedelta(minutes=i))
    assert len(usage._buckets["t"]) <= 7 * 24 * 60 + 11
    _, week = usage.windows(PLAN, "t", T0 + timedelta(minutes=19_999))
    assert week.used == 7 * 24 * 60
