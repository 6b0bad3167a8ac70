"""Rescue of crashed runs: timing against the configured lease and sweep interval, exactly once
with many sweepers, limit slots freed, dead worker rows removed, no rescue after a restart.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import asyncpg
import pytest

from asyncjobs.backends.base import JobDefinition, NewRun, QueueDefinition, WorkerInfo
from asyncjobs.backends.postgres import PostgresBackend
from asyncjobs.embedded import EmbeddedPostgres
from asyncjobs.jobs import Job
from asyncjobs.worker import Worker
from tests.fault_apps import fragile_nap, nap, proc_app, stall
from tests.faults import db_now, eventually, new_database, start_worker

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

LEASE = 1.5
HEARTBEAT = 0.3
SWEEP = 0.3
#: a live sweeper is late by at most a query and a scheduling delay
MARGIN = 0.5


@pytest.mark.parametrize(
    ("job", "after"),
    [(stall, "pending"), (nap, "pending"), (fragile_nap, "failed")],
    ids=["retries", "no-retries", "no-restarts"],
)
async def test_crashed_run_is_rescued_within_lease_plus_sweep_interval(
    server: EmbeddedPostgres, tmp_path: Path, job: Job[..., str], after: str
) -> None:
    dsn = await new_database(server)
    conn = await asyncpg.connect(dsn)
    crashing = start_worker(
        "tests.fault_apps:proc_app", dsn, "crashing", tmp_path,
        "--lease", str(LEASE), "--heartbeat-interval", str(HEARTBEAT),
        "--sweep-interval", str(SWEEP),
    )  # fmt: skip
    # the only live worker: it sweeps, but serves a queue the run is not in, so it never
    # claims it again and the rescued run stays as the sweep left it
    sweeper = _worker(dsn, queues=["idle"])
    try:
        async with sweeper, proc_app.client(dsn) as client:
            arguments = {"first_ms": 60_000, "later_ms": 10} if job is stall else {"seconds": 60}
            # a crash is a restart: nap has no retries, yet it is restarted
            run = await client.trigger_async(job, **arguments)

            async def running() -> bool:
                return (await client.get_run(run.id)).worker_id == "crashing"

            await eventually(running, what="claimed by the crashing worker")
            killed_at = await crashing.kill9(conn)
            # no heartbeat can extend it any more: this is when the lease ends
            lease_end = (await client.get_run(run.id)).lease_expires_at
            assert lease_end is not None

            async def rescued() -> bool:
                return (await client.get_run(run.id)).status.value == after

            await eventually(rescued, timeout=LEASE + SWEEP + 10, what="rescue")
            rescue = (await client.get_events(run.id))[-1]
            assert rescue.kind == after and rescue.data["rescued"] is True
            record = await client.get_run(run.id)
            assert record.trigger.value == "restart" and record.attempt == 1
            assert [e["type"] for e in record.errors] == ["LeaseExpired"]
            assert "crashing" in record.errors[0]["message"]
            assert record.retries == 0
            assert record.restarts == (1 if after == "pending" else 0)
            if after == "failed":
                assert "max_restarts 0" in record.errors[0]["message"]

            # never before the lease ended; at most lease + sweep_interval after the crash
            assert rescue.at >= lease_end
            assert (lease_end - killed_at).total_seconds() <= LEASE
            delay = (rescue.at - killed_at).total_seconds()
            assert delay <= LEASE + SWEEP + MARGIN, f"rescued {delay:.2f} s after the crash"
            late = (rescue.at - lease_end).total_seconds()
            print(  # noqa: T201  (the figure the issue asks for; shown with -s)
                f"\nrescued {delay:.2f} s after the kill, {late:.2f} s after the lease ended"
                f" (lease {LEASE} + sweep_interval {SWEEP})"
            )

            async def row_removed() -> bool:
                gone = await conn.fetchval(
                    "SELECT count(*) = 0 FROM asyncjobs.workers WHERE id = 'crashing'"
                )
                return bool(gone)

            await eventually(row_removed, what="dead worker row removed")
            if job is stall:
                # the next claim is attempt 2, and its result stands
                async with _worker(dsn):
                    assert await run.result(timeout=10) == f"attempt 2 pid {os.getpid()}"
    finally:
        crashing.stop_now()
        await conn.close()


def _worker(dsn: str, queues: list[str] | None = None) -> Worker:
    return Worker(
        proc_app,
        dsn,
        queues=queues,
        lease=LEASE,
        heartbeat_interval=HEARTBEAT,
        sweep_interval=SWEEP,
    )


async def test_many_sweepers_rescue_each_run_exactly_once(dsn: str) -> None:
    runs = 300
    ghost = PostgresBackend(dsn)
    sweepers = [PostgresBackend(dsn) for _ in range(6)]
    for backend in (ghost, *sweepers):
        await backend.open()
    try:
        await ghost.register_worker(WorkerInfo("ghost", "h", 1, ("default",), ("j",), runs))
        await ghost.enqueue([NewRun("j", "default", "{}", max_attempts=2)] * runs)
        assert len(await ghost.claim("ghost", ["default"], ["j"], runs, 0.2)) == runs
        conn = await asyncpg.connect(dsn)
        try:

            async def all_expired() -> bool:
                left = await conn.fetchval(
                    "SELECT count(*) FROM asyncjobs.runs WHERE lease_expires_at >= now()"
                )
                return bool(left == 0)

            await eventually(all_expired)
            # six sweepers at once: whatever one has locked the others skip, and what one has
            # rescued the others see as no longer running
            rescued = 0
            while rescued < runs:
                results = await asyncio.gather(*(s.sweep(0.2) for s in sweepers))
                rescued += sum(r.restarted for r in results)
                assert sum(r.workers_removed for r in results) <= 1
            assert rescued == runs
            again = await asyncio.gather(*(s.sweep(0.2) for s in sweepers))
            assert sum(r.restarted + r.failed for r in again) == 0
            per_run = await conn.fetch(
                "SELECT run_id, count(*) AS n FROM asyncjobs.run_events"
                " WHERE kind = 'pending' AND (data ->> 'rescued')::boolean GROUP BY run_id"
            )
            assert len(per_run) == runs and {row["n"] for row in per_run} == {1}
            statuses = await conn.fetch(
                "SELECT status::text, trigger::text, count(*) FROM asyncjobs.runs GROUP BY 1, 2"
            )
            assert [tuple(row) for row in statuses] == [("pending", "restart", runs)]
            gone = await conn.fetchval("SELECT count(*) FROM asyncjobs.workers WHERE id = 'ghost'")
            assert gone == 0
        finally:
            await conn.close()
    finally:
        for backend in (ghost, *sweepers):
            await backend.close()


async def test_sweep_frees_the_limit_slots_of_a_dead_worker(backend: PostgresBackend) -> None:
    await backend.register_definitions(
        [QueueDefinition("default", None)], [JobDefinition("limited", "default", 2, {})]
    )
    await backend.enqueue([NewRun("limited", "default", "{}", max_attempts=3)] * 3)
    dead = await backend.claim("dead", ["default"], ["limited"], 10, 0.2)
    assert len(dead) == 2  # the limit
    assert await backend.claim("alive", ["default"], ["limited"], 10, 30) == []

    async def freed() -> bool:
        await backend.sweep(30)
        return len(await backend.claim("alive", ["default"], ["limited"], 10, 30)) == 2

    # each rescued slot is free again for the next claim, and never more than the limit
    await eventually(freed)
    assert await backend.claim("alive", ["default"], ["limited"], 10, 30) == []


async def test_no_rescue_for_a_lease_after_the_server_restarted(server: EmbeddedPostgres) -> None:
    """While the server was down no worker could heartbeat: leases that ran out meanwhile get
    one more lease to be renewed, so a database restart does not cost attempts."""
    dsn = await new_database(server)
    backend = PostgresBackend(dsn)
    await backend.open()
    try:
        (enqueued,) = await backend.enqueue([NewRun("j", "default", "{}", max_restarts=0)])
        assert len(await backend.claim("w", ["default"], ["j"], 1, 0.1)) == 1
        await server.arestart()
        conn = await asyncpg.connect(dsn)
        try:
            started = await conn.fetchval("SELECT pg_postmaster_start_time()")

            async def expired() -> bool:
                return bool(
                    await conn.fetchval(
                        "SELECT lease_expires_at < now() FROM asyncjobs.runs WHERE id = $1",
                        enqueued.run_id,
                    )
                )

            await eventually(expired)
            assert (await backend.sweep(30.0)).failed == 0  # within 30 s of the restart
            record = await backend.get_run(enqueued.run_id)
            assert record is not None and record.status.value == "running"
            assert ((await db_now(conn)) - started).total_seconds() < 30

            async def rescued() -> bool:
                # a sweeper with a short lease: its grace ends 0.2 s after the start
                return (await backend.sweep(0.2)).failed == 1

            await eventually(rescued)
        finally:
            await conn.close()
    finally:
        await backend.close()
