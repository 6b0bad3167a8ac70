"""The row "enqueue, 100 concurrent callers" for every Python library (issue 12).

``--callers`` (100) asyncio tasks share one producer and each enqueues its share of ``--n``
(10,000) jobs one awaited call at a time (caller k enqueues i = k, k + callers, ...), as the
request handlers of a web application would. Jobs/s over the whole batch; verified by the
row count (every job present, plus the warm-up's). Each library is driven the way it
recommends for concurrent producers (see ``PRODUCERS`` and benchmarks/README.md); install,
row count and ANALYZE come from the anchors' own adapters (``../shared/bench-anchors``).

Usage: python benchmarks/bench_concurrent.py --lib pgqueuer [--n 10000] [--callers 100]
Other harness options (``--concurrency`` ...) are accepted and ignored, so run_all.sh can
pass every script the same arguments. Prints one JSON line per run like the harness
(``library``, ``phases.enqueue_concurrent``); graphile-worker's twin is
bench_graphile_concurrent.js.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
HARNESS = Path(os.environ.get("BENCH_HARNESS") or HERE.parents[1] / "shared" / "bench-anchors")
sys.path[:0] = [str(HARNESS), str(HERE)]

import _common  # noqa: E402


class PgqPoolProducer:
    """pgqueuer's way for many concurrent callers: ``Queries`` on ``AsyncpgPoolDriver``
    (its own benchmark tool's ``apgpool`` driver and its web-framework examples); the
    anchors' single-connection ``AsyncpgDriver`` serializes every call behind one lock."""

    def __init__(self, pool: Any) -> None:
        from pgqueuer import Queries
        from pgqueuer.db import AsyncpgPoolDriver

        self.pool = pool
        self.queries = Queries(AsyncpgPoolDriver(pool))

    async def enqueue_one(self, i: int) -> None:
        await self.queries.enqueue("bench_noop", str(i).encode())

    async def close(self) -> None:
        await self.pool.close()


async def pgqueuer_producer(dsn: str) -> PgqPoolProducer:
    import asyncpg

    return PgqPoolProducer(await asyncpg.create_pool(dsn))  # asyncpg default: 10 connections


def adapter_for(lib: str) -> tuple[Any, Callable[[str], Awaitable[Any]], str]:
    """(the anchors' adapter, how to open the concurrent producer, what it does)."""
    if lib == "asyncjobs":
        import bench_asyncjobs

        adapter: Any = bench_asyncjobs.AsyncjobsAdapter()
        return adapter, adapter.open_producer, (
            "one Client (asyncpg pool, 1..10 connections); every caller awaits "
            "client.trigger_async(bench_noop, i=i)")
    if lib == "pgqueuer":
        import bench_pgqueuer

        return bench_pgqueuer.PgqAdapter(), pgqueuer_producer, (
            "Queries(AsyncpgPoolDriver(asyncpg.create_pool(dsn))), pool of 10; every caller "
            "awaits queries.enqueue('bench_noop', payload)")
    if lib == "procrastinate":
        import bench_procrastinate

        adapter = bench_procrastinate.ProcAdapter()
        return adapter, adapter.open_producer, (
            "one App(PsycopgConnector(conninfo)), its psycopg_pool (default 4 connections); "
            "every caller awaits task.defer_async(i=i)")
    if lib == "dbos":
        import bench_dbos

        adapter = bench_dbos.DbosAdapter()
        return adapter, adapter.open_producer, (
            "one DBOSClient(system_database_url) (SQLAlchemy pool 5, no overflow); every "
            "caller awaits client.enqueue_async(options, i), which runs in the loop's default "
            "thread pool (asyncio.to_thread)")
    if lib == "oban":
        import bench_oban

        adapter = bench_oban.ObanAdapter()
        return adapter, adapter.open_producer, (
            "one started client-mode Oban on Oban.create_pool(dsn) (1..10 connections); every "
            "caller awaits oban.enqueue(BenchNoop.new({'i': i}))")
    raise SystemExit(f"unknown library {lib!r}")


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": round(_common.percentile(values, 50), 2),
            "p99": round(_common.percentile(values, 99), 2), "max": round(max(values), 2)}


async def phase_enqueue_concurrent(adapter: Any, open_producer: Callable[[str], Awaitable[Any]],
                                   n: int, callers: int, db: str) -> dict[str, Any]:
    ctx = _common.Ctx(adapter, db)
    obs = await ctx.fresh()
    prod = await open_producer(ctx.dsn)
    call_ms: list[float] = []

    async def caller(k: int) -> None:
        for i in range(k, n, callers):
            t = time.perf_counter()
            await prod.enqueue_one(i)
            call_ms.append((time.perf_counter() - t) * 1000)

    # DB work is counted from before the warm-up to after the producer closed, over n + callers
    # jobs: a backend defers its statistics for 10 s when it flushed less than 1 s before, so
    # the warm-up's would land in the timed window anyway; closing flushes them all.
    stats0 = await _common.db_stats(obs)
    try:
        # warm-up, not timed: one call per caller at once opens the pool's connections and
        # prepares the statements on each
        async with asyncio.TaskGroup() as warm:
            for k in range(callers):
                warm.create_task(prod.enqueue_one(-1 - k))
        await asyncio.sleep(1.2)
        meter = _common.CpuMeter().start()
        t0 = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for k in range(callers):
                group.create_task(caller(k))
        dt = time.perf_counter() - t0
        cpu = meter.stop()
        present = await adapter.count_enqueued(obs)
    finally:
        await prod.close()
    await asyncio.sleep(1.2)
    stats1 = await _common.db_stats(obs)
    await obs.close()
    return {"jobs": n, "callers": callers, "seconds": round(dt, 3),
            "jobs_per_s": round(n / dt, 1), "verified": present == n + callers,
            "rows_in_queue": present, "enqueue_call_ms": summary(call_ms), "cpu": cpu,
            "db_per_job": _common.per_job(stats0, stats1, n + callers)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lib", required=True,
                   choices=["asyncjobs", "pgqueuer", "procrastinate", "dbos", "oban"])
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--callers", type=int, default=100)
    p.add_argument("--db", default=None, help="database name (dropped and recreated!)")
    p.add_argument("--json-out", default=None, help="append the one-line JSON summary here")
    p.add_argument("--verbose", action="store_true")
    args, _harness_only = p.parse_known_args(argv)
    if args.n < args.callers or args.callers < 1:
        p.error("--n must be at least --callers, and --callers at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    adapter, open_producer, how = adapter_for(args.lib)
    started = time.time()
    phase = asyncio.run(phase_enqueue_concurrent(
        adapter, open_producer, args.n, args.callers, args.db or f"bench_{args.lib}_concurrent"))
    if args.verbose:
        print(f"[{adapter.name}] enqueue_concurrent: {json.dumps(phase)}", file=sys.stderr,
              flush=True)
    line = json.dumps({
        "library": adapter.name, "version": adapter.version,
        "python": platform.python_version(), "cpu_count": os.cpu_count(), "n": args.n,
        "config": {**adapter.config, "concurrent_producer": how},
        "enqueue_concurrent_jobs_per_s": phase["jobs_per_s"],
        "all_verified": phase["verified"], "started_at": round(started, 1),
        "elapsed_s": round(time.time() - started, 1),
        "phases": {"enqueue_concurrent": phase},
    }, separators=(",", ":"))
    if args.json_out:
        with open(args.json_out, "a") as f:
            f.write(line + "\n")
    print(line, flush=True)


if __name__ == "__main__":
    main()
