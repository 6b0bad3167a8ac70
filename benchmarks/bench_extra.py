"""Rows no anchor has, measured with the shared harness's helpers (../shared/bench-anchors).

Phases (``--phases``, comma separated; every phase starts from a fresh database):

  run_async  idle worker (c=10, warmed up, then 1 s idle); ``--run-async-calls`` sequential
             ``await client.run_async(echo, i=i)``; round trip = typed result in the caller
             minus the time just before the call. Every result is checked (``== i``).
  sse_lag    the dashboard (``app.asgi(dsn)``) served by uvicorn in a child process;
             ``--sse-clients`` httpx clients stream ``GET /api/events`` (the global feed);
             a worker (c=10) runs in this process. ``--sse-runs`` runs are triggered on a
             fixed grid; lag = time a client reads the event line − time just before the state
             change: the trigger call for ``pending`` events, the job function's return (the
             completion is queued right after it) for ``succeeded`` events. With
             ``--sse-views``, headless Chromium (Playwright, /usr/bin/chromium) keeps the
             dashboard's views open during the measurement, as browser tabs would: Runs,
             Queues, Workers, Schedules and the trace page of a run that stays pending (so its
             "why pending" panel polls ``explain``); every view polls at its own interval.
             ``--sse-views http``: the same polls and streams from httpx, without a browser.
  growth     for each ``--growth-sizes`` backlog: bulk-insert the backlog through the public
             API (``trigger_many``, 5,000 runs a call), ANALYZE, capture the plans of the
             claim (auto_explain of the statements inside ``asyncjobs.claim_runs``, after 5
             calls so plpgsql's plan cache is warm) and of the completion, then time a worker
             with c=100 processing the first ``--growth-process`` runs of the backlog (at most
             ``--growth-max-seconds``; a capped row reports what succeeded by then).
  limits     ``--limits-n`` runs processed by one worker (c=100) for each of: a plain job, a
             job with a per-key limit (100 keys, 10 each: keys configured, rarely binding) and
             a job with a rate limit that does not bind (10,000/s); interleaved over
             ``--limits-rounds`` fresh databases; medians and the ratios to the plain job.
  soak       ``--soak-runs`` runs queued by a child process (so this process's heap holds
             nothing of them), then one worker (c=100) in this process processes them all;
             RSS of this process sampled every second from /proc/self/status.

Prints one JSON line (``library: "asyncjobs-extra"``) like the harness scripts; ``report.py``
turns the lines into tables. Usage: python benchmarks/bench_extra.py --phases run_async,sse_lag
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg

# ../shared/bench-anchors beside the repository (BENCH_HARNESS overrides)
HARNESS = Path(os.environ.get("BENCH_HARNESS")
               or Path(__file__).resolve().parents[2] / "shared" / "bench-anchors")
sys.path.insert(0, str(HARNESS))

import _common  # noqa: E402

import asyncjobs  # noqa: E402
from asyncjobs import App  # noqa: E402
from asyncjobs.backends.postgres import PostgresBackend  # noqa: E402
from asyncjobs.sql import QUERIES  # noqa: E402

DB = "bench_asyncjobs_extra"
PRELOAD_BATCH = 5000
QUEUE = "default"

app = App("bench_extra")


def _ignore(_i: int) -> None:
    pass


class _Hooks:
    """What the job functions report to the phase that runs them (set per phase)."""

    def __init__(self) -> None:
        self.on_start: Callable[[int], None] = _ignore
        self.on_return: Callable[[int], None] = _ignore


hooks = _Hooks()


@app.job
async def echo(i: int) -> int:
    """run_async: the typed result travels back to the caller."""
    return i


@app.job
async def noop(i: int) -> None:
    """growth, soak and sse_lag: a no-op that reports its start and its return."""
    hooks.on_start(i)
    hooks.on_return(i)


@app.job(concurrency_key="tenant", key_concurrency=10)
async def keyed_noop(i: int, tenant: str) -> None:
    """limits: noop under a per-key limit (100 keys of 10 slots: binds rarely at c=100)."""
    hooks.on_start(i)
    hooks.on_return(i)


@app.job(rate_limit="10000/s")
async def rated_noop(i: int) -> None:
    """limits: noop under a rate limit that does not bind at this machine's throughput."""
    hooks.on_start(i)
    hooks.on_return(i)


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "p50": round(_common.percentile(values, 50), 2),
        "p95": round(_common.percentile(values, 95), 2),
        "p99": round(_common.percentile(values, 99), 2),
        "max": round(max(values), 2),
        "mean": round(statistics.fmean(values), 2),
        "n": len(values),
    }


async def fresh(db: str) -> str:
    """Recreate the database with the asyncjobs schema; returns its DSN."""
    await _common.recreate_db(db)
    dsn = _common.dsn_for(db)
    backend = PostgresBackend(dsn, migrate=True)
    await backend.open()
    await backend.close()
    return dsn


async def count_succeeded(conn: asyncpg.Connection) -> int:
    query = "SELECT count(*) FROM asyncjobs.runs WHERE status = 'succeeded'"
    return int(await conn.fetchval(query))


async def preload(dsn: str, n: int, batch: int = PRELOAD_BATCH, job: Any = None) -> dict[str, Any]:
    """Queue n runs of ``noop`` (or ``job``) through the public bulk API; the insert rate."""
    job = job or noop
    keyed = job is keyed_noop
    meter = _common.CpuMeter().start()
    t0 = time.perf_counter()
    async with app.client(dsn) as client:
        for a in range(0, n, batch):
            await client.trigger_many(job, [
                {"i": i, "tenant": f"t{i % 100}"} if keyed else {"i": i}
                for i in range(a, min(a + batch, n))
            ])
    dt = time.perf_counter() - t0
    return {"runs": n, "batch": batch, "seconds": round(dt, 2), "runs_per_s": round(n / dt, 1),
            "cpu": meter.stop()}


async def start_worker(dsn: str, concurrency: int) -> Any:
    worker = app.worker(dsn, concurrency=concurrency)
    await worker.__aenter__()
    return worker


async def stop_worker(worker: Any) -> None:
    worker.stop()
    await worker.wait()


# --------------------------------------------------------------------------- run_async


async def phase_run_async(calls: int, concurrency: int) -> dict[str, Any]:
    dsn = await fresh(DB)
    worker = await start_worker(dsn, concurrency)
    trips: list[float] = []
    triggers: list[float] = []
    wrong = 0
    try:
        async with app.client(dsn) as client:
            for k in range(5):  # warm-up: connections, prepared statements, listener
                await client.run_async(echo, i=-1 - k)
            await asyncio.sleep(1.0)
            meter = _common.CpuMeter().start()
            for i in range(calls):
                t0 = time.perf_counter()
                value = await client.run_async(echo, i=i)
                trips.append((time.perf_counter() - t0) * 1000)
                wrong += value != i or type(value) is not int
            cpu = meter.stop()
            # the trigger half alone, for the decomposition (not part of the row)
            for i in range(min(calls, 50)):
                t0 = time.perf_counter()
                run = await client.trigger_async(echo, i=i)
                triggers.append((time.perf_counter() - t0) * 1000)
                await run.result()
    finally:
        await stop_worker(worker)
    return {"calls": calls, "concurrency": concurrency, "round_trip_ms": summary(trips),
            "trigger_call_ms": summary(triggers), "wrong_results": wrong,
            "verified": wrong == 0 and len(trips) == calls, "cpu": cpu}


# --------------------------------------------------------------------------- sse_lag


def dashboard_available() -> str | None:
    """None when the dashboard can be served, else why not."""
    try:
        import httpx  # noqa: F401

        from asyncjobs.web import Dashboard, DashboardServer  # noqa: F401
    except ImportError as exc:
        return f"dashboard or httpx not importable: {exc}"
    if not hasattr(App, "asgi"):
        return "App.asgi missing"
    return None


async def serve_dashboard(dsn: str, max_streams: int) -> None:
    """Child-process mode: serve the dashboard on a free loopback port until stdin closes."""
    from asyncjobs.web import DashboardServer

    dashboard = app.asgi(dsn, max_streams=max_streams)
    async with DashboardServer(dashboard, "127.0.0.1", 0) as server:
        print(f"LISTENING {server.url}", flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)  # parent closes stdin to stop us


def proc_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """Every process under ``pid`` (from /proc: the browser the Playwright driver started)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU of the processes under ``pid`` that are alive now."""
    total = 0.0
    for child in descendants(pid):
        with contextlib.suppress(OSError):
            total += proc_cpu_seconds(child)
    return total


class SseClient:
    """One subscriber: records (arrival time, raw data line); parsing waits until the end so
    that the 100 clients sharing this event loop do not delay each other's reads."""

    def __init__(self) -> None:
        self.lines: list[tuple[float, str]] = []
        self.connected = asyncio.Event()
        self.marker: str | None = None
        self.marked = asyncio.Event()
        self.status: int | None = None

    async def run(self, http: Any, url: str) -> None:
        async with http.stream("GET", url, headers={"accept": "text/event-stream"}) as resp:
            self.status = resp.status_code
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                self.lines.append((time.perf_counter(), line))
                self.connected.set()
                if self.marker is not None and self.marker in line:
                    self.marked.set()

    def watch_for(self, text: str) -> None:
        """Set ``marked`` once a data line containing ``text`` has arrived."""
        self.marker = text
        self.marked.clear()
        if any(self.marker in line for _, line in self.lines):
            self.marked.set()


async def start_dashboard_process(dsn: str, max_streams: int) -> tuple[Any, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "serve-dashboard", "--dsn", dsn,
        "--max-streams", str(max_streams),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    if not line.startswith(b"LISTENING "):
        proc.kill()
        raise RuntimeError(f"dashboard did not start: {line!r}")
    return proc, line.split()[1].decode()


async def stop_dashboard_process(proc: Any) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    try:
        await asyncio.wait_for(proc.wait(), 15)
    except TimeoutError:
        proc.kill()
        await proc.wait()


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]  # as tests/test_web_browser.py launches it
# the views a person keeps open: the hash routes of asyncjobs/web/static/main.js
VIEW_ROUTES = ("#/", "#/queues", "#/workers", "#/schedules")


def views_available() -> str | None:
    """None when headless Chromium can be driven, else why not."""
    try:
        import playwright.async_api  # noqa: F401
    except ImportError as exc:
        return f"playwright not importable: {exc}"
    if not Path(CHROMIUM).exists():
        return f"no browser at {CHROMIUM}"
    return None


class OpenViews:
    """Browser tabs on the dashboard: one page per view plus a trace page, each left to poll
    and stream exactly as the view's own code does. Counts the requests they make while the
    benchmark measures (``mark()`` .. ``result()``) and any script error."""

    def __init__(self, base: str, trace_run_id: int) -> None:
        self.urls = [base + route for route in VIEW_ROUTES] + [f"{base}#/runs/{trace_run_id}"]
        self.requests: dict[str, int] = {}
        self.problems: list[str] = []
        self.counting = False
        self._stack = contextlib.AsyncExitStack()

    def _on_request(self, request: Any) -> None:
        if self.counting:
            path = request.url.split("?", 1)[0].split("/api/", 1)[-1]
            self.requests[path] = self.requests.get(path, 0) + 1

    async def __aenter__(self) -> OpenViews:
        from playwright.async_api import async_playwright

        playwright = await self._stack.enter_async_context(async_playwright())
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        self._stack.push_async_callback(browser.close)
        for url in self.urls:
            page = await browser.new_page(viewport={"width": 1400, "height": 860})
            page.on("request", self._on_request)
            page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
            await page.goto(url, wait_until="load")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    def result(self, wall_s: float) -> dict[str, Any]:
        return {"pages": self.urls, "api_requests": dict(sorted(self.requests.items())),
                "api_requests_per_s": round(sum(self.requests.values()) / wall_s, 2),
                "problems": self.problems[:5]}


# The same traffic without a browser: what asyncjobs/web/static/*.js polls and streams
# (path under api/, seconds between polls; None: an SSE stream held open), for a trace page
# of run {run}. Separates the server's cost of the views from the browser's CPU.
VIEW_TRAFFIC = (
    ("events?limit=50&roots=1", None),  # runs.js: the runs table's stream
    ("activity?window=3600", 5.0),  # queues.js
    ("workers", 5.0),  # workers.js
    ("schedules", 5.0),  # schedules.js
    ("runs/{run}/events", None),  # trace.js: the trace's stream
    ("runs/{run}/explain", 3.0),  # trace.js: "why pending" of a run not finished
)


class PolledViews:
    """``OpenViews`` as plain HTTP: each view's polls at its interval, its streams drained."""

    def __init__(self, http: Any, base: str, trace_run_id: int) -> None:
        self.http, self.base, self.run = http, base, trace_run_id
        self.requests: dict[str, int] = {}
        self.problems: list[str] = []
        self.counting = False
        self._tasks: list[asyncio.Task[None]] = []

    async def _poll(self, path: str, every: float) -> None:
        while True:
            resp = await self.http.get(self.base + "api/" + path)
            if resp.status_code != 200:
                self.problems.append(f"{path}: HTTP {resp.status_code}")
            if self.counting:
                key = path.split("?", 1)[0]
                self.requests[key] = self.requests.get(key, 0) + 1
            await asyncio.sleep(every)

    async def _stream(self, path: str) -> None:
        async with self.http.stream("GET", self.base + "api/" + path) as resp:
            async for _line in resp.aiter_lines():
                pass

    async def __aenter__(self) -> PolledViews:
        for path, every in VIEW_TRAFFIC:
            path = path.format(run=self.run)
            work = self._stream(path) if every is None else self._poll(path, every)
            self._tasks.append(asyncio.create_task(work))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def result(self, wall_s: float) -> dict[str, Any]:
        return {"pages": "http pollers", "api_requests": dict(sorted(self.requests.items())),
                "api_requests_per_s": round(sum(self.requests.values()) / wall_s, 2),
                "problems": self.problems[:5]}


async def phase_sse_lag(clients: int, runs: int, interval_s: float,
                        concurrency: int, views: str | None = None) -> dict[str, Any]:
    """``views``: None, "browser" (``OpenViews``) or "http" (``PolledViews``)."""
    why_not = dashboard_available() or (views_available() if views == "browser" else None)
    if why_not is not None:
        return {"skipped": why_not, "verified": False}
    import httpx
    import orjson

    load_before = os.getloadavg()
    dsn = await fresh(DB)
    proc, base = await start_dashboard_process(dsn, max_streams=clients + 10)
    returned: dict[int, float] = {}
    hooks.on_return = lambda i: returned.__setitem__(i, time.perf_counter())
    worker = await start_worker(dsn, concurrency)
    subs = [SseClient() for _ in range(clients)]
    limits = httpx.Limits(max_connections=clients + 10, max_keepalive_connections=clients + 10)
    before: dict[int, float] = {}  # run id -> time just before its trigger call
    index_of: dict[int, int] = {}  # run id -> i
    open_views: OpenViews | PolledViews | None = None
    try:
        async with httpx.AsyncClient(timeout=None, limits=limits) as http, \
                app.client(dsn) as client, contextlib.AsyncExitStack() as stack:
            if views:  # a run that stays pending: its trace page polls "why pending"
                parked = await client.trigger_json(noop, {"i": -2},
                                                   not_before=timedelta(hours=1))
                shown = (OpenViews(base, parked.id) if views == "browser"
                         else PolledViews(http, base, parked.id))
                open_views = await stack.enter_async_context(shown)
            tasks = [asyncio.create_task(s.run(http, base + "api/events")) for s in subs]
            await asyncio.wait_for(asyncio.gather(*(s.connected.wait() for s in subs)), 60)
            # warm-up: every client has seen an event of a run triggered after it connected
            warm = await client.trigger_async(noop, i=-1)
            for s in subs:
                s.watch_for(f'"run_id":{warm.id},')
            await asyncio.wait_for(asyncio.gather(*(s.marked.wait() for s in subs)), 60)
            await asyncio.sleep(1.0)
            server_cpu0 = proc_cpu_seconds(proc.pid)
            meter = _common.CpuMeter().start()
            browser_cpu0 = tree_cpu_seconds(os.getpid()) - proc_cpu_seconds(proc.pid)
            if open_views is not None:
                open_views.counting = True
            t0 = time.perf_counter()
            for i in range(runs):
                delay = t0 + i * interval_s - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                t = time.perf_counter()
                run = await client.trigger_async(noop, i=i)
                before[run.id], index_of[run.id] = t, i
            # the last run's 'succeeded' is the last event we wait for
            for s in subs:
                s.watch_for(f'"run_id":{max(before)},"kind":"succeeded"')
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(s.marked.wait() for s in subs)), 30)
            cpu = meter.stop()
            server_cpu = proc_cpu_seconds(proc.pid) - server_cpu0
            views_seen = open_views.result(cpu["wall_s"]) if open_views is not None else None
            # the browser: everything this process started but the dashboard (and its threads)
            browser_cpu = tree_cpu_seconds(os.getpid()) - proc_cpu_seconds(proc.pid) - browser_cpu0
            if views_seen is not None:
                views_seen["browser_cores"] = round(browser_cpu / cpu["wall_s"], 2)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await stop_worker(worker)
        await stop_dashboard_process(proc)
        hooks.on_return = _ignore

    lag_pending: list[float] = []
    lag_succeeded: list[float] = []
    seen: set[tuple[int, int, str]] = set()
    messages = 0
    for k, s in enumerate(subs):
        for t, line in s.lines:
            payload = orjson.loads(line[5:])
            messages += 1
            for event in payload.get("events") or ():
                run_id, kind = event.get("run_id"), event.get("kind")
                if run_id not in before or (k, run_id, kind) in seen:
                    continue
                seen.add((k, run_id, kind))
                if kind == "pending":
                    lag_pending.append((t - before[run_id]) * 1000)
                elif kind == "succeeded" and index_of[run_id] in returned:
                    lag_succeeded.append((t - returned[index_of[run_id]]) * 1000)
    expected = clients * runs
    return {
        "clients": clients, "runs": runs, "interval_ms": interval_s * 1000,
        "worker_concurrency": concurrency,
        "lag_pending_ms": summary(lag_pending), "lag_succeeded_ms": summary(lag_succeeded),
        "delivered_pending": len(lag_pending), "delivered_succeeded": len(lag_succeeded),
        "expected_per_kind": expected, "sse_messages": messages,
        "http_status": sorted({s.status for s in subs if s.status is not None}),
        "verified": (len(lag_pending) == expected and len(lag_succeeded) == expected
                     and (views_seen is None or not views_seen["problems"])),
        "cpu": cpu, "dashboard_process_cores": round(server_cpu / cpu["wall_s"], 2),
        "views": views_seen,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }


# --------------------------------------------------------------------------- growth


EXPLAIN_SETTINGS = (
    "SET LOCAL auto_explain.log_min_duration = 0",
    "SET LOCAL auto_explain.log_analyze = on",
    "SET LOCAL auto_explain.log_buffers = on",
    "SET LOCAL auto_explain.log_timing = on",
    "SET LOCAL auto_explain.log_nested_statements = on",
    "SET LOCAL auto_explain.log_level = 'notice'",
)


class _Rollback(Exception):
    pass


async def explain_claim(dsn: str, capacity: int) -> dict[str, Any]:
    """Plans of one claim of ``capacity`` runs and of completing them, in a transaction that
    is rolled back. auto_explain (loaded for this session only: no server setting needed)
    sends the plans of the statements *inside* the plpgsql claim function as notices."""
    conn = await asyncpg.connect(dsn)
    notices: list[str] = []
    conn.add_log_listener(lambda _c, msg: notices.append(str(msg.message)))
    worker_id, args = "bench-explain", ([QUEUE], sorted(app.jobs), capacity)
    claim_sql = "SELECT * FROM asyncjobs.claim_runs($1, $2, $3, $4, make_interval(secs => 60))"
    out: dict[str, Any] = {}
    try:
        async with conn.transaction():
            for _ in range(5):  # plpgsql caches the plans of its statements per session
                with contextlib.suppress(_Rollback):
                    async with conn.transaction():
                        await conn.fetch(claim_sql, worker_id, *args)
                        raise _Rollback
            await conn.execute("LOAD 'auto_explain'")
            for stmt in EXPLAIN_SETTINGS:
                await conn.execute(stmt)
            t0 = time.perf_counter()
            claimed = await conn.fetch(claim_sql, worker_id, *args)
            out["claim_ms_with_explain"] = round((time.perf_counter() - t0) * 1000, 2)
            ids = [r["id"] for r in claimed]
            complete = QUERIES["complete_runs"]
            await conn.fetch(complete.text, *complete.arguments((), {
                "worker": worker_id, "ids": ids, "attempts": [r["attempt"] for r in claimed],
                "statuses": ["succeeded"] * len(ids), "results": ["null"] * len(ids),
                "errors": [None] * len(ids), "retry_in": [None] * len(ids),
                "handback": [False] * len(ids), "now": None,
            }))
            await asyncio.sleep(0.1)  # asyncpg hands notices to the listener via the loop
            raise _Rollback
    except _Rollback:
        pass
    except asyncpg.PostgresError as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
        return out
    finally:
        await conn.close()
    # one notice per statement: the claim's inner query, the top-level claim call, asyncpg's
    # type introspection for the completion's parameters, and the completion itself
    candidate = _notice(notices, "candidates AS MATERIALIZED")
    completion = _notice(notices, "retry_in")
    scans = re.findall(r"((?:Parallel )?(?:Seq Scan|Index Only Scan|Index Scan|Bitmap Heap Scan|"
                       r"Bitmap Index Scan)(?: Backward)?(?: using \w+)? on (?:asyncjobs\.)?\w+)",
                       _cte_block(candidate, "candidates"))
    out.update({
        "claimed": len(claimed),
        "claim_scans": sorted(set(scans)),
        "claim_seq_scan_on_runs": any("Seq Scan on runs" in s for s in scans),
        "claim_exec_ms": _exec_ms(candidate),
        "complete_exec_ms": _exec_ms(completion),
        "claim_plan": candidate,
        "complete_plan": completion,
    })
    return out


def _notice(notices: list[str], marker: str) -> str:
    return next((n for n in notices if marker in n and "typeinfo_tree" not in n), "")


def _cte_block(plan: str, name: str) -> str:
    """The plan lines of one CTE (``CTE name`` up to the next node at its indentation)."""
    lines = plan.splitlines()
    for k, line in enumerate(lines):
        if line.strip() == f"CTE {name}":
            indent = len(line) - len(line.lstrip())
            block = [line]
            for nxt in lines[k + 1:]:
                if nxt.strip() and len(nxt) - len(nxt.lstrip()) <= indent:
                    break
                block.append(nxt)
            return "\n".join(block)
    return plan


def _exec_ms(plan: str) -> float | None:
    found = re.findall(r"duration: ([\d.]+) ms", plan)
    return float(found[0]) if found else None


RELATIONS_SQL = """
SELECT c.relname, pg_relation_size(c.oid) AS bytes
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'asyncjobs' AND c.relkind IN ('r', 'i')
   AND (c.relname LIKE 'runs%' OR c.relname LIKE 'run_events%')
 ORDER BY c.relname
"""


async def relation_sizes(conn: asyncpg.Connection) -> dict[str, int]:
    return {r["relname"]: r["bytes"] for r in await conn.fetch(RELATIONS_SQL)}


async def process_first(dsn: str, n: int, concurrency: int, max_seconds: float) -> dict[str, Any]:
    """Worker with concurrency C on a backlog; timed until n runs succeeded in the DB, or for
    at most ``max_seconds`` (then the rate is what succeeded by then: ``capped``)."""
    obs = await asyncpg.connect(dsn)
    log = _common.JobLog()
    log.expect(n)
    hooks.on_start = log.on_job
    await asyncio.sleep(1.2)
    stats0 = await _common.db_stats(obs)
    meter = _common.CpuMeter().start()
    t0 = time.perf_counter()
    worker = await start_worker(dsn, concurrency)
    capped = False
    try:
        try:
            await asyncio.wait_for(log.reached.wait(), max_seconds)
        except TimeoutError:
            capped = True

        async def done() -> bool:
            return capped or await count_succeeded(obs) >= n

        done_ok = await _common.wait_until(done, timeout=60)
        succeeded = min(n, await count_succeeded(obs))
        dt = time.perf_counter() - t0
        cpu = meter.stop()
    finally:
        await stop_worker(worker)
        hooks.on_start = _ignore
    starts = [i for _, i in log.starts]
    await asyncio.sleep(1.2)
    stats1 = await _common.db_stats(obs)
    await obs.close()
    return {"jobs": succeeded, "target": n, "capped": capped, "concurrency": concurrency,
            "seconds": round(dt, 3), "jobs_per_s": round(succeeded / dt, 1),
            "verified": bool(done_ok and len(set(starts)) == len(starts) > 0),
            "cpu": cpu, "db_per_job": _common.per_job(stats0, stats1, max(1, len(starts)))}


async def phase_growth(sizes: list[int], process_n: int, concurrency: int,
                       max_seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for size in sizes:
        dsn = await fresh(DB)
        loaded = await preload(dsn, size)
        conn = await asyncpg.connect(dsn)
        for table in ("runs", "run_events"):  # as autovacuum would have by then
            await conn.execute(f"VACUUM ANALYZE asyncjobs.{table}")
        sizes_before = await relation_sizes(conn)
        await conn.close()
        plans = await explain_claim(dsn, capacity=100)
        processed = await process_first(dsn, min(process_n, size), concurrency, max_seconds)
        out[str(size)] = {"backlog": size, "preload": loaded, "explain": plans,
                          "relation_bytes": sizes_before, "process": processed,
                          "verified": processed["verified"] and not plans.get("error")}
    return {"sizes": out, "verified": all(v["verified"] for v in out.values())}


# --------------------------------------------------------------------------- limits


async def phase_limits(n: int, concurrency: int, rounds: int) -> dict[str, Any]:
    """Process n runs with c=100 of a plain job, a keyed job and a rate-limited job that does
    not bind, interleaved over ``rounds`` (fresh database each); medians and ratios."""
    variants = {"plain": noop, "keyed": keyed_noop, "rated": rated_noop}
    rates: dict[str, list[float]] = {name: [] for name in variants}
    verified = True
    for r in range(rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in order:
            dsn = await fresh(DB)
            await preload(dsn, n, job=variants[name])
            got = await process_first(dsn, n, concurrency, 120.0)
            verified &= got["verified"] and not got["capped"]
            rates[name].append(got["jobs_per_s"])
    med = {name: statistics.median(v) for name, v in rates.items()}
    return {"n": n, "concurrency": concurrency, "rounds": rounds, "jobs_per_s": rates,
            "median": med, "keyed_ratio": round(med["keyed"] / med["plain"], 3),
            "rated_ratio": round(med["rated"] / med["plain"], 3),
            "loadavg": os.getloadavg(), "verified": verified}


# --------------------------------------------------------------------------- soak


def rss_kb() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process in KiB."""
    found: dict[str, int] = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                found[line.split(":")[0]] = int(line.split()[1])
    return found["VmRSS"], found["VmHWM"]


class _Counter:
    """Counts job starts without keeping them (a list of 100k starts would itself grow the
    RSS being measured by ~10 MiB)."""

    def __init__(self, target: int) -> None:
        self.count = 0
        self.target = target
        self.reached = asyncio.Event()

    def on_job(self, _i: int) -> None:
        self.count += 1
        if self.count >= self.target:
            self.reached.set()


async def phase_soak(runs: int, concurrency: int) -> dict[str, Any]:
    dsn = await fresh(DB)
    child = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "preload", "--dsn", dsn, "--n", str(runs),
        stdout=asyncio.subprocess.PIPE)
    out, _ = await child.communicate()
    loaded = json.loads(out.decode().strip().splitlines()[-1])
    # no ANALYZE here, unlike growth: the plan is whatever the statistics of the moment give
    plan_start = await explain_claim(dsn, capacity=concurrency)
    obs = await asyncpg.connect(dsn)
    counter = _Counter(runs)
    hooks.on_start = counter.on_job
    gc.collect()
    objects0 = len(gc.get_objects())
    samples: list[tuple[float, int, int]] = []  # (s since start, runs started, RSS KiB)
    t0 = time.perf_counter()

    async def sample() -> None:
        while True:
            samples.append((round(time.perf_counter() - t0, 1), counter.count, rss_kb()[0]))
            await asyncio.sleep(1.0)

    sampler = asyncio.create_task(sample())
    meter = _common.CpuMeter().start()
    worker = await start_worker(dsn, concurrency)
    try:
        await asyncio.wait_for(counter.reached.wait(), 1800)

        async def done() -> bool:
            return await count_succeeded(obs) >= runs

        done_ok = await _common.wait_until(done, timeout=120, interval=0.05)
        dt = time.perf_counter() - t0
        cpu = meter.stop()
        samples.append((round(time.perf_counter() - t0, 1), counter.count, rss_kb()[0]))
    finally:
        await stop_worker(worker)
        sampler.cancel()
        hooks.on_start = _ignore
    analyzed = await obs.fetchval(
        "SELECT last_autoanalyze IS NOT NULL FROM pg_stat_user_tables"
        " WHERE schemaname = 'asyncjobs' AND relname = 'runs'")
    await obs.close()
    gc.collect()
    objects1 = len(gc.get_objects())
    rss = [s[2] for s in samples]
    # growth over the second half, per 10k runs (a leak shows as a steady positive slope)
    half = [s for s in samples if s[1] >= runs // 2]
    slope = None
    if len(half) >= 3 and half[-1][1] > half[0][1]:
        slope = round((half[-1][2] - half[0][2]) / 1024 / ((half[-1][1] - half[0][1]) / 10_000), 3)
    return {
        "runs": runs, "concurrency": concurrency, "preload": loaded,
        "seconds": round(dt, 1), "jobs_per_s": round(runs / dt, 1),
        "rss_mib": {"start": round(rss[0] / 1024, 1), "peak": round(max(rss) / 1024, 1),
                    "end": round(rss[-1] / 1024, 1),
                    "at_half": round(half[0][2] / 1024, 1) if half else None},
        "rss_mib_per_10k_runs_second_half": slope,
        "gc_objects": {"before": objects0, "after": objects1},
        "executed": counter.count,
        "claim_scans_at_start": [
            x for x in plan_start.get("claim_scans", []) if x.endswith(" runs")],
        "autoanalyzed_during_soak": analyzed,
        "samples": samples, "verified": bool(done_ok and counter.count == runs), "cpu": cpu,
    }


# --------------------------------------------------------------------------- driver


ALL_PHASES = ["run_async", "sse_lag", "growth", "soak", "limits"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("mode", nargs="?", default="bench",
                   choices=["bench", "serve-dashboard", "preload"], help=argparse.SUPPRESS)
    p.add_argument("--phases", default="run_async,sse_lag")
    p.add_argument("--run-async-calls", type=int, default=200)
    p.add_argument("--run-async-concurrency", type=int, default=10)
    p.add_argument("--sse-clients", type=int, default=100)
    p.add_argument("--sse-runs", type=int, default=100)
    p.add_argument("--sse-interval-ms", type=float, default=50.0)
    p.add_argument("--sse-views", nargs="?", const="browser", choices=["browser", "http"],
                   help="sse_lag: keep the dashboard's views open in headless Chromium "
                   "(browser, the default) or poll what they poll (http)")
    p.add_argument("--growth-sizes", default="10000,100000,1000000")
    p.add_argument("--growth-process", type=int, default=10_000)
    p.add_argument("--growth-concurrency", type=int, default=100)
    p.add_argument("--growth-max-seconds", type=float, default=120.0,
                   help="stop processing a backlog after this long (the row says 'capped')")
    p.add_argument("--soak-runs", type=int, default=100_000)
    p.add_argument("--soak-concurrency", type=int, default=100)
    p.add_argument("--limits-n", type=int, default=10_000)
    p.add_argument("--limits-rounds", type=int, default=3)
    p.add_argument("--json-out", default=None, help="append the one-line JSON summary here")
    p.add_argument("--verbose", action="store_true")
    # child modes
    p.add_argument("--dsn", default=None, help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--max-streams", type=int, default=128, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _brief(value: Any) -> Any:
    """A phase result without its bulky parts (plans, RSS samples), for --verbose."""
    if isinstance(value, dict):
        return {k: _brief(v) for k, v in value.items()
                if k not in ("samples", "claim_plan", "complete_plan")}
    return value


async def run_phases(args: argparse.Namespace) -> dict[str, Any]:
    phases = [x.strip() for x in args.phases.split(",") if x.strip()]
    unknown = set(phases) - set(ALL_PHASES)
    if unknown:
        raise SystemExit(f"unknown phases: {sorted(unknown)}")
    res: dict[str, Any] = {}

    def note(name: str, r: dict[str, Any]) -> None:
        res[name] = r
        if args.verbose:
            print(f"[asyncjobs-extra] {name}: {json.dumps(_brief(r))}", file=sys.stderr,
                  flush=True)

    if "run_async" in phases:
        note("run_async", await phase_run_async(args.run_async_calls, args.run_async_concurrency))
    if "sse_lag" in phases:
        note("sse_lag", await phase_sse_lag(args.sse_clients, args.sse_runs,
                                            args.sse_interval_ms / 1000, 10,
                                            views=args.sse_views))
    if "growth" in phases:
        sizes = [int(x) for x in args.growth_sizes.split(",") if x]
        note("growth", await phase_growth(sizes, args.growth_process, args.growth_concurrency,
                                          args.growth_max_seconds))
    if "soak" in phases:
        note("soak", await phase_soak(args.soak_runs, args.soak_concurrency))
    if "limits" in phases:
        note("limits", await phase_limits(args.limits_n, 100, args.limits_rounds))
    return res


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.mode == "serve-dashboard":
        asyncio.run(serve_dashboard(args.dsn, args.max_streams))
        return
    if args.mode == "preload":
        print(json.dumps(asyncio.run(preload(args.dsn, args.n))), flush=True)
        return
    started = time.time()
    res = asyncio.run(run_phases(args))
    line = json.dumps({
        "library": "asyncjobs-extra",
        "version": getattr(asyncjobs, "__version__", "0.1.0"),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "all_verified": all(v.get("verified", False) for v in res.values()),
        "started_at": round(started, 1),
        "elapsed_s": round(time.time() - started, 1),
        "phases": res,
    }, separators=(",", ":"))
    if args.json_out:
        with open(args.json_out, "a") as f:
            f.write(line + "\n")
    print(line, flush=True)


if __name__ == "__main__":
    main()
