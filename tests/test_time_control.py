"""Time control on PostgreSQL: a ``TestClock`` given to the backend is the ``now`` of every
time-dependent statement, so an hour's delay, backoff, schedule tick or lease passes at once."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from asyncjobs import App, Context, InvalidArguments, RunStatus, Trigger, sql, testing
from asyncjobs.backends.base import WorkerInfo
from asyncjobs.testing import TestClock

pytestmark = pytest.mark.anyio

HOUR = timedelta(hours=1)
#: Generous for a loaded 2-core machine; the real waits would be an hour each.
BOUND = 30.0

#: Statements that read the time and deliberately stay on the database clock.
REAL_TIME = {
    # version stamps: a client compares them with what it read before, never with a clock
    "register_definitions": "updated_at is the definition's version stamp",
    "set_job_enabled": "updated_at is the definition's version stamp",
    "set_queue_enabled": "updated_at is the definition's version stamp",
    "rename_schedules": "updated_at only records when the row changed",
    # the feed holds back events of transactions that may still commit: real time
    "read_feed": "the grace period is about open transactions, not the jobs' time",
    "read_tree_feed": "the grace period is about open transactions, not the jobs' time",
    "feed_position": "the grace period is about open transactions, not the jobs' time",
}


async def _until(check: Callable[[], Awaitable[Any]], what: str) -> Any:
    """Poll ``check`` until it returns something truthy (a condition, not a fixed sleep)."""
    deadline = time.monotonic() + BOUND
    while not (result := await check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
    return result


def test_every_statement_reading_the_time_takes_now() -> None:
    for query in sql.QUERIES.values():
        code = "\n".join(
            line for line in query.text.splitlines() if not line.lstrip().startswith("--")
        )
        bare = re.sub(r"\$\d+::timestamptz, (now|clock_timestamp)\(\)\)", "", code)
        reads_time = re.search(r"\b(now|clock_timestamp)\(\)", bare) is not None
        if query.name in REAL_TIME:
            assert not query.takes_now, query.name
        else:
            assert not reads_time, f"{query.name} reads the database clock; use :now"


def test_every_statement_numbers_its_parameters_without_gaps() -> None:
    # a gap is a parameter PostgreSQL cannot type: :now numbered after a $n in a comment
    for query in sql.QUERIES.values():
        code = re.sub(r"--[^\n]*", "", query.text)
        numbers = sorted({int(n) for n in re.findall(r"\$(\d+)", code)})
        assert numbers == list(range(1, len(numbers) + 1)), (query.name, numbers)


def test_now_becomes_the_parameter_after_the_last() -> None:
    (query,) = sql.parse_queries(
        "-- name: q :one\nSELECT $1::text[], coalesce(:now, now()), x::now, :now"
        "\n-- not a parameter: $7"
    ).values()
    assert query.takes_now
    assert query.text == (
        "SELECT $1::text[], coalesce($2::timestamptz, now()), x::now, $2::timestamptz"
        "\n-- not a parameter: $7"
    )
    (plain,) = sql.parse_queries("-- name: p :one\nSELECT $1::timestamptz").values()
    assert not plain.takes_now and plain.text == "SELECT $1::timestamptz"


def test_the_clock_only_moves_forward() -> None:
    start = datetime(2030, 1, 1, tzinfo=UTC)
    clock = TestClock(start)
    moves: list[datetime] = []
    unsubscribe = clock.on_move(lambda: moves.append(clock.now()))
    assert clock.advance(HOUR) == start + HOUR
    assert clock.set(start + 2 * HOUR) == start + 2 * HOUR
    unsubscribe()
    clock.advance(HOUR)
    assert moves == [start + HOUR, start + 2 * HOUR]
    bad_moves: list[Callable[[], object]] = [
        lambda: clock.advance(-HOUR),
        lambda: clock.set(start),
        lambda: clock.set(datetime(2031, 1, 1)),
        lambda: clock.advance(5),  # type: ignore[arg-type]  # a number, not a timedelta
    ]
    for bad in bad_moves:
        with pytest.raises(InvalidArguments):
            bad()
    with pytest.raises(InvalidArguments):
        TestClock(datetime(2030, 1, 1))


async def test_a_one_hour_delay_passes_at_once(dsn: str) -> None:
    app = App("delays")

    @app.job()
    async def remind(who: str) -> str:
        return f"hello {who}"

    clock = TestClock()
    started = time.monotonic()
    async with testing.run_app(app, dsn, clock=clock) as client:
        later = await client.trigger_async(remind.options(not_before=HOUR), who="later")
        # a run triggered after it, due now, is claimed and finishes: the worker has looked
        assert await client.run_async(remind, who="now") == "hello now"
        record = await client.get_run(later.id)
        assert record.status is RunStatus.PENDING
        assert record.not_before == clock.now() + HOUR  # the offset is from the test clock
        clock.advance(HOUR)
        assert await asyncio.wait_for(later.result(), BOUND) == "hello later"
    assert time.monotonic() - started < BOUND


async def test_retry_backoff_follows_the_clock(dsn: str) -> None:
    app = App("backoff")
    failed_once = asyncio.Event()

    @app.job(retries=1, backoff_base=3600, backoff_cap=3600)
    async def flaky(ctx: Context) -> int:
        if ctx.attempt == 1:
            failed_once.set()
            raise ConnectionError("down for an hour")
        return ctx.attempt

    # a month ahead of the database: a backoff from the database's now() would be due
    clock = TestClock(datetime.now(UTC) + timedelta(days=30))
    async with testing.run_app(app, dsn, clock=clock) as client:
        run = await client.trigger_async(flaky)
        await asyncio.wait_for(failed_once.wait(), BOUND)

        async def retrying() -> Any:
            record = await client.get_run(run.id)
            return record if record.trigger is Trigger.RETRY else None

        record = await _until(retrying, "the retry")
        assert record.status is RunStatus.PENDING
        assert clock.now() <= record.not_before <= clock.now() + HOUR
        clock.advance(HOUR)
        assert await asyncio.wait_for(run.result(), BOUND) == 2


async def test_a_run_past_not_after_expires_on_the_clock(dsn: str) -> None:
    app = App("expiry")

    @app.job(queue="nobody-serves-this")
    async def late() -> None: ...

    clock = TestClock()
    async with app.client(dsn, clock=clock) as client:
        run = await client.trigger_async(late.options(not_after=HOUR))
        backend = client.backend
        assert (await backend.sweep(60)).expired == 0
        clock.advance(HOUR)
        assert (await backend.sweep(60)).expired == 1
        record = await client.get_run(run.id)
        assert (record.status, record.finished_at) == (RunStatus.EXPIRED, clock.now())


async def test_an_hourly_schedule_fires_as_the_clock_moves(dsn: str) -> None:
    app = App("hourly")

    @app.job()
    async def report() -> None: ...

    app.schedule(report, every=HOUR)
    clock = TestClock()
    start = clock.now()
    async with testing.run_app(app, dsn, clock=clock) as client:

        def fired(count: int) -> Callable[[], Awaitable[Any]]:
            async def check() -> Any:
                runs = (await client.get_runs(job="report")).runs
                done = [r for r in runs if r.status is RunStatus.SUCCEEDED]
                return sorted(r.scheduled_at for r in done) if len(done) >= count else None

            return check

        assert await _until(fired(1), "the first tick") == [start]
        clock.advance(HOUR)
        assert await _until(fired(2), "the second tick") == [start, start + HOUR]
        clock.advance(HOUR)
        assert await _until(fired(3), "the third tick") == [start, start + HOUR, start + 2 * HOUR]


async def test_a_lease_expires_when_the_clock_passes_it(dsn: str) -> None:
    app = App("leases")

    @app.job()
    async def work() -> None: ...

    # The sweep rescues nothing until the server has been up for the worker ttl (a restart
    # must not cost restarts): start the clock that far past the server's start, whenever
    # the server started.
    clock = TestClock(datetime.now(UTC) + 3 * HOUR)
    async with app.client(dsn, clock=clock) as client:
        backend = client.backend
        await backend.register_definitions(*app.definitions())
        run = await client.trigger_async(work)
        info = WorkerInfo("w1", "host", 1, ("default",), ("work",), 1)
        await backend.register_worker(info)
        (claimed,) = await backend.claim("w1", ["default"], ["work"], 1, HOUR.total_seconds())
        assert claimed.id == run.id
        assert claimed.started_at == clock.now()
        assert claimed.lease_expires_at == clock.now() + HOUR
        ttl = 2 * HOUR.total_seconds()
        assert (await backend.sweep(ttl)).restarted == 0
        clock.advance(HOUR + timedelta(seconds=1))
        assert (await backend.sweep(ttl)).restarted == 1
        record = await client.get_run(run.id)
        assert (record.status, record.trigger, record.restarts) == (
            RunStatus.PENDING, Trigger.RESTART, 1,
        )
        # the silent worker goes once the clock passes its ttl
        clock.advance(HOUR)
        assert (await backend.sweep(ttl)).workers_removed == 1
