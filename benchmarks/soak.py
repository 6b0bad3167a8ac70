"""Soak: a large backlog, several worker processes, stale statistics; does it hold?

N no-op runs (default 1,000,000) are queued with one INSERT ... SELECT, the tables are
ANALYZEd while nothing runs (statistics a bulk load leaves behind, never refreshed while
autovacuum is off), then W worker processes (default 4) at concurrency C (default 100) work
the backlog off. At the end, from the database:

* every run `succeeded`, exactly once: attempt 1, one `running` and one `succeeded` event
  each, no error recorded (the job records nothing else);
* no `LeaseExpired` in any run's errors;
* the completion lag — the job returns its end time (``time.time()``; the server runs on this
  machine, so its clock is the same), the run's `finished_at` is the database clock of the
  completion — p99 under one second.

And from the workers (each prints a sample every ``--sample-interval`` seconds): the runs
held (executing or awaiting their stored completion) never above ``concurrency +
completion_backlog``; the RSS of each worker flat (growth from 10 % of the soak to its end).

``--autovacuum on`` runs on a private server (``asyncjobs.embedded``) with autovacuum on, so
the shared server's configuration is untouched; ``off`` uses ``--server`` (default the local
server, whose autovacuum is off on this machine; the script records the setting it found).
``--dsn`` uses an existing migrated database as is (the CI test does). Exit status 0 when
every check passed; the JSON summary goes to stdout and ``--json-out``.

Usage:
    python benchmarks/soak.py                         # 1M runs, autovacuum as the server has it
    python benchmarks/soak.py --autovacuum on         # 1M runs, private server, autovacuum on
    python benchmarks/soak.py --runs 200000 --json-out benchmarks/results/soak.jsonl
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg

from asyncjobs import App
from asyncjobs.backends.postgres import PostgresBackend

HERE = Path(__file__).resolve()
app = App("soak")
JOB = "soak_noop"


@app.job(name=JOB)
async def soak_noop() -> float:
    """Nothing, then the end of its execution (the completion lag starts here)."""
    return time.time()


# --------------------------------------------------------------------------- worker process


def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024


async def worker_main(dsn: str, concurrency: int, interval: float) -> None:
    worker = app.worker(dsn, concurrency=concurrency, handle_signals=True)
    backlog = getattr(worker, "completion_backlog", None)  # absent before issue 17
    bound = concurrency + backlog if backlog is not None else None

    def sample() -> None:
        stats = worker.stats
        held = len(worker._running) + len(worker._finishing)  # private: works on main too
        line = {"pid": os.getpid(), "t": time.time(), "held": held, "bound": bound,
                "held_peak": getattr(stats, "held_peak", None), "rss_kb": _rss_kb(),
                "claimed": stats.claimed, "succeeded": stats.succeeded,
                "throttled": getattr(stats, "throttled", None),
                "leases_lost": stats.leases_lost, "fenced_off": stats.fenced_off}
        print(json.dumps(line), flush=True)

    async with worker:
        while not worker._stopping.is_set():
            sample()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await worker._stopping.wait()
        await worker.wait()
    sample()


# --------------------------------------------------------------------------- the soak


async def _setup(dsn: str, runs: int) -> None:
    backend = PostgresBackend(dsn, migrate=True)
    await backend.open()
    await backend.close()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("ANALYZE")  # statistics of the empty tables, then never again
        await conn.execute(
            """WITH ids AS (SELECT nextval('asyncjobs.run_ids') AS id
                              FROM generate_series(1, $1::bigint)),
                    runs AS (
                INSERT INTO asyncjobs.runs (id, job, queue, args, root_run_id)
                SELECT id, $2, 'default', '{}', id FROM ids RETURNING id)
               INSERT INTO asyncjobs.run_events (run_id, root_run_id, kind, data)
               SELECT id, id, 'pending', '{}' FROM runs""",
            runs, JOB,
        )
        # what a planner sees after a bulk load analyzed once: many pending, none running
        await conn.execute("ANALYZE asyncjobs.runs")
    finally:
        await conn.close()


async def _left(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval(
        "SELECT count(*) FROM asyncjobs.runs WHERE status IN ('pending', 'running')"))


async def _pump(proc: asyncio.subprocess.Process, samples: list[dict[str, Any]]) -> None:
    assert proc.stdout is not None
    async for raw in proc.stdout:
        with contextlib.suppress(ValueError):
            samples.append(json.loads(raw))


async def _stop(proc: asyncio.subprocess.Process, grace: float = 60.0) -> int:
    """SIGTERM (the worker drains), SIGKILL if it has not stopped after ``grace``."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(grace):
            return await proc.wait()
    except TimeoutError:
        proc.kill()
        return await proc.wait()


async def _work_off(dsn: str, args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    samples: list[dict[str, Any]] = []
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, str(HERE), "--worker", dsn,
            "--concurrency", str(args.concurrency), "--sample-interval",
            str(args.sample_interval), stdout=asyncio.subprocess.PIPE, env=env)
        for _ in range(args.workers)
    ]
    pumps = [asyncio.create_task(_pump(p, samples)) for p in procs]
    began = time.monotonic()
    conn = await asyncpg.connect(dsn)
    try:
        progress: list[tuple[float, int]] = []
        while (left := await _left(conn)) > 0:
            progress.append((round(time.monotonic() - began, 1), left))
            print(f"{progress[-1][0]:7.1f} s: {left} runs left", file=sys.stderr, flush=True)
            if time.monotonic() - began > args.timeout:
                break
            if any(p.returncode is not None for p in procs):
                break
            await asyncio.sleep(1.0)
        seconds = time.monotonic() - began
    finally:
        await conn.close()
        codes = await asyncio.gather(*(_stop(p) for p in procs))
        await asyncio.gather(*pumps)
    return {"seconds": round(seconds, 1), "left": left, "worker_exit_codes": codes,
            "samples": samples, "progress": progress}


CHECK_SQL = """
SELECT count(*) AS runs,
       count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE attempt <> 1) AS not_attempt_1,
       count(*) FILTER (WHERE errors <> '[]') AS with_errors,
       count(*) FILTER (WHERE errors @> '[{"type": "LeaseExpired"}]') AS lease_expired,
       percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (
           ORDER BY extract(epoch FROM finished_at) - (result #>> '{}')::float8)
           FILTER (WHERE status = 'succeeded') AS lag,
       max(extract(epoch FROM finished_at) - (result #>> '{}')::float8)
           FILTER (WHERE status = 'succeeded') AS lag_max
  FROM asyncjobs.runs
"""

EVENTS_SQL = """
SELECT count(*) FILTER (WHERE kind = 'running') AS running,
       count(*) FILTER (WHERE kind = 'succeeded') AS succeeded
  FROM asyncjobs.run_events
"""

TABLES_SQL = """
SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_dead_tup, n_live_tup,
       vacuum_count, autovacuum_count, analyze_count, autoanalyze_count,
       pg_total_relation_size(relid) AS bytes
  FROM pg_stat_user_tables WHERE schemaname = 'asyncjobs'
   AND relname IN ('runs', 'run_events', 'workers')
"""


async def _database_checks(dsn: str) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        row = dict(await conn.fetchrow(CHECK_SQL))
        events = dict(await conn.fetchrow(EVENTS_SQL))
        await asyncio.sleep(1.0)  # statistics are sent by each backend at most twice a second
        tables = {r["relname"]: {k: v for k, v in dict(r).items() if k != "relname"}
                  for r in await conn.fetch(TABLES_SQL)}
        autovacuum = await conn.fetchval("SHOW autovacuum")
    finally:
        await conn.close()
    lag = row.pop("lag") or [None, None]
    row["lag_p50_s"], row["lag_p99_s"] = lag
    return {"db": row, "events": events, "tables": tables, "autovacuum": autovacuum}


def _memory(samples: list[dict[str, Any]], runs: int) -> dict[str, Any]:
    """RSS per worker at 10 % of the work and at the end (samples ordered by time)."""
    out: dict[str, Any] = {}
    for pid in sorted({s["pid"] for s in samples}):
        mine = [s for s in samples if s["pid"] == pid]
        done_total = max(s["succeeded"] for s in mine) or 1
        early = next((s for s in mine if s["succeeded"] >= 0.1 * done_total), mine[0])
        out[str(pid)] = {"rss_kb_at_10pct": early["rss_kb"], "rss_kb_end": mine[-1]["rss_kb"],
                         "rss_kb_max": max(s["rss_kb"] for s in mine),
                         "succeeded": done_total}
    return out


def _verdict(result: dict[str, Any], runs: int) -> dict[str, bool]:
    db, events = result["db"], result["events"]
    samples = result["samples"]
    bounds = {s["bound"] for s in samples}
    held_max = max((s["held"] for s in samples), default=0)
    peaks = [s["held_peak"] for s in samples if s["held_peak"] is not None]
    bound = min((b for b in bounds if b is not None), default=None)
    memory = result["memory"].values()
    return {
        "all_succeeded": db["succeeded"] == runs == db["runs"],
        "exactly_once": db["not_attempt_1"] == 0 and events["running"] == runs
        and events["succeeded"] == runs and db["with_errors"] == 0,
        "no_lease_expired": db["lease_expired"] == 0,
        "held_within_bound": bound is not None and held_max <= bound
        and max(peaks, default=0) <= bound,
        "lag_p99_under_1s": db["lag_p99_s"] is not None and db["lag_p99_s"] < 1.0,
        # flat: at most 10 % (and 8 MB) above the size after the first tenth of the work
        "memory_flat": all(m["rss_kb_end"] <= m["rss_kb_at_10pct"] * 1.1 + 8192
                           for m in memory),
    }


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    load_before = os.getloadavg()
    server: Any = None
    if args.dsn:
        dsn = args.dsn
    else:
        admin = args.server
        if args.autovacuum == "on":
            from asyncjobs.embedded import EmbeddedPostgres

            server = EmbeddedPostgres(settings={"autovacuum": "on", "max_connections": "200",
                                                "shared_buffers": "256MB"}).start()
            admin = server.dsn
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{args.db}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{args.db}"')
        finally:
            await conn.close()
        dsn = admin.rpartition("/")[0] + "/" + args.db
    try:
        began = time.monotonic()
        await _setup(dsn, args.runs)
        setup_s = time.monotonic() - began
        result = await _work_off(dsn, args)
        result.update(await _database_checks(dsn))
    finally:
        if server is not None:
            server.stop()
    result["memory"] = _memory(result["samples"], args.runs)
    result["checks"] = _verdict(result, args.runs)
    samples = result.pop("samples")
    result["held_max"] = max((s["held"] for s in samples), default=0)
    result["held_bound"] = next((s["bound"] for s in samples if s["bound"]), None)
    result["throttled"] = sum(max((s["throttled"] or 0 for s in samples if s["pid"] == p),
                                  default=0) for p in {s["pid"] for s in samples})
    result["leases_lost"] = sum(max(s["leases_lost"] for s in samples if s["pid"] == p)
                                for p in {s["pid"] for s in samples})
    result.update({
        "runs": args.runs, "workers": args.workers, "concurrency": args.concurrency,
        "setup_s": round(setup_s, 1),
        "runs_per_s": round(args.runs / result["seconds"], 1) if result["seconds"] else None,
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "progress": result["progress"][:: max(1, len(result["progress"]) // 20)],
    })
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=1_000_000)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--concurrency", type=int, default=100)
    p.add_argument("--autovacuum", choices=["server", "on"], default="server",
                   help="'server': use --server as configured; 'on': private server, on")
    p.add_argument("--server", default="postgresql://root@127.0.0.1:5432/postgres")
    p.add_argument("--db", default="asyncjobs_soak", help="dropped and recreated!")
    p.add_argument("--dsn", help="use this migrated database as is (no server, no drop)")
    p.add_argument("--timeout", type=float, default=7200.0, help="give up after (s)")
    p.add_argument("--sample-interval", type=float, default=1.0)
    p.add_argument("--json-out")
    p.add_argument("--worker", metavar="DSN", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        asyncio.run(worker_main(args.worker, args.concurrency, args.sample_interval))
        return 0
    result = asyncio.run(soak(args))
    line = json.dumps(result, default=str)
    print(line)
    if args.json_out:
        with open(args.json_out, "a") as f:
            f.write(line + "\n")
    failed = [name for name, ok in result["checks"].items() if not ok]
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
