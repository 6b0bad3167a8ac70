"""Apps served by the worker processes of the fault tests (kill -9, SIGSTOP, SIGTERM).

The crash jobs record what really happened, with the database clock, into a plain test table
(``CRASH_DDL``, created by the test): the start of every attempt that got as far as its first
statement, and its end when it got there. The tests judge duplicates and limits from those
rows and from the run events, never from the workers' own counters. Each worker process
writes through one module-level pool of its own.
"""

from __future__ import annotations

import asyncio
import os

import asyncpg

from asyncjobs import App, Context

#: Where the recording jobs write; set by the test for the worker processes.
RECORD_DSN_ENV = "ASYNCJOBS_TEST_RECORD_DSN"

#: One row per attempt that started: (run_id, attempt) is unique, so an attempt that ran
#: twice would fail its insert. ``ended_at`` stays NULL when the attempt never reached its end.
CRASH_DDL = """
CREATE TABLE public.crash_intervals (
    run_id     bigint  NOT NULL,
    attempt    integer NOT NULL,
    job        text    NOT NULL,
    queue      text    NOT NULL,
    worker_pid integer NOT NULL,
    started_at timestamptz NOT NULL,
    ended_at   timestamptz,
    outcome    text,
    PRIMARY KEY (run_id, attempt)
)
"""

_pool: asyncpg.Pool | None = None
_pool_lock = asyncio.Lock()


async def _recording_pool() -> asyncpg.Pool:
    global _pool
    async with _pool_lock:
        if _pool is None:
            _pool = await asyncpg.create_pool(os.environ[RECORD_DSN_ENV], min_size=1, max_size=4)
    return _pool


async def _record(ctx: Context, sleep_ms: int, fail: bool) -> int:
    """Sleep between two readings of the database clock, stored as this attempt's interval.

    The start is written after the claim committed and the end before the completion is sent,
    so the interval lies inside the time the attempt held its run in the database.
    """
    pool = await _recording_pool()
    await pool.execute(
        "INSERT INTO public.crash_intervals (run_id, attempt, job, queue, worker_pid, started_at)"
        " VALUES ($1, $2, $3, $4, $5, clock_timestamp())",
        ctx.run_id,
        ctx.attempt,
        ctx.job,
        ctx.run.queue,
        os.getpid(),
    )
    await asyncio.sleep(sleep_ms / 1000)
    await pool.execute(
        "UPDATE public.crash_intervals SET ended_at = clock_timestamp(), outcome = $3"
        " WHERE run_id = $1 AND attempt = $2",
        ctx.run_id,
        ctx.attempt,
        "raised" if fail else "returned",
    )
    if fail:
        raise RuntimeError(f"planned failure of attempt {ctx.attempt}")
    return ctx.attempt


# ---------------------------------------------------------------------- kill -9

crash_app = App("crash")
#: at most 4 running in this queue, cluster-wide
crash_app.queue("crash", max_concurrency=4)
crash_app.queue("free")

# Default job options: a crash is a restart (up to max_restarts, 10), not a retry, so no run
# needs retries to get through 100 kills. crash_queue has exactly the one retry its planned
# failure needs: were a crash to spend it, that run would fail.


@crash_app.job(queue="crash", max_concurrency=2)
async def crash_pair(ctx: Context, sleep_ms: int) -> int:
    """Limited to 2 running, inside the queue limit of 4."""
    return await _record(ctx, sleep_ms, fail=False)


@crash_app.job(queue="crash", retries=1, backoff_base=0.05, backoff_cap=0.2)
async def crash_queue(ctx: Context, sleep_ms: int, fail_first: bool = False) -> int:
    """Unlimited itself, limited by its queue; ``fail_first`` makes the first execution that
    gets to its end raise (however many crashes came before it)."""
    return await _record(ctx, sleep_ms, fail=fail_first and ctx.run.retries == 0)


@crash_app.job(queue="free")
async def crash_free(ctx: Context, sleep_ms: int) -> int:
    """No limit: keeps every worker busy, so that most kills hit running jobs."""
    return await _record(ctx, sleep_ms, fail=False)


# ---------------------------------------------------------------------- SIGSTOP, SIGTERM

proc_app = App("proc")
#: a queue nobody triggers into: a worker serving only it sweeps but never claims
proc_app.queue("idle")


@proc_app.job(retries=3)
async def stall(ctx: Context, first_ms: int, later_ms: int) -> str:
    """Sleeps ``first_ms`` in attempt 1 and ``later_ms`` after; says who returned."""
    await asyncio.sleep((first_ms if ctx.attempt == 1 else later_ms) / 1000)
    return f"attempt {ctx.attempt} pid {os.getpid()}"


@proc_app.job
async def nap(seconds: float) -> str:
    """Sleeps, then says who finished it (no retries: one attempt)."""
    await asyncio.sleep(seconds)
    return f"pid {os.getpid()}"


@proc_app.job(max_restarts=0)
async def fragile_nap(seconds: float) -> str:
    """``nap`` that is never restarted after a crash."""
    await asyncio.sleep(seconds)
    return f"pid {os.getpid()}"
