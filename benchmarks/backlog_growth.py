"""Cost growth with the backlog: 10k / 100k / 1M / 5M pending runs (issue 16).

For each ``--sizes`` backlog, in a private database (``bench_backlog``, dropped at the end):

1. the backlog is generated server-side (``INSERT … SELECT generate_series``: runs of
   ``noop`` in queue ``default``, each with its ``pending`` event, as ``trigger_many`` writes
   them), then ``VACUUM ANALYZE`` (what autovacuum would have done by then);
2. plans, with ``EXPLAIN (ANALYZE, BUFFERS)``: the claim and completion of 100 runs
   (``bench_extra.explain_claim``: auto_explain inside the plpgsql claim function), an enqueue
   of 100 runs, and the dashboard's queries — the newest page of runs, a page by job, a page
   by status, and ``explain()``'s facts for the newest run — each in a rolled-back transaction;
3. a worker with c=100 processes the first ``--process`` runs (``bench_extra.process_first``).

``--prune-events N`` then measures retention on N events: N/4 finished trace trees (one run,
four events each) older than the cutoff, deleted by ``client.prune`` (500 trees a statement).

``--experiment NAME`` (repeatable) applies a schema change that is not in asyncjobs (see
``EXPERIMENTS``) to the benchmark database, to measure what it would buy. Prints one JSON
object; ``--plans DIR`` writes every plan as text. Needs the anchors' harness
(``BENCH_HARNESS=/work/shared/bench-anchors``). Usage:
    python benchmarks/backlog_growth.py --sizes 10000,100000,1000000,5000000 --plans out/
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_extra
from bench_extra import _common

from asyncjobs.sql import QUERIES

DB = "bench_backlog"

GENERATE = """
INSERT INTO asyncjobs.runs (id, job, queue, args, root_run_id)
SELECT g, $1, 'default', jsonb_build_object('i', g), g FROM generate_series(1, $2::bigint) g;
INSERT INTO asyncjobs.run_events (run_id, root_run_id, kind, data)
SELECT g, g, 'pending', jsonb_build_object('job', $1::text, 'queue', 'default',
                                           'parent_run_id', null, 'trigger', 'user')
  FROM generate_series(1, $2::bigint) g;
"""


class _Rollback(Exception):
    pass


async def generate(conn: asyncpg.Connection, job: str, n: int) -> float:
    t0 = time.perf_counter()
    async with conn.transaction():
        for statement in GENERATE.strip().split(";\n"):
            await conn.execute(statement.rstrip(";"), job, n)
        await conn.execute(f"SELECT setval('asyncjobs.run_ids', {n})")
    for table in ("runs", "run_events"):
        await conn.execute(f"VACUUM ANALYZE asyncjobs.{table}")
    return round(time.perf_counter() - t0, 1)


async def explain(conn: asyncpg.Connection, query: str, *args: Any) -> tuple[str, float]:
    """The plan of ``query`` executed once, rolled back; and its execution time (ms)."""
    lines: list[str] = []
    try:
        async with conn.transaction():
            rows = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {query}", *args)
            lines = [r[0] for r in rows]
            raise _Rollback
    except _Rollback:
        pass
    ms = next((float(x.split(":")[1].split()[0]) for x in lines if "Execution Time" in x), -1.0)
    return "\n".join(lines), ms


def _enqueue_args(job: str, n: int) -> list[Any]:
    # one array of fields per run, in the order of enqueue_runs' `r ->> n`
    runs = [[job, "default", json.dumps({"i": i}), 0, None, None, None, 1, None, None, "user",
             0, None, None, None, None] for i in range(n)]  # fmt: skip
    return QUERIES["enqueue_runs"].arguments(
        (), {"runs": json.dumps(runs), "now": None, "origin": None}
    )


def _get_runs_args(job: str | None, status: str | None) -> list[Any]:
    return QUERIES["get_runs"].arguments((), {
        "job": job, "status": status, "parent_run_id": None, "root_run_id": None,
        "trigger": None, "before_id": None, "created_after": None, "created_before": None,
        "roots_only": False, "limit": 50,
    })  # fmt: skip


async def plans_at(dsn: str, job: str, size: int) -> dict[str, tuple[str, float]]:
    conn = await asyncpg.connect(dsn)
    try:
        out = {
            "enqueue_100": await explain(conn, QUERIES["enqueue_runs"].text,
                                         *_enqueue_args(job, 100)),
            "list_newest": await explain(conn, QUERIES["get_runs"].text,
                                         *_get_runs_args(None, None)),
            "list_by_job": await explain(conn, QUERIES["get_runs"].text,
                                         *_get_runs_args(job, None)),
            "list_pending": await explain(conn, QUERIES["get_runs"].text,
                                          *_get_runs_args(None, "pending")),
            "list_failed": await explain(conn, QUERIES["get_runs"].text,
                                         *_get_runs_args(None, "failed")),
            "explain_facts_newest": await explain(
                conn, QUERIES["run_facts"].text, *QUERIES["run_facts"].arguments((), {
                    "run_id": size, "worker_ttl": timedelta(seconds=60), "now": None,
                }),
            ),
        }  # fmt: skip
    finally:
        await conn.close()
    return out


#: ``--experiment``: changes NOT in the schema, applied to the benchmark database only, to
#: measure what a migration would buy
EXPERIMENTS = {
    # the generic plan of the claim estimates 10 % of the backlog per queue: above ~1M
    # pending its cost passes jit_above_cost and every claim pays ~100 ms of JIT compilation
    "claim_jit_off": "ALTER FUNCTION asyncjobs.claim_runs(text, text[], text[], integer, "
                     "interval) SET jit = off",
    # the dashboard's page of runs by a rare status walks the primary key backwards
    "status_index": "CREATE INDEX runs_status_id_idx ON asyncjobs.runs (status, id)",
    # deleting a run fires its ON DELETE SET NULL foreign key (parent_run_id), which looks
    # for children: without an index, a sequential scan of runs per deleted run
    "parent_index": "CREATE INDEX runs_parent_idx ON asyncjobs.runs (parent_run_id)"
                    " WHERE parent_run_id IS NOT NULL",
}


def _write_plans(
    folder: Path, size: int, experiments: list[str], claim: dict[str, Any],
    plans: dict[str, tuple[str, float]],
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tag = "".join(f"-{name}" for name in experiments)
    (folder / f"{size}{tag}-claim.txt").write_text(claim.get("claim_plan", ""))
    (folder / f"{size}{tag}-complete.txt").write_text(claim.get("complete_plan", ""))
    for name, (text, _) in plans.items():
        (folder / f"{size}{tag}-{name}.txt").write_text(text)


async def one_size(
    size: int, process: int, plans_dir: Path | None, experiments: list[str]
) -> dict[str, Any]:
    await _common.recreate_db(DB)
    dsn = await bench_extra.fresh(DB)
    conn = await asyncpg.connect(dsn)
    generated = await generate(conn, bench_extra.noop.name, size)
    for name in experiments:
        await conn.execute(EXPERIMENTS[name])
    if experiments:
        await conn.execute("ANALYZE asyncjobs.runs")
    sizes = await bench_extra.relation_sizes(conn)
    await conn.close()
    claim = await bench_extra.explain_claim(dsn, capacity=100)
    plans = await plans_at(dsn, bench_extra.noop.name, size)
    processed = await bench_extra.process_first(dsn, min(process, size), 100, 120.0)
    if plans_dir is not None:
        await asyncio.to_thread(_write_plans, plans_dir, size, experiments, claim, plans)
    return {
        "backlog": size, "experiments": experiments, "generate_s": generated,
        "relation_bytes": sizes,
        "claim_exec_ms": claim.get("claim_exec_ms"),
        "complete_exec_ms": claim.get("complete_exec_ms"),
        "claim_scans": claim.get("claim_scans"),
        "plans_ms": {name: ms for name, (_, ms) in plans.items()},
        "jobs_per_s": processed["jobs_per_s"], "processed": processed["jobs"],
        "capped": processed["capped"], "verified": processed["verified"],
    }  # fmt: skip


PRUNE_GENERATE = """
INSERT INTO asyncjobs.runs (id, job, queue, args, root_run_id, status, attempt, started_at,
                            finished_at, result)
SELECT g, 'noop', 'default', '{}', g, 'succeeded', 1, now() - interval '8 days',
       now() - interval '8 days' + g * interval '1 ms', 'null'
  FROM generate_series(1, $1::bigint) g;
INSERT INTO asyncjobs.run_events (run_id, root_run_id, kind, at)
SELECT g, g, k, now() - interval '8 days'
  FROM generate_series(1, $1::bigint) g,
       unnest(ARRAY['pending', 'running', 'log', 'succeeded']) k;
"""


async def prune_events(events: int, experiments: list[str], batches: int) -> dict[str, Any]:
    """``events`` events in events/4 finished trees; the time of each of the first
    ``batches`` prune statements (500 trees each), then of the rest when ``batches`` is 0."""
    trees = events // 4
    dsn = await bench_extra.fresh(DB)
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            for statement in PRUNE_GENERATE.strip().split(";\n"):
                await conn.execute(statement.rstrip(";"), trees)
        for name in experiments:
            await conn.execute(EXPERIMENTS[name])
        for table in ("runs", "run_events"):
            await conn.execute(f"VACUUM ANALYZE asyncjobs.{table}")
        before = await bench_extra.relation_sizes(conn)
        cutoff = await conn.fetchval("SELECT now() - interval '7 days'")
        async with bench_extra.app.client(dsn) as client:
            statements: list[float] = []
            t0 = time.perf_counter()
            while batches == 0 or len(statements) < batches:
                t1 = time.perf_counter()
                done = await client.backend.prune(cutoff, 500)
                statements.append(round((time.perf_counter() - t1) * 1000, 1))
                if done.trees < 500:
                    break
            seconds = time.perf_counter() - t0
        left = await conn.fetchval("SELECT count(*) FROM asyncjobs.run_events")
    finally:
        await conn.close()
    deleted = trees * 4 - left
    return {"events": trees * 4, "trees": trees, "experiments": experiments,
            "statements": len(statements), "statement_ms_first": statements[:5],
            "statement_ms_median": sorted(statements)[len(statements) // 2],
            "deleted_events": deleted, "left_events": left, "seconds": round(seconds, 1),
            "events_per_s": round(deleted / seconds), "relation_bytes_before": before}


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


async def main(args: argparse.Namespace) -> None:
    out: dict[str, Any] = {"uptime_before": await asyncio.to_thread(_uptime), "sizes": []}
    try:
        for size in args.sizes if args.sizes != [0] else []:
            row = await one_size(size, args.process, args.plans, args.experiment)
            out["sizes"].append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
        if args.prune_events:
            out["prune"] = await prune_events(args.prune_events, args.experiment,
                                              args.prune_batches)
            print(json.dumps(out["prune"]), file=sys.stderr, flush=True)
    finally:
        conn = await asyncpg.connect(_common.dsn_for("postgres"))
        await conn.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
        await conn.close()
    out["uptime_after"] = await asyncio.to_thread(_uptime)
    print(json.dumps(out, indent=1))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000,5000000",
                        type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--process", type=int, default=20000, help="runs processed per size")
    parser.add_argument("--prune-events", type=int, default=0)
    parser.add_argument("--prune-batches", type=int, default=0,
                        help="time only the first N prune statements (0: prune everything)")
    parser.add_argument("--plans", type=Path, help="folder for the plans")
    parser.add_argument("--experiment", action="append", default=[], choices=sorted(EXPERIMENTS))
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
