"""Schedule timing and misfire policies as pure functions of (schedule, stored state, now).

No database and no clock: every test passes the moment it means.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from asyncjobs import App, ConfigurationError
from asyncjobs.schedules import (
    MAX_CATCH_UP,
    MISFIRE_GRACE,
    CronTiming,
    IntervalTiming,
    make_timing,
    node_copy_ttl,
    plan,
)

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)
MINUTE = timedelta(minutes=1)


def cron(expression: str, zone: str = "UTC", anchor: datetime = T0) -> CronTiming:
    return CronTiming(expression, ZoneInfo(zone), anchor)


def test_cron_ticks_after_and_at_or_before() -> None:
    every_five = cron("*/5 * * * *")
    assert every_five.first() == T0 + 5 * MINUTE  # strictly after the anchor
    assert every_five.after(T0 + 7 * MINUTE) == T0 + 10 * MINUTE
    assert every_five.at_or_before(T0 + 10 * MINUTE) == T0 + 10 * MINUTE  # a tick itself
    assert every_five.at_or_before(T0 + 10 * MINUTE - SECOND / 1000) == T0 + 5 * MINUTE


def test_cron_with_seconds_as_sixth_field() -> None:
    every_ten_seconds = cron("* * * * * */10")
    assert every_ten_seconds.after(T0 + 3 * SECOND) == T0 + 10 * SECOND
    assert every_ten_seconds.at_or_before(T0 + 19 * SECOND) == T0 + 10 * SECOND


def test_cron_follows_its_time_zone_across_daylight_saving() -> None:
    # 09:00 in Oslo is 08:00 UTC in winter and 07:00 UTC in summer (DST began 31 March 2024)
    nine = cron("0 9 * * *", "Europe/Oslo", anchor=datetime(2024, 3, 30, 12, tzinfo=UTC))
    first = nine.first()
    second = nine.after(first)
    assert first == datetime(2024, 3, 31, 7, tzinfo=UTC)
    assert second == datetime(2024, 4, 1, 7, tzinfo=UTC)
    assert nine.after(datetime(2024, 3, 29, 12, tzinfo=UTC)) == datetime(2024, 3, 30, 8, tzinfo=UTC)


def test_interval_ticks_form_a_fixed_grid_from_the_anchor() -> None:
    grid = IntervalTiming(timedelta(seconds=10), T0 + 3 * SECOND)  # anchor + initial delay
    assert grid.first() == T0 + 3 * SECOND
    assert grid.at_or_before(T0) is None
    assert grid.after(T0) == T0 + 3 * SECOND
    assert grid.after(T0 + 3 * SECOND) == T0 + 13 * SECOND
    # a late look does not shift the grid
    assert grid.at_or_before(T0 + 37 * SECOND) == T0 + 33 * SECOND
    timing = make_timing(None, timedelta(seconds=10), 3 * SECOND, "UTC", T0)
    assert timing == grid


def test_nothing_due_before_the_next_tick() -> None:
    timing = cron("* * * * *")
    assert plan(timing, T0 + MINUTE, T0 + 30 * SECOND, "all").fires == ()
    fresh = plan(timing, None, T0 + 30 * SECOND, "once")
    assert fresh.fires == () and fresh.next_fire_at == T0 + MINUTE


def test_on_time_tick_fires_under_every_policy() -> None:
    timing = cron("* * * * *")
    for policy in ("skip", "once", "all"):
        planned = plan(timing, T0 + MINUTE, T0 + MINUTE + SECOND / 10, policy)
        assert planned.fires == (T0 + MINUTE,), policy
        assert planned.next_fire_at == T0 + 2 * MINUTE
        assert planned.missed == 0


def test_misfire_policies_after_an_hour_of_downtime() -> None:
    timing = cron("* * * * *")
    stored_next = T0 + MINUTE  # the last tick fired was T0; then every worker was down
    now = T0 + timedelta(hours=1, seconds=40)  # 60 ticks were due: T0+1min ... T0+60min

    skip = plan(timing, stored_next, now, "skip")
    assert skip.fires == ()  # the latest tick is 40 s late, beyond the grace
    assert skip.missed == 60
    once = plan(timing, stored_next, now, "once")
    assert once.fires == (T0 + timedelta(hours=1),)
    assert once.missed == 59
    every = plan(timing, stored_next, now, "all")
    assert every.fires == tuple(T0 + k * MINUTE for k in range(1, 61))
    assert every.missed == 0
    for planned in (skip, once, every):
        assert planned.next_fire_at == T0 + timedelta(hours=1, minutes=1)


def test_skip_still_fires_a_slightly_late_latest_tick() -> None:
    timing = cron("* * * * *")
    now = T0 + 5 * MINUTE + MISFIRE_GRACE - SECOND
    planned = plan(timing, T0 + MINUTE, now, "skip")
    assert planned.fires == (T0 + 5 * MINUTE,)
    assert planned.missed == 4


def test_all_is_capped_at_the_most_recent_ticks() -> None:
    timing = IntervalTiming(SECOND, T0)
    now = T0 + timedelta(seconds=1000, microseconds=5)
    planned = plan(timing, T0, now, "all")
    assert len(planned.fires) == MAX_CATCH_UP
    assert planned.fires[-1] == T0 + timedelta(seconds=1000)
    assert planned.fires[0] == T0 + timedelta(seconds=1000 - MAX_CATCH_UP + 1)
    assert planned.missed == 1001 - MAX_CATCH_UP
    assert planned.next_fire_at == T0 + timedelta(seconds=1001)


def test_a_week_of_per_second_ticks_is_planned_without_walking_them() -> None:
    # the latest due tick comes from at_or_before(now), not from stepping through 600k ticks
    timing = cron("* * * * * *")
    now = T0 + timedelta(days=7, microseconds=3)
    planned = plan(timing, T0, now, "once")
    assert planned.fires == (T0 + timedelta(days=7),)


def test_node_copies_expire_after_a_period_but_at_least_a_minute() -> None:
    assert node_copy_ttl(IntervalTiming(SECOND, T0), T0) == MINUTE
    assert node_copy_ttl(cron("0 * * * *"), T0) == timedelta(hours=1)


def test_schedules_are_declared_with_the_job() -> None:
    app = App("t")

    @app.job(schedule="*/5 * * * *", timezone="Europe/Oslo", misfire="skip")
    async def report(region: str = "eu") -> None: ...

    @app.job(every=timedelta(minutes=10), initial_delay=timedelta(seconds=30),
             schedule_args={"n": 3}, all_nodes=True)  # fmt: skip
    async def refresh(n: int) -> None: ...

    async def extra(region: str) -> None: ...

    app.job(name="extra")(extra)
    app.schedule("extra", cron="0 3 * * *", args={"region": "us"}, name="extra-us")

    stored = app.schedules
    assert stored["report"].cron == "*/5 * * * *" and stored["report"].timezone == "Europe/Oslo"
    assert stored["report"].misfire == "skip" and stored["report"].args_json == '{"region":"eu"}'
    assert stored["refresh"].every == timedelta(minutes=10) and stored["refresh"].all_nodes
    assert stored["refresh"].initial_delay == timedelta(seconds=30)
    assert stored["refresh"].args_json == '{"n":3}' and stored["refresh"].misfire == "once"
    assert stored["extra-us"].job == "extra"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"schedule": "not cron"}, "not a cron expression"),
        ({"schedule": "* * * *"}, "not a cron expression"),
        ({"schedule": "* * * * *", "every": MINUTE}, "exactly one"),
        ({"every": timedelta(0)}, "positive"),
        ({"every": MINUTE, "timezone": "Europe/Oslo"}, "cron schedules only"),
        ({"schedule": "* * * * *", "initial_delay": MINUTE}, "interval schedules"),
        ({"schedule": "* * * * *", "timezone": "Mars/Olympus"}, "unknown time zone"),
        ({"schedule": "* * * * *", "misfire": "sometimes"}, "misfire must be"),
        ({"schedule": "* * * * *", "schedule_args": {"n": "x"}}, "bad schedule args"),
        ({"every": MINUTE}, "bad schedule args"),  # n is required
        ({"timezone": "UTC"}, "without `schedule` or `every`"),
    ],
)
def test_bad_schedules_are_refused_when_declared(options: dict[str, object], message: str) -> None:
    app = App("t")

    async def job(n: int) -> None: ...

    with pytest.raises(ConfigurationError, match=message):
        app.job(**options)(job)  # type: ignore[call-overload]
    assert app.schedules == {} and app.jobs == {}  # nothing half-registered


def test_two_schedules_may_not_share_a_name() -> None:
    app = App("t")

    @app.job(every=MINUTE)
    async def tick() -> None: ...

    with pytest.raises(ConfigurationError, match="already exists"):
        app.schedule(tick, cron="* * * * *")
    app.schedule(tick, cron="* * * * *", name="tick-cron")
    assert sorted(app.schedules) == ["tick", "tick-cron"]
