"""Schedules stored in the database: deploys, misfire policies, exactly-once firing, all_nodes.

Most tests drive ``Scheduler.tick(now=...)`` by hand with chosen moments (no waiting for the
wall clock), each on a fresh database. The fleet test at the end runs four real worker
processes on a per-second schedule.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from asyncjobs import App, RunStatus, Trigger
from asyncjobs.backends.base import Backend, ScheduleFire
from asyncjobs.backends.postgres import PostgresBackend
from asyncjobs.runs import RunRecord
from asyncjobs.scheduler import Scheduler
from asyncjobs.schedules import MAX_CATCH_UP, MisfirePolicy, ScheduleState
from tests.pgbouncer import Route

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
MINUTE = timedelta(minutes=1)
SECOND = timedelta(seconds=1)
WAIT = 30.0


async def deploy(app: App, backend: Backend, worker_id: str = "w1") -> Scheduler:
    """What a worker does on start: store definitions and schedules."""
    await backend.register_definitions(*app.definitions())
    scheduler = Scheduler(app, backend, worker_id, sorted(app.queues))
    await scheduler.register()
    return scheduler


async def schedule_named(backend: Backend, name: str) -> ScheduleState:
    _, states = await backend.get_schedules(None)
    (state,) = [s for s in states if s.name == name]
    return state


async def scheduled_runs(backend: Backend, job: str) -> list[RunRecord]:
    from asyncjobs.backends.base import RunFilter

    runs = await backend.get_runs(RunFilter(job=job, limit=1000))
    return sorted(runs, key=lambda r: (r.scheduled_at or r.created_at, r.id))


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.05)


def minute_app(misfire: MisfirePolicy = "once") -> App:
    app = App("t")

    @app.job(schedule="* * * * *", misfire=misfire)
    async def tick() -> None: ...

    return app


# ---------------------------------------------------------------------- deploys


async def test_first_pass_computes_the_first_tick(backend: Backend) -> None:
    scheduler = await deploy(minute_app(), backend)
    stored = await schedule_named(backend, "tick")
    assert stored.next_fire_at is None and stored.last_fire_at is None and stored.enabled
    assert (stored.cron, stored.misfire, stored.timezone) == ("* * * * *", "once", "UTC")

    await scheduler.tick(now=stored.anchor_at)
    stored = await schedule_named(backend, "tick")
    first = stored.anchor_at.replace(second=0, microsecond=0) + MINUTE
    assert stored.next_fire_at == first
    assert await scheduled_runs(backend, "tick") == []  # not due yet

    await scheduler.tick(now=first + SECOND / 2)
    (run,) = await scheduled_runs(backend, "tick")
    assert (run.trigger, run.schedule, run.scheduled_at) == (Trigger.SCHEDULE, "tick", first)
    assert run.status is RunStatus.PENDING and run.target_worker is None
    stored = await schedule_named(backend, "tick")
    assert (stored.last_fire_at, stored.next_fire_at) == (first, first + MINUTE)


async def test_an_interval_fires_at_once_then_on_a_fixed_grid(backend: Backend) -> None:
    app = App("t")

    @app.job(every=timedelta(seconds=10), schedule_args={"n": 7})
    async def poll(n: int) -> None: ...

    scheduler = await deploy(app, backend)
    anchor = (await schedule_named(backend, "poll")).anchor_at
    await scheduler.tick(now=anchor + SECOND)  # the first tick is the anchor itself
    await scheduler.tick(now=anchor + 13 * SECOND)  # three seconds late
    await scheduler.tick(now=anchor + 20 * SECOND)
    runs = await scheduled_runs(backend, "poll")
    assert [r.scheduled_at for r in runs] == [anchor + k * 10 * SECOND for k in range(3)]
    assert all(r.args == {"n": 7} for r in runs)


async def test_a_redeploy_keeps_state_unless_the_timing_changed(backend: Backend) -> None:
    scheduler = await deploy(minute_app(), backend)
    anchor = (await schedule_named(backend, "tick")).anchor_at
    await scheduler.tick(now=anchor)
    await backend.set_enabled("schedule", "tick", False)
    kept = await schedule_named(backend, "tick")

    await deploy(minute_app(misfire="all"), backend)  # same timing, other policy
    again = await schedule_named(backend, "tick")
    assert (again.anchor_at, again.next_fire_at) == (kept.anchor_at, kept.next_fire_at)
    assert again.misfire == "all" and not again.enabled  # the run-time switch survives

    changed = App("t")

    @changed.job(schedule="*/5 * * * *", timezone="Europe/Oslo")
    async def tick() -> None: ...

    await deploy(changed, backend)
    retimed = await schedule_named(backend, "tick")
    assert retimed.next_fire_at is None and retimed.anchor_at > kept.anchor_at
    assert (retimed.cron, retimed.timezone, retimed.enabled) == (
        "*/5 * * * *",
        "Europe/Oslo",
        False,
    )

    await deploy(App("t"), backend)  # the job is gone from this app: nothing to delete
    assert (await backend.get_schedules(None))[1] != []
    plain = App("t")

    async def unscheduled() -> None: ...

    plain.job(name="tick")(unscheduled)
    await deploy(plain, backend)  # the job no longer declares a schedule
    assert (await backend.get_schedules(None))[1] == []


async def test_a_renamed_job_keeps_its_schedule(backend: Backend) -> None:
    scheduler = await deploy(minute_app(), backend)
    anchor = (await schedule_named(backend, "tick")).anchor_at
    await scheduler.tick(now=anchor)
    before = await schedule_named(backend, "tick")

    renamed = App("t")

    @renamed.job(name="heartbeat", aliases=["tick"], schedule="* * * * *")
    async def heartbeat() -> None: ...

    scheduler = await deploy(renamed, backend)
    _, states = await backend.get_schedules(None)
    (after,) = states
    assert (after.name, after.job) == ("heartbeat", "heartbeat")
    assert (after.anchor_at, after.next_fire_at) == (before.anchor_at, before.next_fire_at)
    assert before.next_fire_at is not None
    await scheduler.tick(now=before.next_fire_at)
    (run,) = await scheduled_runs(backend, "heartbeat")
    assert (run.schedule, run.scheduled_at) == ("heartbeat", before.next_fire_at)


# ---------------------------------------------------------------------- misfires


async def downtime(
    backend: Backend, misfire: MisfirePolicy, hours: float
) -> tuple[datetime, list[RunRecord]]:
    """Fire once on time, then come back after ``hours`` of no scheduler at all."""
    scheduler = await deploy(minute_app(misfire), backend)
    anchor = (await schedule_named(backend, "tick")).anchor_at
    await scheduler.tick(now=anchor)
    first = (await schedule_named(backend, "tick")).next_fire_at
    assert first is not None
    await scheduler.tick(now=first)  # on time
    back = first + timedelta(hours=hours, seconds=40)
    await scheduler.tick(now=back)
    stored = await schedule_named(backend, "tick")
    assert stored.next_fire_at == back.replace(second=0, microsecond=0) + MINUTE
    return first, await scheduled_runs(backend, "tick")


async def test_misfire_skip_fires_only_future_ticks(backend: Backend) -> None:
    first, runs = await downtime(backend, "skip", hours=1)
    assert [r.scheduled_at for r in runs] == [first]  # the 60 missed ticks are dropped


async def test_misfire_once_fires_one_catch_up_run(backend: Backend) -> None:
    first, runs = await downtime(backend, "once", hours=1)
    assert [r.scheduled_at for r in runs] == [first, first + timedelta(hours=1)]


async def test_misfire_all_fires_every_missed_tick(backend: Backend) -> None:
    first, runs = await downtime(backend, "all", hours=1)
    assert [r.scheduled_at for r in runs] == [first + k * MINUTE for k in range(61)]


async def test_misfire_all_is_capped(backend: Backend) -> None:
    first, runs = await downtime(backend, "all", hours=3)
    assert len(runs) == 1 + MAX_CATCH_UP
    latest = first + timedelta(hours=3)
    assert runs[-1].scheduled_at == latest
    assert runs[1].scheduled_at == latest - (MAX_CATCH_UP - 1) * MINUTE


async def test_a_disabled_job_misses_ticks_and_catches_up_when_enabled(backend: Backend) -> None:
    scheduler = await deploy(minute_app("once"), backend)
    anchor = (await schedule_named(backend, "tick")).anchor_at
    await scheduler.tick(now=anchor)
    first = (await schedule_named(backend, "tick")).next_fire_at
    assert first is not None
    await backend.set_enabled("job", "tick", False)
    await scheduler.tick(now=first + 5 * MINUTE)
    assert await scheduled_runs(backend, "tick") == []
    assert (await schedule_named(backend, "tick")).paused
    await backend.set_enabled("job", "tick", True)
    await scheduler.tick(now=first + 5 * MINUTE + SECOND)
    (run,) = await scheduled_runs(backend, "tick")
    assert run.scheduled_at == first + 5 * MINUTE


async def test_a_disabled_schedule_restarts_without_catching_up(backend: Backend) -> None:
    scheduler = await deploy(minute_app("all"), backend)
    await scheduler.tick(now=(await schedule_named(backend, "tick")).anchor_at)
    await rewind(backend, "tick", timedelta(hours=2))  # it has not fired for two hours
    await backend.set_enabled("schedule", "tick", False)
    await scheduler.tick()
    assert await scheduled_runs(backend, "tick") == []
    assert await backend.set_enabled("schedule", "tick", True)
    assert not await backend.set_enabled("schedule", "nope", True)
    restarted = await schedule_named(backend, "tick")
    assert restarted.next_fire_at is None
    await scheduler.tick(now=restarted.anchor_at)
    # the 120 ticks missed while disabled stay missed (misfire="all" would fire 100 of them
    # if enabling did not restart the timing)
    assert await scheduled_runs(backend, "tick") == []
    stored = await schedule_named(backend, "tick")
    assert stored.next_fire_at == restarted.anchor_at.replace(second=0, microsecond=0) + MINUTE


async def rewind(backend: Backend, name: str, by: timedelta) -> None:
    """Move a stored schedule's timing back, as if it was stored (and fired) ``by`` earlier."""
    assert isinstance(backend, PostgresBackend)
    await backend.pool.execute(
        "UPDATE asyncjobs.schedules SET anchor_at = anchor_at - $2::interval,"
        " next_fire_at = next_fire_at - $2::interval WHERE name = $1",
        name,
        by,
    )


# ---------------------------------------------------------------------- exactly once


async def test_racing_schedulers_fire_each_tick_once(backend: Backend) -> None:
    app = minute_app("all")
    schedulers = [await deploy(app, backend, f"w{n}") for n in range(4)]
    anchor = (await schedule_named(backend, "tick")).anchor_at
    await schedulers[0].tick(now=anchor)
    first = (await schedule_named(backend, "tick")).next_fire_at
    assert first is not None
    for minute in range(5):
        now = first + minute * MINUTE + SECOND / 10
        await asyncio.gather(*(s.tick(now=now) for s in schedulers))
    runs = await scheduled_runs(backend, "tick")
    assert [r.scheduled_at for r in runs] == [first + k * MINUTE for k in range(5)]
    assert sum(s.stats.fired for s in schedulers) == 5


async def test_the_database_refuses_a_tick_fired_twice(backend: Backend) -> None:
    """Even without the compare-and-set, the unique (schedule, tick, worker) key holds."""
    await deploy(minute_app(), backend)
    tick = datetime.fromisoformat("2030-01-01T00:00:00+00:00")
    fire = ScheduleFire(
        schedule="tick", job="tick", queue="default", args_json="{}", priority=0,
        max_attempts=1, fires=(tick, tick + MINUTE), next_fire_at=tick + 2 * MINUTE,
        expected=None,
    )  # fmt: skip
    first = await backend.fire_schedule(fire)
    again = await backend.fire_schedule(fire)
    assert len(first.run_ids) == 2 and again.run_ids == ()
    node = await backend.fire_schedule(dataclasses.replace(fire, target_worker="w9"))
    assert len(node.run_ids) == 2  # another worker's copies are other keys


async def test_the_unique_index_itself_rejects_a_duplicate_tick(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        insert = (
            "INSERT INTO asyncjobs.runs (job, queue, args, root_run_id, schedule, scheduled_at)"
            " VALUES ('tick', 'default', '{}', 1, 'tick', '2030-01-01T00:00:00Z')"
        )
        await conn.execute(insert)
        with pytest.raises(asyncpg.UniqueViolationError, match="runs_schedule_fire_idx"):
            await conn.execute(insert)
    finally:
        await conn.close()


# ---------------------------------------------------------------------- all_nodes


async def test_all_nodes_fires_one_copy_per_worker_per_tick(backend: Backend) -> None:
    app = App("t")
    executed_by: dict[int, str] = {}

    @app.job(every=SECOND, all_nodes=True, misfire="all")
    async def refresh() -> None: ...

    workers = [
        app.worker(backend, worker_id=f"node-{n}", poll_interval=0.05, heartbeat_interval=0.5)
        for n in range(3)
    ]
    async with workers[0], workers[1], workers[2]:

        async def enough() -> bool:
            runs = await scheduled_runs(backend, "refresh")
            by_tick: dict[datetime | None, int] = {}
            for run in runs:
                by_tick[run.scheduled_at] = by_tick.get(run.scheduled_at, 0) + 1
            return sum(count == 3 for count in by_tick.values()) >= 3

        await eventually(enough)
    runs = await scheduled_runs(backend, "refresh")
    for run in runs:
        running = [e for e in await backend.get_events(run.id, 0, 100) if e.kind == "running"]
        if running:
            executed_by[run.id] = running[0].data["worker"]
    ticks: dict[datetime, list[RunRecord]] = {}
    for run in runs:
        assert run.scheduled_at is not None
        ticks.setdefault(run.scheduled_at, []).append(run)
    # each worker starts with the first tick after it first sees the schedule, so the first
    # tick may have fewer copies; from the first full tick on, every tick has three
    full = [t for t, copies in ticks.items() if len(copies) == 3]
    for tick, copies in ticks.items():
        assert len(copies) <= 3
        assert len({c.target_worker for c in copies}) == len(copies)
        if min(full) <= tick <= max(full):
            assert len(copies) == 3, tick
    assert {r.target_worker for r in runs} == {"node-0", "node-1", "node-2"}
    for run in runs:
        if run.id in executed_by:  # claimed only by the worker it was fired for
            assert executed_by[run.id] == run.target_worker
        assert run.not_after is not None and run.scheduled_at is not None
        assert run.not_after - run.scheduled_at == MINUTE  # expires if its worker is gone


# ---------------------------------------------------------------------- four processes


def _start_worker(dsn: str, route: Route, worker_id: str, log: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "asyncjobs", "worker", "tests.sched_apps:app", *route.cli_args(dsn),
        "--worker-id", worker_id, "--concurrency", "4", "--poll-interval", "0.2",
        "--drain-timeout", "5",
    ]  # fmt: skip
    with log.open("wb") as out:
        return subprocess.Popen(command, cwd=ROOT, env=dict(os.environ), stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip


async def _fleet_until(dsn: str, workers: list[subprocess.Popen[bytes]], ticks: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            dead = [w.args for w in workers if w.poll() is not None]
            assert not dead, f"a worker died: {dead}"
            # count cluster-wide ticks fired while all four workers were registered
            fired = await conn.fetchval(
                "SELECT count(*) FROM asyncjobs.runs WHERE schedule = 'every_second'"
                "   AND scheduled_at > (SELECT max(started_at) FROM asyncjobs.workers)"
                "   AND (SELECT count(*) FROM asyncjobs.workers) = 4"
            )
            if fired >= ticks:
                return
            await asyncio.sleep(0.2)
    finally:
        await conn.close()
    raise AssertionError("the fleet did not fire enough ticks in time")


@pytest.mark.slow
async def test_four_worker_processes_fire_each_tick_exactly_once(
    dsn: str, route: Route, tmp_path: Path
) -> None:
    """Directly and through PgBouncer in transaction mode (``tests.pgbouncer``)."""
    ids = [f"proc-{n}" for n in range(4)]
    workers = [_start_worker(dsn, route, w, tmp_path / f"{w}.log") for w in ids]
    try:
        await _fleet_until(dsn, workers, ticks=12)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        codes = [worker.wait(timeout=30) for worker in workers]
    logs = "\n".join(p.read_text() for p in sorted(tmp_path.iterdir()))  # noqa: ASYNC240
    assert codes == [0, 0, 0, 0], logs

    conn = await asyncpg.connect(dsn)
    try:
        cluster = await conn.fetch(
            "SELECT scheduled_at, count(*) AS n, min(trigger::text) AS trigger"
            "  FROM asyncjobs.runs WHERE schedule = 'every_second'"
            " GROUP BY scheduled_at ORDER BY scheduled_at"
        )
        copies = await conn.fetch(
            "SELECT r.scheduled_at, r.target_worker, e.data ->> 'worker' AS ran_on"
            "  FROM asyncjobs.runs r LEFT JOIN asyncjobs.run_events e"
            "    ON e.run_id = r.id AND e.kind = 'running'"
            " WHERE r.schedule = 'on_each_node' ORDER BY r.scheduled_at"
        )
    finally:
        await conn.close()

    # cluster-wide: one run per tick, and the ticks are consecutive seconds (none missed)
    assert len(cluster) >= 12
    assert {row["n"] for row in cluster} == {1}
    assert {row["trigger"] for row in cluster} == {"schedule"}
    times = [row["scheduled_at"] for row in cluster]
    assert all(b - a == SECOND for a, b in itertools.pairwise(times)), times

    # all_nodes: one copy per worker per tick, run by that worker
    by_tick: dict[datetime, list[str]] = {}
    for row in copies:
        by_tick.setdefault(row["scheduled_at"], []).append(row["target_worker"])
        assert row["ran_on"] in (None, row["target_worker"])
    full = [t for t, targets in by_tick.items() if sorted(targets) == ids]
    assert len(full) >= 8
    for tick, targets in by_tick.items():
        assert len(targets) == len(set(targets)) <= 4
        if min(full) <= tick <= max(full):
            assert sorted(targets) == ids, tick
