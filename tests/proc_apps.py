"""Apps imported by the worker and trigger processes of the cross-process tests.

The jobs here record what really happened, with the database clock, into plain test tables
(created by the tests): the tests then judge limits from those rows, never from the worker's
own counters. Each process writes through one module-level pool of its own.

``python -m tests.proc_apps storm DSN DEDUP_ID COUNT raise|return [LISTEN_DSN]`` is the
trigger storm of ``test_dedup_race``: it opens a client, says ``ready``, waits for ``go`` on
stdin, fires COUNT concurrent triggers and writes one JSON line with the outcomes. With
LISTEN_DSN, DSN is a PgBouncer in transaction mode (``pgbouncer=True``).
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any, Literal

import asyncpg
import orjson

from asyncjobs import App, Context, DuplicateRun

#: Where the recording jobs write; set by the test for the worker processes.
RECORD_DSN_ENV = "ASYNCJOBS_TEST_RECORD_DSN"

#: ``CREATE TABLE`` for the intervals the limit jobs record.
INTERVALS_DDL = """
CREATE TABLE public.intervals (
    run_id     bigint  NOT NULL,
    attempt    integer NOT NULL,
    job        text    NOT NULL,
    queue      text    NOT NULL,
    pid        integer NOT NULL,
    started_at timestamptz NOT NULL,
    ended_at   timestamptz NOT NULL
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


async def record_interval(ctx: Context, sleep_ms: int) -> None:
    """Sleep, bracketed by two readings of the database clock taken inside the run.

    The start is read after the claim committed and the end is written before the completion
    is sent, so each recorded interval lies inside the time the run was ``running`` in the
    database: overlapping recorded intervals prove overlapping running runs.
    """
    pool = await _recording_pool()
    started = await pool.fetchval("SELECT clock_timestamp()")
    await asyncio.sleep(sleep_ms / 1000)
    await pool.execute(
        "INSERT INTO public.intervals (run_id, attempt, job, queue, pid, started_at, ended_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, clock_timestamp())",
        ctx.run_id,
        ctx.attempt,
        ctx.job,
        ctx.run.queue,
        os.getpid(),
        started,
    )


# ---------------------------------------------------------------------- limits

limits_app = App("limits")
limits_app.queue("five", max_concurrency=5)
limits_app.queue("three", max_concurrency=3)

#: job limit 3 in the unlimited default queue
capped = limits_app.job(name="capped", max_concurrency=3)(record_interval)
#: two unlimited jobs sharing the queue limit 5
five_a = limits_app.job(name="five_a", queue="five")(record_interval)
five_b = limits_app.job(name="five_b", queue="five")(record_interval)
#: a job limit 2 inside the queue limit 3, beside an unlimited job of the same queue
pair = limits_app.job(name="pair", queue="three", max_concurrency=2)(record_interval)
free = limits_app.job(name="free", queue="three")(record_interval)

#: name → (limit, what it limits) as the test checks it
LIMITS: dict[str, tuple[Literal["job", "queue"], int]] = {
    "capped": ("job", 3),
    "five": ("queue", 5),
    "pair": ("job", 2),
    "three": ("queue", 3),
}


# ---------------------------------------------------------------------- dedup

dedup_app = App("dedup")


@dedup_app.job
async def once(n: int) -> int:
    return n + 1


async def _storm(
    dsn: str, dedup_id: str, count: int, mode: str, options: dict[str, Any]
) -> list[dict[str, Any]]:
    job = once.options(dedup_id=dedup_id, on_duplicate="return" if mode == "return" else "raise")

    async def trigger(n: int) -> dict[str, Any]:
        try:
            run = await client.trigger_async(job, n=n)
        except DuplicateRun as exc:
            return {"duplicate": exc.existing_run_id, "job": exc.job, "dedup_id": exc.dedup_id}
        return {"run": run.id, "created": run.created}

    async with dedup_app.client(dsn, max_pool_size=8, **options) as client:
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        if (await asyncio.to_thread(sys.stdin.readline)).strip() != "go":
            raise SystemExit("expected 'go'")
        return await asyncio.gather(*(trigger(n) for n in range(count)))


def main(argv: list[str]) -> int:
    command, dsn, dedup_id, count, mode, *listen = argv
    if command != "storm":
        raise SystemExit(f"unknown command {command!r}")
    options = {"pgbouncer": True, "listen_dsn": listen[0]} if listen else {}
    outcomes = asyncio.run(_storm(dsn, dedup_id, int(count), mode, options))
    sys.stdout.write(orjson.dumps(outcomes).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
