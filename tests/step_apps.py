"""Apps for tests/test_steps_keys.py, imported by its worker processes.

Every job records what really happened into plain test tables through a pool of its own
process, with the database clock: the tests count side effects and judge limits from those
rows, never from the worker's own counters.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import asyncpg

from asyncjobs import App, Context

#: where the jobs write; set by the test for the worker processes
RECORD_DSN_ENV = "ASYNCJOBS_TEST_RECORD_DSN"

SIDE_DDL = """
CREATE TABLE public.side_effects (
    run_id  bigint  NOT NULL,
    job     text    NOT NULL,
    n       integer NOT NULL,
    attempt integer NOT NULL,
    pid     integer NOT NULL
);
CREATE TABLE public.key_intervals (
    run_id     bigint NOT NULL,
    job        text   NOT NULL,
    tenant     text   NOT NULL,
    started_at timestamptz NOT NULL,
    ended_at   timestamptz NOT NULL
)
"""

_pool: asyncpg.Pool | None = None
_pool_lock = asyncio.Lock()


async def close_recording_pool() -> None:
    """For a test that runs these jobs in its own process: the next one gets a new pool."""
    global _pool
    if _pool is not None:
        await _pool.close()
        _pool = None


async def _recording_pool() -> asyncpg.Pool:
    global _pool
    async with _pool_lock:
        if _pool is None:
            _pool = await asyncpg.create_pool(os.environ[RECORD_DSN_ENV], min_size=1, max_size=4)
    return _pool


async def _side_effect(ctx: Context, n: int) -> None:
    pool = await _recording_pool()
    await pool.execute(
        "INSERT INTO public.side_effects (run_id, job, n, attempt, pid)"
        " VALUES ($1, $2, $3, $4, $5)",
        ctx.run_id, ctx.job, n, ctx.attempt, os.getpid(),
    )  # fmt: skip


# ---------------------------------------------------------------------- durable children

steps_app = App("steps")


@steps_app.job
async def child(ctx: Context, n: int) -> int:
    await _side_effect(ctx, n)
    return n * 10


@steps_app.job(retries=1, backoff_base=0.05, backoff_cap=0.05)
async def parent(ctx: Context, crash: str) -> list[int]:
    """Triggers three children; on its first attempt it ends after the second finished: by
    raising (``crash="raise"``, a retry) or by killing its own worker process with SIGKILL
    (``crash="kill"``, a restart by another worker once the lease expired)."""
    await _side_effect(ctx, 0)
    results = [await child.run_async(n=1), await child.run_async(n=2)]
    if ctx.attempt == 1 and crash == "raise":
        raise RuntimeError("parent fails after its second child")
    if ctx.attempt == 1 and crash == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    results.append(await child.run_async(n=3))
    return results


# ---------------------------------------------------------------------- key limits

keys_app = App("keys")
KEY_LIMIT = 2


async def _interval(ctx: Context, tenant: str, sleep_ms: int) -> None:
    pool = await _recording_pool()
    started = await pool.fetchval("SELECT clock_timestamp()")
    await asyncio.sleep(sleep_ms / 1000)
    await pool.execute(
        "INSERT INTO public.key_intervals (run_id, job, tenant, started_at, ended_at)"
        " VALUES ($1, $2, $3, $4, clock_timestamp())",
        ctx.run_id, ctx.job, tenant, started,
    )  # fmt: skip


@keys_app.job(concurrency_key="tenant", key_concurrency=KEY_LIMIT)
async def keyed(ctx: Context, tenant: str, sleep_ms: int) -> None:
    await _interval(ctx, tenant, sleep_ms)


#: the same work without the key limit: proves the overlap check can fail
@keys_app.job
async def unkeyed(ctx: Context, tenant: str, sleep_ms: int) -> None:
    await _interval(ctx, tenant, sleep_ms)


#: head-of-line: one hot key with a long backlog, at most one of it at a time
@keys_app.job(concurrency_key="tenant", key_concurrency=1)
async def hot_or_not(ctx: Context, tenant: str, sleep_ms: int) -> None:
    await _interval(ctx, tenant, sleep_ms)


# ---------------------------------------------------------------------- rate limits

rates_app = App("rates")
RATE = (8, 0.5)


#: how long a rated run holds its worker slot: half the period, so that a worker of
#: concurrency 2 starts at most 4 runs per window and the 8 of a window need several workers
RATED_HOLD = 0.25


@rates_app.job(rate_limit="8/500ms")
async def rated(n: int) -> int:
    await asyncio.sleep(RATED_HOLD)
    return n


# ---------------------------------------------------------------------- per-key rate limits

key_rates_app = App("key-rates")
KEY_RATE = (4, 0.5)


@key_rates_app.job(concurrency_key="tenant", key_rate_limit="4/500ms")
async def key_rated(tenant: str, n: int) -> int:
    await asyncio.sleep(RATED_HOLD)
    return n


#: the same work without the per-key rate limit: proves the window check can fail
@key_rates_app.job
async def key_unrated(tenant: str, n: int) -> int:
    await asyncio.sleep(RATED_HOLD)
    return n


# ---------------------------------------------------------------------- computed keys

fn_keys_app = App("fn-keys")


def region_key(args: Any) -> str:
    """The key of ``fn_keyed``: tenant and region together."""
    return f"{args.tenant}:{args.region}"


@fn_keys_app.job(concurrency_key=region_key, key_concurrency=KEY_LIMIT)
async def fn_keyed(ctx: Context, tenant: str, region: str, sleep_ms: int) -> None:
    await _interval(ctx, f"{tenant}:{region}", sleep_ms)


#: the same work without the key: proves the overlap check can fail
@fn_keys_app.job
async def fn_unkeyed(ctx: Context, tenant: str, region: str, sleep_ms: int) -> None:
    await _interval(ctx, f"{tenant}:{region}", sleep_ms)

