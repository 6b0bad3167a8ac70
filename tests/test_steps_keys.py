"""Durable children and per-key limits, proven with real worker processes.

Durable children: a parent triggers three children and ends after the second finished — by
raising (a retry) or by SIGKILLing its own worker process (a restart by the other worker once
the lease expired). Side effects are rows the children write from the worker processes; each
child must have written exactly one, and the parent's retry must get the first two back.

Per-key limits: four worker processes run a keyed job; the most intervals (database clock)
open at once per key must equal the key limit, and the same load without the limit must go
over it (so the check can fail).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from datetime import datetime, timedelta
from pathlib import Path

import anyio
import asyncpg
import pytest

from asyncjobs import App, Client, ConfigurationError, Context, Run, StepMismatch
from asyncjobs.steps import check_step, step_keys
from tests.step_apps import (
    KEY_LIMIT,
    RATE,
    RECORD_DSN_ENV,
    SIDE_DDL,
    close_recording_pool,
    hot_or_not,
    keyed,
    keys_app,
    parent,
    rated,
    rates_app,
    steps_app,
    unkeyed,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 40.0


def _start_worker(dsn: str, app: str, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "asyncjobs", "worker", app, "--dsn", dsn,
        "--poll-interval", "0.05", "--drain-timeout", "5", *extra,
    ]  # fmt: skip
    with log.open("wb") as out:
        return subprocess.Popen(
            command, cwd=ROOT, env={**os.environ, RECORD_DSN_ENV: dsn},
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


def _stop(workers: list[subprocess.Popen[bytes]]) -> None:
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    for worker in workers:
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


async def _until(conn: asyncpg.Connection, query: str, expected: object) -> None:
    deadline = time.monotonic() + DEADLINE
    while (value := await conn.fetchval(query)) != expected:
        assert time.monotonic() < deadline, f"{query!r} is {value!r}, not {expected!r}"
        await anyio.sleep(0.05)


# ---------------------------------------------------------------------- durable children

async def test_children_of_a_failed_or_killed_parent_run_once(dsn: str, tmp_path: Path) -> None:
    conn = await asyncpg.connect(dsn)
    await conn.execute(SIDE_DDL)
    short = ("--lease", "2", "--heartbeat-interval", "0.3", "--sweep-interval", "0.3")
    workers = [
        _start_worker(dsn, "tests.step_apps:steps_app", tmp_path / f"w{n}.log", *short)
        for n in range(2)
    ]
    try:
        async with steps_app.client(dsn) as client:
            for crash in ("raise", "kill"):
                run = await client.trigger_async(parent, crash=crash)
                assert await run.result(DEADLINE) == [10, 20, 30]
                record = await run.get()
                if crash == "raise":
                    assert (record.retries, record.restarts) == (1, 0)
                else:
                    assert (record.retries, record.restarts) == (0, 1)
                # the parent ran twice; every child ran exactly once
                effects = await conn.fetch(
                    "SELECT s.job, s.n FROM public.side_effects s JOIN asyncjobs.runs r"
                    " ON r.id = s.run_id WHERE r.id = $1 OR r.parent_run_id = $1", run.id,
                )  # fmt: skip
                counts = Counter((e["job"], e["n"]) for e in effects)
                assert counts == {("parent", 0): 2, ("child", 1): 1, ("child", 2): 1,
                                  ("child", 3): 1}, crash  # fmt: skip
                children = await conn.fetch(
                    "SELECT step_key, attempt FROM asyncjobs.runs WHERE parent_run_id = $1"
                    " ORDER BY id", run.id,
                )  # fmt: skip
                assert [(c["step_key"], c["attempt"]) for c in children] == [
                    ("#1", 1), ("#2", 1), ("#3", 1)
                ]
                # the trace tree (every run of the root) holds each child once
                tree = await conn.fetchval(
                    "SELECT count(*) FROM asyncjobs.runs WHERE root_run_id = $1", run.id
                )
                assert tree == 4
        assert sum(w.poll() == -signal.SIGKILL for w in workers) == 1
    finally:
        _stop(workers)
        await conn.close()


async def test_a_step_holding_another_job_is_a_mismatch(dsn: str) -> None:
    app = App("mismatch")
    seen: list[StepMismatch] = []

    @app.job
    async def one() -> int:
        return 1

    @app.job
    async def two() -> int:
        return 2

    @app.job(retries=1, backoff_base=0.01, backoff_cap=0.01)
    async def changes(ctx: Context) -> int:
        if ctx.attempt == 1:
            await one.options(step="pay").run_async()
            raise RuntimeError("again")
        try:
            return await two.options(step="pay").run_async()
        except StepMismatch as exc:
            seen.append(exc)
            raise

    async with app.worker(dsn, poll_interval=0.05), app.client(dsn) as client:
        run = await client.trigger_async(changes)
        outcome = await run.wait(DEADLINE)
    assert not outcome.ok
    (error,) = seen
    assert (error.step, error.stored_job, error.requested_job) == ("pay", "one", "two")


async def test_rerun_failed_triggers_a_new_child_at_the_step(dsn: str) -> None:
    app = App("rerun")
    calls: list[int] = []

    @app.job
    async def flaky(n: int) -> int:
        calls.append(n)
        if len(calls) == 1:
            raise RuntimeError("first child fails")
        return n

    @app.job(retries=2, backoff_base=0.01, backoff_cap=0.01)
    async def outer(rerun: bool) -> int:
        return await flaky.options(step="f", rerun_failed=rerun).run_async(n=5)

    async with app.worker(dsn, poll_interval=0.05), app.client(dsn) as client:
        stuck = await client.trigger_async(outer, rerun=False)
        assert not (await stuck.wait(DEADLINE)).ok
        # the failed child at the step is reused on every retry: it ran once, all failed
        assert calls == [5]
        fixed = await client.trigger_async(outer, rerun=True)
        assert await fixed.result(DEADLINE) == 5
    assert calls == [5, 5]


def test_step_names_and_keys() -> None:
    assert step_keys(None, 3, 2) == ["#3", "#4"]
    assert step_keys("charge", 0, 1) == ["charge"]
    assert step_keys("charge", 0, 2) == ["charge#1", "charge#2"]
    for bad in ("", "a#b", "x" * 181, "nul\x00", 7):
        with pytest.raises(ConfigurationError):
            check_step(bad)
    with pytest.raises(ConfigurationError):
        parent.options(step="#1")


# ---------------------------------------------------------------------- per-key limits

def _max_overlap(intervals: list[tuple[datetime, datetime]]) -> int:
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    open_now = peak = 0
    for _, step in edges:
        open_now += step
        peak = max(peak, open_now)
    return peak


async def test_key_limit_holds_across_four_workers(dsn: str, tmp_path: Path) -> None:
    conn = await asyncpg.connect(dsn)
    await conn.execute(SIDE_DDL)
    workers = [
        _start_worker(dsn, "tests.step_apps:keys_app", tmp_path / f"w{n}.log", "--concurrency", "4")
        for n in range(4)
    ]
    tenants = ["a", "b", "c"]
    try:
        async with keys_app.client(dsn) as client:
            for job in (keyed, unkeyed):
                await client.trigger_many(
                    job, [{"tenant": t, "sleep_ms": 30} for t in tenants for _ in range(24)]
                )
                await _until(
                    conn, "SELECT count(*) FROM asyncjobs.runs WHERE status = 'succeeded'"
                    f" AND job = '{job.name}'", 72,
                )  # fmt: skip
        rows = await conn.fetch("SELECT * FROM public.key_intervals")
    finally:
        _stop(workers)
        await conn.close()
    per: dict[tuple[str, str], list[tuple[datetime, datetime]]] = defaultdict(list)
    for row in rows:
        per[row["job"], row["tenant"]].append((row["started_at"], row["ended_at"]))
    for tenant in tenants:
        assert _max_overlap(per["keyed", tenant]) == KEY_LIMIT, tenant
    # the same load without the limit goes over it: the check above can fail
    assert max(_max_overlap(per["unkeyed", t]) for t in tenants) > KEY_LIMIT


async def test_a_hot_key_does_not_hold_other_keys_back(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(RECORD_DSN_ENV, dsn)
    conn = await asyncpg.connect(dsn)
    await conn.execute(SIDE_DDL)
    try:
        async with keys_app.client(dsn) as client:
            await client.trigger_many(
                hot_or_not, [{"tenant": "hot", "sleep_ms": 20} for _ in range(1000)]
            )
            await client.trigger_many(
                hot_or_not,
                [{"tenant": f"k{k}", "sleep_ms": 5} for k in range(10) for _ in range(10)],
            )
            async with keys_app.worker(dsn, concurrency=12, poll_interval=0.05):
                await _until(
                    conn, "SELECT count(*) FROM public.key_intervals WHERE tenant <> 'hot'", 100
                )
                hot_done = await conn.fetchval(
                    "SELECT count(*) FROM public.key_intervals WHERE tenant = 'hot'"
                )
                # the rest of the backlog is of no interest: stop quickly
                await conn.execute("UPDATE asyncjobs.jobs SET enabled = false")
    finally:
        await close_recording_pool()
        await conn.close()
    # behind a blocked head of line the others would wait for all 1,000 hot runs (20 s)
    assert hot_done < 500, hot_done


def test_key_limit_is_declared_whole() -> None:
    app = App("bad-keys")

    async def job(tenant: str) -> None: ...

    with pytest.raises(ConfigurationError, match="go together"):
        app.job(concurrency_key="tenant")(job)
    with pytest.raises(ConfigurationError, match="not one of its parameters"):
        app.job(concurrency_key="other", key_concurrency=1)(job)
    with pytest.raises(ConfigurationError, match="positive"):
        app.job(concurrency_key="tenant", key_concurrency=0)(job)


# ---------------------------------------------------------------------- rate limits

async def test_rate_limit_holds_across_four_workers(dsn: str, tmp_path: Path) -> None:
    count, period = RATE
    runs = 6 * count
    # the default poll interval (1 s, twice the period): starts on time show the workers wake
    # when the window allows, not at their next poll. Concurrency 2 with runs that hold their
    # slot half a period: one worker cannot take a whole window, so the limit is shared (else
    # the first worker to wake could take every window's starts alone)
    workers = [
        _start_worker(dsn, "tests.step_apps:rates_app", tmp_path / f"w{n}.log",
                      "--poll-interval", "1", "--concurrency", "2")
        for n in range(4)
    ]
    conn = await asyncpg.connect(dsn)
    try:
        await _until(conn, "SELECT count(*) FROM asyncjobs.workers", 4)
        async with rates_app.client(dsn) as client:
            await client.trigger_many(rated, [{"n": n} for n in range(runs)])
        await _until(
            conn, "SELECT count(*) FROM asyncjobs.runs WHERE status = 'succeeded'", runs
        )
        starts = sorted(
            row["started_at"].timestamp()
            for row in await conn.fetch("SELECT started_at FROM asyncjobs.runs")
        )
        workers_used = await conn.fetchval(
            "SELECT count(DISTINCT data ->> 'worker') FROM asyncjobs.run_events"
            " WHERE kind = 'running'"
        )
    finally:
        _stop(workers)
        await conn.close()
    # every window [s, s + period) opening at a start holds at most `count` starts
    per_window = [sum(1 for t in starts if s <= t < s + period) for s in starts]
    assert max(per_window) == count
    # the limit binds (otherwise all would start at once) and the waiting runs start when the
    # window allows: (runs / count - 1) periods at best; without the wake-up the 1 s polls
    # would stretch that to about twice as long
    best = (runs / count - 1) * period
    assert best - 0.01 <= starts[-1] - starts[0] < best + 1.5
    assert workers_used > 1


def test_rate_limits_are_checked() -> None:
    from asyncjobs.rates import RateLimit

    assert RateLimit.parse("10/s", "j") == RateLimit(10, timedelta(seconds=1))
    assert RateLimit.parse("3/250ms", "j") == RateLimit(3, timedelta(milliseconds=250))
    assert RateLimit.parse("100/m", "j") == RateLimit(100, timedelta(minutes=1))
    assert RateLimit.parse((5, timedelta(hours=1)), "j") == RateLimit(5, timedelta(hours=1))
    for bad in ("10", "0/s", "10/y", "1/0s", (1, 2), (True, timedelta(seconds=1))):
        with pytest.raises(ConfigurationError):
            RateLimit.parse(bad, "j")  # type: ignore[arg-type]


# ---------------------------------------------------------------------- explain

async def test_explain_names_key_limits_rates_and_reused_children(dsn: str) -> None:
    import asyncio

    app = App("explained")
    release = asyncio.Event()

    @app.job(concurrency_key="tenant", key_concurrency=1)
    async def per_tenant(tenant: str) -> None:
        await release.wait()

    @app.job(rate_limit="1/m")
    async def rare() -> None: ...

    @app.job
    async def leaf(n: int) -> int:
        if n == 2:
            await release.wait()
        return n

    @app.job(retries=1, backoff_base=0.01, backoff_cap=0.01)
    async def tree(ctx: Context) -> int:
        first = await leaf.run_async(n=1)
        if ctx.attempt == 1:
            raise RuntimeError("once more")
        return first + await leaf.run_async(n=2)

    async with app.worker(dsn, concurrency=8, poll_interval=0.05), app.client(dsn) as client:
        holder = await client.trigger_async(per_tenant, tenant="acme")
        waiting = await client.trigger_async(per_tenant, tenant="acme")
        other = await client.trigger_async(per_tenant, tenant="zeta")
        done = await client.trigger_async(rare)
        await done.result(DEADLINE)
        limited = await client.trigger_async(rare)
        parent_run = await client.trigger_async(tree)
        conn = await asyncpg.connect(dsn)
        try:
            await _until(conn, f"SELECT status::text FROM asyncjobs.runs WHERE id = {other.id}",
                         "running")  # fmt: skip
            await _until(conn, f"SELECT status::text FROM asyncjobs.runs WHERE id = {holder.id}",
                         "running")  # fmt: skip
            await _until(
                conn, "SELECT count(*) FROM asyncjobs.runs WHERE job = 'leaf'"
                " AND args ->> 'n' = '2' AND status = 'running'", 1,
            )  # fmt: skip
        finally:
            await conn.close()
        try:
            await _explained(client, holder.id, waiting.id, done, limited.id, parent_run.id)
        finally:
            release.set()
        assert await parent_run.result(DEADLINE) == 3


async def _explained(
    client: Client, holder: int, waiting: int, done: Run[None], limited: int, parent_run: int
) -> None:
    from asyncjobs import ReasonCode

    key = await client.explain(waiting)
    assert key.codes == [ReasonCode.KEY_LIMIT_FULL], key
    (reason,) = key.reasons
    assert [h.run_id for h in reason.data["holders"]] == [holder]
    assert reason.data["key"] == "acme" and "acme" in reason.message

    rate = await client.explain(limited)
    assert rate.codes == [ReasonCode.RATE_LIMITED], rate
    started = (await done.get()).started_at
    assert started is not None
    assert rate.reasons[0].data["next_start_at"] == started + timedelta(minutes=1)

    reused = await client.explain(parent_run)
    assert ReasonCode.REUSED_CHILDREN in reused.codes, reused
    children = await client.get_runs(parent_run_id=parent_run)
    ids = sorted(r.id for r in children.runs)
    data = next(r.data for r in reused.reasons if r.code is ReasonCode.REUSED_CHILDREN)
    assert len(ids) == 2 and data["children"] == ids[:1]


async def test_by_name_triggers_get_the_key_from_the_stored_field(dsn: str) -> None:
    from asyncjobs import JobRef

    conn = await asyncpg.connect(dsn)
    try:
        # a worker of keys_app stored the key field; a caller without the code triggers
        async with keys_app.worker(dsn, poll_interval=0.05):
            pass
        async with App("elsewhere").client(dsn) as client:
            await conn.execute("UPDATE asyncjobs.jobs SET enabled = false")
            run = await client.trigger_async(JobRef("keyed"), tenant="t-9", sleep_ms=1)
            many = await client.trigger_many("keyed", [{"tenant": "acme", "sleep_ms": 1}])
        keys = await conn.fetch(
            "SELECT id, concurrency_key FROM asyncjobs.runs WHERE id = ANY ($1) ORDER BY id",
            [run.id, many[0].id],
        )
    finally:
        await conn.close()
    assert [k["concurrency_key"] for k in keys] == ["t-9", "acme"]
