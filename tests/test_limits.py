"""Cluster-wide limits, proven with real worker processes and the intervals the jobs recorded.

Four ``asyncjobs worker`` processes (each with its own pool and LISTEN connection) serve one
database, once directly and once through PgBouncer in transaction mode (``tests.pgbouncer``:
pools through the pooler, LISTEN direct). Every run records its start and end with the database
clock, inside the time it is ``running`` (see ``tests.proc_apps.record_interval``); the maximum
overlap of those intervals per job and per queue is then computed here. It must never exceed the
limit, and it must reach it (otherwise the limit was never exercised and the test proves
nothing).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import anyio
import asyncpg
import pytest

from tests.pgbouncer import Route
from tests.proc_apps import (
    INTERVALS_DDL,
    LIMITS,
    RECORD_DSN_ENV,
    capped,
    five_a,
    five_b,
    free,
    limits_app,
    pair,
)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
WORKERS = 4
CONCURRENCY = 4
#: runs per job; each sleeps 10–40 ms
RUNS = {capped: 120, five_a: 60, five_b: 60, pair: 50, free: 50}
DEADLINE = 90.0


@dataclass(frozen=True)
class Interval:
    run_id: int
    attempt: int
    job: str
    queue: str
    pid: int
    started_at: datetime
    ended_at: datetime


@dataclass(frozen=True)
class FleetResult:
    intervals: list[Interval]
    statuses: dict[str, int]
    runs: int
    worker_pids: set[int]
    exit_codes: list[int | None]
    logs: list[str]


def max_overlap(intervals: Iterable[Interval]) -> int:
    """Most intervals open at one instant; one ending exactly when another starts does not
    overlap it (ends sort before starts at equal times)."""
    edges = sorted(
        [(i.started_at, 1) for i in intervals] + [(i.ended_at, -1) for i in intervals],
        key=lambda edge: (edge[0], edge[1]),
    )
    open_now = peak = 0
    for _, step in edges:
        open_now += step
        peak = max(peak, open_now)
    return peak


def test_max_overlap_counts_touching_intervals_apart() -> None:
    t = [datetime.fromtimestamp(s) for s in range(5)]
    chain = [Interval(n, 1, "j", "q", 0, t[n], t[n + 1]) for n in range(3)]
    assert max_overlap(chain) == 1
    assert max_overlap([*chain, Interval(9, 1, "j", "q", 0, t[0], t[4])]) == 2


def _start_worker(dsn: str, route: Route, log: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "asyncjobs", "worker", "tests.proc_apps:limits_app",
        *route.cli_args(dsn), "--concurrency", str(CONCURRENCY),
        # completions of limited runs do not wake other workers, so a short poll keeps
        # the limits saturated (the claimer of a freed slot is the one that polls)
        "--poll-interval", "0.05", "--drain-timeout", "10",
    ]  # fmt: skip
    with log.open("wb") as out:
        return subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, RECORD_DSN_ENV: dsn},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def _drive(dsn: str, route: Route, workers: list[subprocess.Popen[bytes]]) -> int:
    """Trigger every run, then wait (bounded) until all of them are terminal."""
    sleeps = random.Random(7)
    # every worker up first, or a slow start on a loaded machine leaves one without work
    await _wait_registered(dsn, workers)
    async with limits_app.client(route.dsn(dsn), **route.options(dsn)) as client:
        for job, count in RUNS.items():
            # Runs last several claim round trips: through PgBouncer a claim waits for a server
            # connection and for the limit's lock, and with 10-40 ms runs the limits were
            # seldom full at once and one worker could go without a run (3 of 4 runs failed).
            arguments = [{"sleep_ms": sleeps.randint(40, 120)} for _ in range(count)]
            await client.trigger_many(job, arguments)
    total = sum(RUNS.values())
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            done = await conn.fetchval(
                "SELECT count(*) FROM asyncjobs.runs WHERE status NOT IN ('pending', 'running')"
            )
            if done == total:
                return total
            dead = [w.args for w in workers if w.poll() is not None]
            assert not dead, f"a worker died early: {dead}"
            await anyio.sleep(0.1)
    finally:
        await conn.close()
    raise AssertionError(f"runs not finished within {DEADLINE} s")


async def _wait_registered(dsn: str, workers: list[subprocess.Popen[bytes]]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + 60
        while await conn.fetchval("SELECT count(*) FROM asyncjobs.workers") < len(workers):
            assert time.monotonic() < deadline, "workers did not register within 60 s"
            assert all(w.poll() is None for w in workers), "a worker died at start"
            await anyio.sleep(0.05)
    finally:
        await conn.close()


def _stop(workers: list[subprocess.Popen[bytes]]) -> list[int | None]:
    """SIGTERM every worker; their exit codes (None: still running after 20 s, then killed)."""
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    codes: list[int | None] = []
    for worker in workers:
        try:
            codes.append(worker.wait(timeout=20))
        except subprocess.TimeoutExpired:
            codes.append(None)
            worker.kill()
            worker.wait()
    return codes


async def _execute(dsn: str, statement: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def fleet(
    module_dsn: str, route: Route, tmp_path_factory: pytest.TempPathFactory
) -> FleetResult:
    """Run every limit scenario at once on four worker processes (directly, or through
    PgBouncer: ``route``) and collect the record."""
    logs_dir = tmp_path_factory.mktemp("workers")
    anyio.run(_execute, module_dsn, "DROP TABLE IF EXISTS public.intervals")
    anyio.run(_execute, module_dsn, "TRUNCATE asyncjobs.runs, asyncjobs.run_events")
    anyio.run(_execute, module_dsn, INTERVALS_DDL)
    workers = [_start_worker(module_dsn, route, logs_dir / f"w{n}.log") for n in range(WORKERS)]
    try:
        total = anyio.run(_drive, module_dsn, route, workers)
    finally:
        exit_codes = _stop(workers)
    rows = anyio.run(_execute, module_dsn, "SELECT * FROM public.intervals")
    statuses = anyio.run(
        _execute, module_dsn, "SELECT status::text, count(*) FROM asyncjobs.runs GROUP BY 1"
    )
    return FleetResult(
        intervals=[Interval(**row) for row in rows],
        statuses={row["status"]: row["count"] for row in statuses},
        runs=total,
        worker_pids={w.pid for w in workers},
        exit_codes=exit_codes,
        logs=[path.read_text() for path in sorted(logs_dir.iterdir())],
    )


def _of(fleet: FleetResult, kind: str, name: str) -> list[Interval]:
    return [i for i in fleet.intervals if (i.job if kind == "job" else i.queue) == name]


def test_every_run_succeeded_once(fleet: FleetResult) -> None:
    assert fleet.statuses == {"succeeded": fleet.runs}
    recorded = [(i.run_id, i.attempt) for i in fleet.intervals]
    assert len(recorded) == len(set(recorded)) == fleet.runs
    assert {attempt for _, attempt in recorded} == {1}


def test_all_workers_took_part(fleet: FleetResult) -> None:
    assert {i.pid for i in fleet.intervals} == fleet.worker_pids


@pytest.mark.parametrize("name", sorted(LIMITS))
def test_limit_holds_and_is_reached(fleet: FleetResult, name: str) -> None:
    kind, limit = LIMITS[name]
    intervals = _of(fleet, kind, name)
    assert intervals
    # never above the limit; and at the limit, so the limit was really exercised
    assert max_overlap(intervals) == limit, f"{kind} {name}: limit {limit}"


def test_unlimited_job_beside_a_job_limit_uses_the_queue_room(fleet: FleetResult) -> None:
    # `free` shares queue `three` (limit 3) with `pair` (limit 2): it may take the whole queue
    # room, which shows the queue limit, not the job limit, is what bounds it
    assert max_overlap(_of(fleet, "job", "free")) == 3


def test_workers_stop_on_sigterm_with_exit_code_zero(fleet: FleetResult) -> None:
    assert fleet.exit_codes == [0] * WORKERS, fleet.logs
    for log in fleet.logs:
        assert "Traceback" not in log and " ERROR " not in log, log
        assert "fenced off" not in log and "lost the lease" not in log, log
