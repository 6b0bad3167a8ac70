"""Many worker processes on one database, through PgBouncer in transaction mode (issue 16).

A private PostgreSQL (``asyncjobs.embedded``, max_connections 400) and, with
``--route pgbouncer`` (the default), a PgBouncer in front of it (``tests.pgbouncer``,
``default_pool_size`` = ``--server-pool``). ``--workers`` ``asyncjobs worker`` processes
(concurrency ``--concurrency``, poll 0.2 s) serve one database: their pools go through the
pooler, their one LISTEN connection each straight to the server (``--listen-dsn``).

Workload, queued before the workers start: ``--bulk`` no-op runs in the unlimited queue
``bulk`` (the claim path without a limit) and ``--limited`` runs in queue ``limited``
(limit 8), half of them of job ``narrow`` (limit 4), each sleeping 5-20 ms and recording its
interval with the database clock (``tests.proc_apps.record_interval``): every limited claim
takes the advisory locks, the claim's serialization point.

Measured: wall time from the first worker start to the last run finished (and the runs/s
over the span between the first and the last finish, which leaves out process start-up);
the most runs of a limit running at once (must equal the limit); ``pg_stat_activity``
sampled every 20 ms: backends waiting on an advisory lock, on any lock, active; deadlocks
(``pg_stat_database``); server connections by kind at their peak. Prints one JSON object.

    python benchmarks/many_workers.py --workers 32 --concurrency 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from asyncjobs import App  # noqa: E402
from asyncjobs.backends.postgres import PostgresBackend  # noqa: E402
from asyncjobs.embedded import EmbeddedPostgres  # noqa: E402
from tests.pgbouncer import PgBouncer  # noqa: E402
from tests.proc_apps import INTERVALS_DDL, RECORD_DSN_ENV, record_interval  # noqa: E402
from tests.test_limits import Interval, max_overlap  # noqa: E402

app = App("many")
app.queue("limited", max_concurrency=8)


@app.job(queue="bulk")
async def bulk(i: int) -> None:
    pass


narrow = app.job(name="narrow", queue="limited", max_concurrency=4)(record_interval)
wide = app.job(name="wide", queue="limited")(record_interval)
LIMITS = {"narrow": ("job", 4), "limited": ("queue", 8)}

SAMPLE_SQL = """
SELECT count(*) FILTER (WHERE wait_event_type = 'Lock' AND wait_event = 'advisory') AS advisory,
       count(*) FILTER (WHERE wait_event_type = 'Lock') AS any_lock,
       count(*) FILTER (WHERE state = 'active') AS active,
       count(*) FILTER (WHERE application_name = 'asyncjobs-listener') AS listeners,
       count(*) FILTER (WHERE application_name = 'record') AS recorders,
       count(*) FILTER (WHERE application_name NOT IN ('asyncjobs-listener', 'record',
                                                       'observer')) AS pooled
  FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()
"""


def _start(args: argparse.Namespace, dsn: str, direct: str, n: int, logs: Path) -> Any:
    pooled = ["--pgbouncer", "--listen-dsn", direct] if dsn != direct else []
    command = [sys.executable, "-m", "asyncjobs", "worker", "benchmarks.many_workers:app",
               "--dsn", dsn, *pooled, "--concurrency", str(args.concurrency),
               "--poll-interval", "0.2", "--worker-id", f"w{n:02d}"]  # fmt: skip
    env = {**os.environ, RECORD_DSN_ENV: f"{direct}?application_name=record",
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    with (logs / f"w{n:02d}.log").open("wb") as out:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


async def _sample(dsn: str, stop: asyncio.Event) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn, server_settings={"application_name": "observer"})
    samples = []
    try:
        while not stop.is_set():
            samples.append(await conn.fetchrow(SAMPLE_SQL))
            await asyncio.sleep(0.02)
    finally:
        await conn.close()
    return samples


async def _queue(dsn: str, args: argparse.Namespace) -> int:
    async with app.client(dsn) as client:
        await client.backend.register_definitions(*app.definitions())
        for a in range(0, args.bulk, 5000):
            await client.trigger_many(bulk, [{"i": i} for i in range(a, min(a + 5000, args.bulk))])
        half = args.limited // 2
        sleeps = [{"sleep_ms": 5 + (i * 7) % 16} for i in range(half)]
        await client.trigger_many(narrow, sleeps)
        await client.trigger_many(wide, sleeps)
    return args.bulk + 2 * half


async def run(args: argparse.Namespace, pg: EmbeddedPostgres, logs: Path) -> dict[str, Any]:
    admin = await asyncpg.connect(pg.dsn)
    await admin.execute("CREATE DATABASE many")
    await admin.close()
    direct = pg.database("many")
    backend = PostgresBackend(direct, migrate=True)
    await backend.open()
    await backend.close()
    obs = await asyncpg.connect(direct, server_settings={"application_name": "observer"})
    await obs.execute(INTERVALS_DDL)
    total = await _queue(direct, args)
    deadlocks0 = await obs.fetchval(
        "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
    pooled = args.route == "pgbouncer"
    bouncer = PgBouncer(pg.dsn, pool_size=args.server_pool).start() if pooled else None
    dsn = bouncer.via(direct) if bouncer else direct
    stop = asyncio.Event()
    sampler = asyncio.create_task(_sample(direct, stop))
    t0 = time.monotonic()
    workers = [_start(args, dsn, direct, n, logs) for n in range(args.workers)]
    try:
        done = "SELECT count(*) FROM asyncjobs.runs WHERE status = 'succeeded'"
        while await obs.fetchval(done) < total:
            assert all(w.poll() is None for w in workers), "a worker died"
            assert time.monotonic() - t0 < args.timeout, "not done in time"
            await asyncio.sleep(0.1)
        wall = time.monotonic() - t0
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        codes = [w.wait(60) for w in workers]
        if bouncer:
            bouncer.stop()
        stop.set()
        samples = await sampler
    span = await obs.fetchrow(
        "SELECT extract(epoch FROM max(finished_at) - min(finished_at)) AS s,"
        " (SELECT count(DISTINCT data ->> 'worker') FROM asyncjobs.run_events"
        "   WHERE kind = 'running') AS workers FROM asyncjobs.runs")
    deadlocks = await obs.fetchval(
        "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()") - deadlocks0
    rows = await obs.fetch("SELECT * FROM public.intervals")
    await obs.close()
    intervals = [Interval(**r) for r in rows]
    overlaps = {
        name: max_overlap([i for i in intervals if (i.job if kind == "job" else i.queue) == name])
        for name, (kind, _) in LIMITS.items()
    }
    n = len(samples)
    return {
        "route": args.route, "workers": args.workers, "concurrency": args.concurrency,
        "server_pool": args.server_pool if bouncer else None, "runs": total,
        "wall_s": round(wall, 2), "runs_per_s_wall": round(total / wall),
        "runs_per_s_span": round(total / float(span["s"])), "workers_that_ran": span["workers"],
        "limits": {k: {"limit": LIMITS[k][1], "max_running": v} for k, v in overlaps.items()},
        "limits_hold": all(v <= LIMITS[k][1] for k, v in overlaps.items()),
        "deadlocks": deadlocks, "exit_codes": sorted(set(codes)), "samples": n,
        "advisory_waiters": {"mean": round(sum(s["advisory"] for s in samples) / n, 2),
                             "max": max(s["advisory"] for s in samples),
                             "share_of_samples":
                                 round(sum(1 for s in samples if s["advisory"]) / n, 3)},
        "lock_waiters_max": max(s["any_lock"] for s in samples),
        "active_max": max(s["active"] for s in samples),
        "server_connections_peak": {k: max(s[k] for s in samples)
                                    for k in ("listeners", "recorders", "pooled")},
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--route", choices=["pgbouncer", "direct"], default="pgbouncer")
    parser.add_argument("--server-pool", type=int, default=20)
    parser.add_argument("--bulk", type=int, default=10000)
    parser.add_argument("--limited", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    logs = Path(os.environ.get("TMPDIR", "/tmp")) / f"many_workers_{os.getpid()}"
    logs.mkdir(parents=True, exist_ok=True)
    with EmbeddedPostgres(settings={"max_connections": "400"}) as pg:
        out = asyncio.run(run(args, pg, logs))
    out["uptime"] = os.popen("uptime").read().strip()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
