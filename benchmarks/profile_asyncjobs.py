"""Where asyncjobs' time goes in the enqueue and process phases.

For each phase it measures, in this one process (no harness around it):

* Python: py-spy (``pip install py-spy``) attached to this process for the timed window only
  (200 samples/s; it pauses the process briefly per sample), collapsed stacks saved, and the
  hottest functions by own and by inclusive samples; CPU seconds per job (process_time);
* client side: calls, rows and wall time of every backend method (claim, complete, enqueue,
  ...), counted by wrapping the methods of ``PostgresBackend`` in this process only;
* database side: commits (``pg_stat_database``; xids are cluster-wide, so not used), rows inserted
  / updated / HOT-updated / deleted per table (``pg_stat_user_tables``), index bytes added, all
  per job. Stats are read after every connection of the phase has closed (a backend flushes
  its counters when it exits), so they are complete.

Usage: python benchmarks/profile_asyncjobs.py [--n 10000] [--out DIR] [--phases ...]
Writes DIR/<phase>.collapsed (py-spy raw format), DIR/<phase>.txt (summary) and
DIR/profile.json. Without py-spy on PATH (or in the venv) the Python profile is skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import shutil
import signal
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_extra  # its app, jobs and helpers; it puts the harness on sys.path
from bench_extra import _common, app, hooks, noop

from asyncjobs.backends.postgres import PostgresBackend

DB = "bench_asyncjobs_profile"
METHODS = ("enqueue", "claim", "complete", "heartbeat", "sweep", "terminal_runs", "add_events",
           "register_worker", "register_definitions", "unregister_worker")


class CallStats:
    """Backend calls made in this process: count, rows, wall seconds per method."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.rows: Counter[str] = Counter()
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self._originals: dict[str, Any] = {}

    def install(self) -> None:
        for name in METHODS:
            original = getattr(PostgresBackend, name)
            self._originals[name] = original
            setattr(PostgresBackend, name, self._wrap(name, original))

    def uninstall(self) -> None:
        for name, original in self._originals.items():
            setattr(PostgresBackend, name, original)

    def reset(self) -> None:
        self.calls.clear()
        self.rows.clear()
        self.seconds.clear()

    def _wrap(self, name: str, original: Callable[..., Awaitable[Any]]) -> Any:
        stats = self

        @functools.wraps(original)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            result = await original(*args, **kwargs)
            stats.seconds[name] += time.perf_counter() - t0
            stats.calls[name] += 1
            if isinstance(result, list | set):
                stats.rows[name] += len(result)
            return result

        return wrapper

    def report(self, jobs: int) -> dict[str, Any]:
        return {
            name: {"calls": n, "calls_per_job": round(n / jobs, 4),
                   "rows_per_call": round(self.rows[name] / n, 1) if self.rows[name] else None,
                   "ms_per_call": round(self.seconds[name] / n * 1000, 3)}
            for name, n in sorted(self.calls.items(), key=lambda kv: -kv[1])
        }


TABLE_STATS = """
SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del
  FROM pg_stat_user_tables WHERE schemaname = 'asyncjobs' AND relname IN ('runs', 'run_events')
"""
INDEX_BYTES = """
SELECT c.relname, pg_relation_size(c.oid) AS bytes FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'asyncjobs' AND c.relkind = 'i'
"""


async def db_snapshot(dsn: str) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        db = await _common.db_stats(conn)
        tables = {r["relname"]: dict(r) for r in await conn.fetch(TABLE_STATS)}
        indexes = {r["relname"]: r["bytes"] for r in await conn.fetch(INDEX_BYTES)}
    finally:
        await conn.close()
    return {"db": db, "tables": tables, "indexes": indexes}


def db_delta(a: dict[str, Any], b: dict[str, Any], jobs: int) -> dict[str, Any]:
    per = {k: round((b["db"][k] - a["db"][k]) / jobs, 3) for k in b["db"]}
    tables = {}
    for name, row in b["tables"].items():
        before = a["tables"].get(name, {})
        tables[name] = {k: round((v - before.get(k, 0)) / jobs, 3)
                        for k, v in row.items() if k != "relname"}
    grown = {k: round((v - a["indexes"].get(k, 0)) / jobs, 1) for k, v in b["indexes"].items()
             if v != a["indexes"].get(k, 0)}
    return {"database_per_job": per, "tables_per_job": tables, "index_bytes_per_job": grown}


# ---------------------------------------------------------------------------- py-spy


def py_spy_binary() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


class PySpy:
    #: extra py-spy options (``PROFILE_NATIVE=1``: also C/Cython frames, e.g. asyncpg's protocol)
    extra: tuple[str, ...] = ("--native",) if os.environ.get("PROFILE_NATIVE") == "1" else ()

    def __init__(self, out: Path, rate: int) -> None:
        self.out = out
        self.rate = rate
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> PySpy:
        binary = py_spy_binary()
        if binary is None:
            return self
        self.proc = await asyncio.create_subprocess_exec(
            binary, "record", "--pid", str(os.getpid()), "--rate", str(self.rate),
            "--format", "raw", "--output", str(self.out), *self.extra,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        await asyncio.sleep(1.0)  # attach
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(self.proc.wait(), 60)


IDLE_LEAVES = ("EpollSelector.select (", "select (selectors.py")
IDLE_THREADS = ("ThreadedChildWatcher._do_waitpid (",)


def summarize_stacks(path: Path, top: int = 25) -> dict[str, Any]:
    """Own and inclusive samples per function from py-spy's raw (collapsed) output."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    modules: Counter[str] = Counter()
    total = 0
    if not path.exists():
        return {}
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f]
        # the first frame is the thread ("process N:..."/"thread (0x..)"), not code
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        # py-spy's idle filter does not work here: drop waiting by hand (the event loop in
        # epoll, asyncio's child-watcher thread waiting for py-spy itself)
        if not frames or frames[-1].startswith(IDLE_LEAVES) or any(
                f.startswith(IDLE_THREADS) for f in frames):
            continue
        total += count
        own[_short(frames[-1])] += count
        modules[_module(frames[-1])] += count
        for name in {_short(f) for f in frames}:
            inclusive[name] += count

    def pct(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(k, round(v / total * 100, 1)) for k, v in counter.most_common(top)]

    return {"busy_samples": total, "own": pct(own), "inclusive": pct(inclusive),
            "own_by_module": pct(modules)}


def _short(frame: str) -> str:
    """'fn (path/to/file.py:12)' -> 'fn (file.py)'; the line is dropped so a function counts
    once however many of its lines were sampled."""
    name, _, where = frame.partition(" (")
    file = where.rsplit(":", 1)[0].rstrip(")")
    return f"{name} ({_tail(file)})"


def _module(frame: str) -> str:
    where = frame.partition(" (")[2].rsplit(":", 1)[0]
    for marker, label in (("/asyncjobs/", "asyncjobs"), ("/asyncpg/", "asyncpg"),
                          ("/asyncio/", "asyncio"), ("/pydantic", "pydantic"),
                          ("/orjson", "orjson"), ("bench-anchors", "harness"),
                          ("/benchmarks/", "benchmark")):
        if marker in where:
            return label
    return _tail(where) or "other"


def _tail(path: str) -> str:
    parts = path.split("/")
    for i, part in enumerate(parts):
        if part in ("asyncjobs", "asyncpg", "asyncio", "pydantic", "pydantic_core", "anyio"):
            return "/".join(parts[i:])
    return parts[-1]


# ---------------------------------------------------------------------------- phases


async def fresh_dsn() -> str:
    return await bench_extra.fresh(DB)


async def phase_enqueue_single(n: int, spy: Path, calls: CallStats) -> dict[str, Any]:
    dsn = await fresh_dsn()
    async with app.client(dsn) as client:
        await client.trigger_async(noop, i=-1)
        before = await db_snapshot(dsn)
        calls.reset()
        async with PySpy(spy, rate=200):
            c0, t0 = time.process_time(), time.perf_counter()
            for i in range(n):
                await client.trigger_async(noop, i=i)
            cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    after = await db_snapshot(dsn)  # the client's connections are closed: stats flushed
    return {"jobs": n, "jobs_per_s": round(n / wall, 1),
            "python_cpu_ms_per_job": round(cpu / n * 1000, 4), "calls": calls.report(n),
            **db_delta(before, after, n)}


async def phase_enqueue_bulk(n: int, spy: Path, calls: CallStats) -> dict[str, Any]:
    dsn = await fresh_dsn()
    async with app.client(dsn) as client:
        await client.trigger_many(noop, [{"i": -1}])
        before = await db_snapshot(dsn)
        calls.reset()
        async with PySpy(spy, rate=200):
            c0, t0 = time.process_time(), time.perf_counter()
            for a in range(0, n, 1000):
                await client.trigger_many(noop, [{"i": i} for i in range(a, min(a + 1000, n))])
            cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    after = await db_snapshot(dsn)
    return {"jobs": n, "jobs_per_s": round(n / wall, 1),
            "python_cpu_ms_per_job": round(cpu / n * 1000, 4), "calls": calls.report(n),
            **db_delta(before, after, n)}


async def phase_process(n: int, concurrency: int, spy: Path, calls: CallStats) -> dict[str, Any]:
    dsn = await fresh_dsn()
    await bench_extra.preload(dsn, n, batch=1000)
    conn = await asyncpg.connect(dsn)
    await conn.execute("ANALYZE asyncjobs.runs")
    await conn.close()
    before = await db_snapshot(dsn)
    log = _common.JobLog()
    log.expect(n)
    hooks.on_start = log.on_job
    calls.reset()
    obs = await asyncpg.connect(dsn)
    try:
        async with PySpy(spy, rate=200):
            c0, t0 = time.process_time(), time.perf_counter()
            worker = await bench_extra.start_worker(dsn, concurrency)
            await asyncio.wait_for(log.reached.wait(), 600)

            async def done() -> bool:
                return await bench_extra.count_succeeded(obs) >= n

            await _common.wait_until(done, timeout=60)
            cpu, wall = time.process_time() - c0, time.perf_counter() - t0
            await bench_extra.stop_worker(worker)
    finally:
        hooks.on_start = bench_extra._ignore
        await obs.close()
    after = await db_snapshot(dsn)
    return {"jobs": n, "concurrency": concurrency, "jobs_per_s": round(n / wall, 1),
            "python_cpu_ms_per_job": round(cpu / n * 1000, 4), "calls": calls.report(n),
            **db_delta(before, after, n)}


async def phase_run_async(n: int, spy: Path, calls: CallStats) -> dict[str, Any]:
    """Sequential run_async calls against an idle worker (c=10) in this process: which backend
    calls one round trip makes (worker and client sides together)."""
    dsn = await fresh_dsn()
    worker = await bench_extra.start_worker(dsn, 10)
    trips = []
    try:
        async with app.client(dsn) as client:
            for k in range(5):
                await client.run_async(bench_extra.echo, i=-1 - k)
            await asyncio.sleep(1.0)
            before = await db_snapshot(dsn)
            calls.reset()
            async with PySpy(spy, rate=200):
                c0, t0 = time.process_time(), time.perf_counter()
                for i in range(n):
                    t = time.perf_counter()
                    await client.run_async(bench_extra.echo, i=i)
                    trips.append((time.perf_counter() - t) * 1000)
                cpu, wall = time.process_time() - c0, time.perf_counter() - t0
            result_calls = calls.report(n)
    finally:
        await bench_extra.stop_worker(worker)
    after = await db_snapshot(dsn)
    return {"jobs": n, "jobs_per_s": round(n / wall, 1),
            "round_trip_ms": bench_extra.summary(trips),
            "python_cpu_ms_per_job": round(cpu / n * 1000, 4), "calls": result_calls,
            **db_delta(before, after, n)}


def write_summary(out: Path, name: str, result: dict[str, Any]) -> None:
    stacks = summarize_stacks(out / f"{name}.collapsed")
    result["python_profile"] = stacks
    lines = [f"# {name}: {result['jobs_per_s']:,} jobs/s, "
             f"{result['python_cpu_ms_per_job']} ms Python CPU per job", "",
             "backend calls:", json.dumps(result["calls"], indent=1), "",
             "database per job:", json.dumps(result["database_per_job"]),
             json.dumps(result["tables_per_job"]), json.dumps(result["index_bytes_per_job"])]
    if stacks:
        lines += ["", f"py-spy samples with the loop busy: {stacks['busy_samples']} (200/s; "
                  "% below are of these)", "", "own time by module (%):"]
        lines += [f"  {pct:5.1f}  {mod}" for mod, pct in stacks["own_by_module"]]
        lines += ["", "own time (%):"] + [f"  {pct:5.1f}  {fn}" for fn, pct in stacks["own"]]
        lines += ["", "inclusive time (%):"]
        lines += [f"  {pct:5.1f}  {fn}" for fn, pct in stacks["inclusive"]]
    (out / f"{name}.txt").write_text("\n".join(lines) + "\n")


async def main(args: argparse.Namespace) -> None:
    out = Path(args.out)
    calls = CallStats()
    calls.install()
    results: dict[str, Any] = {}
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    try:
        for phase in phases:
            spy = out / f"{phase}.collapsed"
            if phase == "enqueue_single":
                result = await phase_enqueue_single(args.n, spy, calls)
            elif phase == "run_async":
                result = await phase_run_async(min(args.n, 500), spy, calls)
            elif phase == "enqueue_bulk":
                result = await phase_enqueue_bulk(args.n, spy, calls)
            elif phase.startswith("process_c"):
                result = await phase_process(args.n, int(phase[len("process_c"):]), spy, calls)
            else:
                raise SystemExit(f"unknown phase {phase}")
            write_summary(out, phase, result)
            results[phase] = result
            print(f"{phase}: {result['jobs_per_s']:,} jobs/s; see {out / (phase + '.txt')}",
                  file=sys.stderr, flush=True)
    finally:
        calls.uninstall()
    (out / "profile.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument(
        "--phases", default="enqueue_single,enqueue_bulk,process_c10,process_c100,run_async")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "tmp"
                                              / "profile"))
    parser.add_argument("--summarize-only", action="store_true",
                        help="rewrite the .txt summaries from profile.json and the stacks")
    arguments = parser.parse_args()
    folder = Path(arguments.out)
    if arguments.summarize_only:
        for name, result in json.loads((folder / "profile.json").read_text()).items():
            write_summary(folder, name, result)
        sys.exit(0)
    folder.mkdir(parents=True, exist_ok=True)
    asyncio.run(main(arguments))
