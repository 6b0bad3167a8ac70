"""Database faults: a restarted server, a killed LISTEN connection, an outage of a few seconds.

The worker and the client run in this process against a private server; they must come through
each fault on their own: the pool replaces its dead connections, the listener reconnects and
resubscribes, every loop (claim, heartbeat, sweep, completion and event batchers, result
waiters) retries at its own pace, and each reports the outage once, not on every try.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

import anyio
import asyncpg
import pytest

from asyncjobs import App, RunStatus, Worker
from asyncjobs.backends.base import NewRun
from asyncjobs.backends.listener import APPLICATION_NAME
from asyncjobs.backends.postgres import PostgresBackend
from asyncjobs.client import Client
from asyncjobs.embedded import EmbeddedPostgres
from tests.faults import FlakyProxy, db_now, eventually, new_database

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

app = App("dbfaults")


@app.job(retries=2)
async def step(n: int, ms: int) -> int:
    await asyncio.sleep(ms / 1000)
    return n


def _worker(dsn: str, poll_interval: float = 0.2) -> Worker:
    return Worker(
        app,
        dsn,
        concurrency=4,
        lease=2.0,
        heartbeat_interval=0.3,
        sweep_interval=0.3,
        poll_interval=poll_interval,
    )


async def _statuses(conn: asyncpg.Connection) -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT status::text AS s, count(*) AS n FROM asyncjobs.runs GROUP BY 1"
    )
    return {row["s"]: row["n"] for row in rows}


async def test_backlog_drains_across_server_restarts(server: EmbeddedPostgres) -> None:
    dsn = await new_database(server)
    conn = await asyncpg.connect(dsn)
    worker = _worker(dsn)
    try:
        async with worker, app.client(dsn) as client:
            long_run = await client.trigger_async(step, n=-1, ms=1500)
            backlog = await client.trigger_many(step, [{"n": n, "ms": 20} for n in range(120)])
            total = len(backlog) + 1
            waiting = asyncio.ensure_future(long_run.result(timeout=60))

            async def some_done() -> bool:
                return (await _statuses(conn)).get("succeeded", 0) >= 10

            await eventually(some_done)
            assert (await long_run.get()).status is RunStatus.RUNNING
            await conn.close()
            restarted_at = await _restart(server, immediate=False)
            conn = await asyncpg.connect(dsn)

            async def half_done() -> bool:
                return (await _statuses(conn)).get("succeeded", 0) >= total // 2

            await eventually(half_done)
            await conn.close()
            await _restart(server, immediate=True)  # a crash: recovery on start
            conn = await asyncpg.connect(dsn)

            # the waiter that was pending across both restarts gets its result
            assert await waiting == -1

            async def all_done() -> bool:
                return (await _statuses(conn)) == {"succeeded": total}

            await eventually(all_done, what=f"{total} runs succeeded")
            # every loop of the worker is alive: it heartbeats and sweeps after the restarts
            heartbeat_at = await conn.fetchval(
                "SELECT heartbeat_at FROM asyncjobs.workers WHERE id = $1", worker.id
            )
            assert heartbeat_at > restarted_at
            assert worker._main is not None and not worker._main.done()
            await _sweeper_still_rescues(dsn, worker)
    finally:
        await conn.close()


async def _restart(server: EmbeddedPostgres, *, immediate: bool) -> object:
    await server.arestart(immediate=immediate)
    conn = await asyncpg.connect(server.dsn)
    try:
        return await db_now(conn)
    finally:
        await conn.close()


async def _sweeper_still_rescues(dsn: str, worker: Worker) -> None:
    """A run left by a dead worker is rescued by this worker's sweeper, after the grace that
    follows a restart (the job is one this worker does not know, so it stays pending)."""
    ghost = PostgresBackend(dsn)
    await ghost.open()
    try:
        (orphan,) = await ghost.enqueue([NewRun("elsewhere", "default", "{}", max_attempts=2)])
        assert await ghost.claim("ghost", ["default"], ["elsewhere"], 1, 0.1)
        rescued_before = worker.stats.rescued_by_sweep

        async def rescued() -> bool:
            return worker.stats.rescued_by_sweep > rescued_before

        await eventually(rescued)
        record = await ghost.get_run(orphan.run_id)
        assert record is not None and record.status is RunStatus.PENDING
    finally:
        await ghost.close()


async def _listener_pids(conn: asyncpg.Connection) -> set[int]:
    rows = await conn.fetch(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1"
        " AND query LIKE 'LISTEN%' AND state = 'idle'",
        APPLICATION_NAME,
    )
    return {row["pid"] for row in rows}


async def test_wakeups_resume_after_the_listen_connection_is_killed(
    server: EmbeddedPostgres,
) -> None:
    """Polls every 30 s: a result within 5 s can only come through NOTIFY."""
    dsn = await new_database(server)
    conn = await asyncpg.connect(dsn)
    client = Client(app, PostgresBackend(dsn), poll_interval=30.0)
    try:
        async with _worker(dsn, poll_interval=30.0), client:
            first: set[int] = set()

            async def both_listening() -> bool:
                nonlocal first
                first = await _listener_pids(conn)
                return len(first) == 2  # the worker's and the client's

            # the client starts listening with its first wait (its first connect catches up)
            with anyio.fail_after(5):
                assert await client.run_async(step, n=1, ms=1) == 1
            await eventually(both_listening)

            killed = await conn.fetchval(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE pid = ANY ($1::int[])) AS t",
                list(first),
            )
            assert killed == 2
            # triggered at once: whatever was missed is caught up after the reconnect
            with anyio.fail_after(5):
                assert await client.run_async(step, n=2, ms=1) == 2

            async def resubscribed() -> bool:
                now = await _listener_pids(conn)
                return len(now) == 2 and not now & first

            await eventually(resubscribed)
            with anyio.fail_after(5):
                assert await client.run_async(step, n=3, ms=1) == 3
    finally:
        await conn.close()


def _outage_reports(records: list[logging.LogRecord]) -> Counter[tuple[str, str, str]]:
    """Warnings and errors per reporter: logger, message template and the component named as
    its first argument (the worker's loops and the batchers share templates)."""
    reports: Counter[tuple[str, str, str]] = Counter()
    for record in records:
        if record.levelno < logging.WARNING:
            continue
        args = record.args if isinstance(record.args, tuple) else ()
        who = str(args[0]) if args and str(record.msg).startswith("%s") else ""
        reports[(record.name, str(record.msg), who)] += 1
    return reports


async def test_an_outage_is_reported_once_and_retried_without_spinning(
    server: EmbeddedPostgres, caplog: pytest.LogCaptureFixture
) -> None:
    outage = 2.0
    dsn = await new_database(server)
    proxy = FlakyProxy(server.port)
    port = await proxy.start()
    flaky_dsn = dsn.replace(f":{server.port}/", f":{port}/")
    try:
        async with _worker(flaky_dsn, poll_interval=0.1), app.client(flaky_dsn) as client:
            run = await client.trigger_async(step, n=5, ms=800)

            async def running() -> bool:
                return (await run.get()).status is RunStatus.RUNNING

            await eventually(running)
            caplog.clear()
            caplog.set_level(logging.INFO)
            proxy.cut()
            await anyio.sleep(outage)  # the fault itself: the database is away this long
            proxy.restore()
            # the job ended during the outage; its completion is written once it is back
            with anyio.fail_after(10):
                assert await run.result() == 5
            with anyio.fail_after(5):
                assert await client.run_async(step, n=6, ms=1) == 6
            reports = _outage_reports(caplog.records)
            assert (await run.get()).attempt == 1  # the outage cost no attempt
    finally:
        await proxy.close()
    # one report per outage and reporter; the worker and the client each have a listener
    listeners = {"asyncjobs.backends.listener": 2}
    repeated = {key: n for key, n in reports.items() if n > listeners.get(key[0], 1)}
    assert not repeated, f"reported more than once per outage: {repeated}"
    assert any("unavailable" in msg for _, msg, _ in reports), reports
    # every loop retries at its own interval or with backoff: tens of tries, not thousands
    assert proxy.attempts < 50 * outage, f"{proxy.attempts} connection attempts in {outage} s"
