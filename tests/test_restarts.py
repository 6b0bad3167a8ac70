"""A crash is a restart, not a retry: a run whose lease expired goes back to pending without
spending the job's retries, up to ``max_restarts``; ``attempt`` keeps counting claims.

(The kill -9 suite, tests/test_kill9.py, shows it with real processes and default options;
tests/test_rescue.py times single rescues; tests/test_shutdown.py covers hand-backs.)
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from asyncjobs import App, ConfigurationError, Context, RunFailed, sql
from asyncjobs.backends.base import NewRun
from asyncjobs.backends.postgres import PostgresBackend, apply_migrations
from asyncjobs.jobs import DEFAULT_MAX_RESTARTS
from asyncjobs.runs import RunStatus, Trigger
from tests.faults import eventually

pytestmark = pytest.mark.anyio

app = App("restarts")


@app.job(retries=1, backoff_base=0.01, backoff_cap=0.01)
async def always_fails(ctx: Context) -> None:
    raise ValueError(f"attempt {ctx.attempt}, retries {ctx.run.retries}")


@app.job(max_restarts=3, every=timedelta(milliseconds=200))
async def ticking() -> None:
    return None


async def _crash(conn: asyncpg.Connection, run_id: int) -> None:
    """The worker holding the run vanished: its lease is over."""
    await conn.execute(
        "UPDATE asyncjobs.runs SET lease_expires_at = now() - interval '1 s' WHERE id = $1",
        run_id,
    )


@pytest.mark.parametrize("bad", [-1, True, 2.0, "3", 2**31])
def test_max_restarts_is_checked_at_declaration(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="max_restarts"):

        @App("x").job(max_restarts=bad)
        async def job() -> None:
            return None


def test_default_max_restarts() -> None:
    assert DEFAULT_MAX_RESTARTS == 10
    assert always_fails.max_restarts == 10 and ticking.max_restarts == 3


async def test_restarts_up_to_max_restarts_then_lease_expired(
    dsn: str, backend: PostgresBackend
) -> None:
    (run,) = await backend.enqueue([NewRun("j", "default", "{}", max_restarts=2)])
    conn = await asyncpg.connect(dsn)
    try:
        for attempt in (1, 2, 3):
            (claimed,) = await backend.claim("w", ["default"], ["j"], 1, 30)
            assert (claimed.attempt, claimed.restarts) == (attempt, attempt - 1)
            await _crash(conn, run.run_id)
            result = await backend.sweep(0.1)
            record = await backend.get_run(run.run_id)
            assert record is not None and record.trigger is Trigger.RESTART
            # the job's retries are untouched; max_attempts is what the job declared
            assert (record.retries, record.max_attempts) == (0, 1)
            if attempt < 3:
                assert (result.restarted, result.failed) == (1, 0)
                assert (record.status, record.restarts) == (RunStatus.PENDING, attempt)
        assert (result.restarted, result.failed) == (0, 1)
        assert record is not None  # the loop's last record (mypy forgets the narrowing)
        assert (record.status, record.restarts) == (RunStatus.FAILED, 2)
        assert record.error is not None and record.error["type"] == "LeaseExpired"
        assert "restarted 2 times (max_restarts 2)" in record.error["message"]
        assert [e["type"] for e in record.errors] == ["LeaseExpired"] * 3
    finally:
        await conn.close()


async def test_retries_are_counted_apart_from_restarts(dsn: str) -> None:
    """A run restarted three times still gets its one retry: attempts 4 and 5 fail."""
    async with app.client(dsn) as client:
        run = await client.trigger_async(always_fails)
        conn = await asyncpg.connect(dsn)
        try:  # three crashes already happened to it
            await conn.execute(
                "UPDATE asyncjobs.runs SET attempt = 3, restarts = 3, trigger = 'restart'"
                " WHERE id = $1",
                run.id,
            )
        finally:
            await conn.close()
        async with app.worker(dsn, poll_interval=0.05, retention=None):
            with pytest.raises(RunFailed, match="attempt 5, retries 1"):
                await run.result(timeout=20)
        record = await run.get()
    assert (record.attempt, record.retries, record.restarts) == (5, 1, 3)
    assert [e["message"] for e in record.errors] == [
        "attempt 4, retries 0",
        "attempt 5, retries 1",
    ]


async def test_triggered_and_scheduled_runs_store_max_restarts(dsn: str) -> None:
    async with app.client(dsn) as client:
        triggered = await (await client.trigger_async(always_fails)).get()
        assert (triggered.max_restarts, triggered.restarts) == (10, 0)
        async with app.worker(dsn, queues=["default"], poll_interval=0.05, retention=None):

            async def fired() -> bool:
                page = await client.get_runs(job="ticking")
                return bool(page.runs)

            await eventually(fired, what="a scheduled run")
        (scheduled, *_) = (await client.get_runs(job="ticking")).runs
    assert scheduled.trigger is Trigger.SCHEDULE and scheduled.max_restarts == 3


async def test_a_worker_restarts_a_crashed_run_without_spending_retries(dsn: str) -> None:
    """End to end: the run of a job without retries is rescued by a live worker's sweep,
    claimed again and succeeds (attempt 2, restarts 1, retries 0)."""
    plain = App("plain")
    gate = asyncio.Event()

    @plain.job
    async def once(ctx: Context) -> int:
        if ctx.attempt == 1:
            gate.set()
            await asyncio.sleep(60)
        return ctx.attempt

    async with plain.client(dsn) as client:
        run = await client.trigger_async(once)
        conn = await asyncpg.connect(dsn)
        try:
            first = plain.worker(
                dsn, worker_id="first", heartbeat_interval=5, lease=10, retention=None
            )
            async with first:
                await asyncio.wait_for(gate.wait(), 20)
                # as if its worker had been killed: nothing it writes about the run counts
                # any more (its hand-back on stop is fenced off), no heartbeat extends it
                await conn.execute(
                    "UPDATE asyncjobs.runs SET worker_id = 'vanished' WHERE id = $1", run.id
                )
                first.stop(abort=True)
            await _crash(conn, run.id)
            async with plain.worker(
                dsn, sweep_interval=0.2, poll_interval=0.05, retention=None
            ):
                assert await run.result(timeout=20) == 2
        finally:
            await conn.close()
        record = await run.get()
    assert (record.attempt, record.retries, record.restarts) == (2, 0, 1)
    assert [e["type"] for e in record.errors] == ["LeaseExpired"]


async def test_migration_4_carries_counts_of_active_runs_over(empty_dsn: str) -> None:
    """Runs pending when 0004 is applied keep what their errors say happened to them."""
    conn = await asyncpg.connect(empty_dsn)
    try:
        await apply_migrations(conn, sql.MIGRATIONS[:3])
        await conn.execute(
            "INSERT INTO asyncjobs.runs (job, queue, args, root_run_id, status, attempt,"
            " max_attempts, errors) VALUES ('j', 'q', '{}', 1, 'pending', 3, 3, $1)",
            '[{"type": "LeaseExpired"}, {"type": "ValueError"}]',
        )
        await apply_migrations(conn, sql.MIGRATIONS)
        row = await conn.fetchrow("SELECT retries, restarts, max_restarts FROM asyncjobs.runs")
    finally:
        await conn.close()
    assert row is not None
    assert tuple(row) == (1, 1, 10)

