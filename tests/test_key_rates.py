"""Per-key rate limits and per-key limits whose key a function computes, proven with real
worker processes and judged on the database clock (as tests/test_steps_keys.py does for
per-key concurrency and job rate limits, whose helpers these tests share).

Per-key rate: four workers run a hot key's long backlog and a few runs of other keys. For
every key, no window of the period holds more starts than the key's limit and the limit is
reached; the other keys start at once instead of waiting behind the hot key's backlog; the
same load without the per-key rate goes over the limit (so the check can fail).

Computed keys: four workers run a job keyed by ``tenant:region``; the most intervals open at
once per computed key equals the key limit, and goes over it without the key. Bad keys (an
exception, a non-str, too long, unstorable) and triggers that cannot compute the key are
typed errors with nothing written.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from asyncjobs import App, ConcurrencyKeyError, ConfigurationError, JobRef, ReasonCode
from tests.step_apps import (
    KEY_LIMIT,
    KEY_RATE,
    SIDE_DDL,
    fn_keyed,
    fn_keys_app,
    fn_unkeyed,
    key_rated,
    key_rates_app,
    key_unrated,
)
from tests.test_steps_keys import DEADLINE, _max_overlap, _start_worker, _stop, _until

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


def _most_in_a_window(starts: list[float], period: float) -> int:
    """The most starts any window [s, s + period) opening at a start holds."""
    return max(sum(1 for t in starts if s <= t < s + period) for s in starts)


# ---------------------------------------------------------------------- per-key rate limits

HOT_RUNS = 40  # ten windows of the hot key
COLD_KEYS = ("a", "b", "c")


async def _starts_by_key(conn: asyncpg.Connection, job: str) -> dict[str, list[float]]:
    rows = await conn.fetch(
        "SELECT args ->> 'tenant' AS tenant, started_at FROM asyncjobs.runs WHERE job = $1", job
    )
    starts: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        starts[row["tenant"]].append(row["started_at"].timestamp())
    return {key: sorted(times) for key, times in starts.items()}


async def _run_load(dsn: str, conn: asyncpg.Connection, job: Any) -> dict[str, list[float]]:
    """The hot key's backlog first, then each cold key's limit of runs, and their starts."""
    count, _ = KEY_RATE
    async with key_rates_app.client(dsn) as client:
        await client.trigger_many(job, [{"tenant": "hot", "n": n} for n in range(HOT_RUNS)])
        await client.trigger_many(
            job, [{"tenant": key, "n": n} for key in COLD_KEYS for n in range(count)]
        )
    total = HOT_RUNS + count * len(COLD_KEYS)
    await _until(
        conn, "SELECT count(*) FROM asyncjobs.runs WHERE status = 'succeeded'"
        f" AND job = '{job.name}'", total,
    )  # fmt: skip
    return await _starts_by_key(conn, job.name)


async def test_key_rate_limit_holds_per_key_across_four_workers(
    dsn: str, tmp_path: Path
) -> None:
    count, period = KEY_RATE
    # the default poll interval (1 s, twice the period): the hot key's starts on time show
    # the workers wake when its window allows (the wake row), not at their next poll
    workers = [
        _start_worker(dsn, "tests.step_apps:key_rates_app", tmp_path / f"w{n}.log",
                      "--poll-interval", "1", "--concurrency", "3")
        for n in range(4)
    ]  # fmt: skip
    conn = await asyncpg.connect(dsn)
    try:
        await _until(conn, "SELECT count(*) FROM asyncjobs.workers", 4)
        rated = await _run_load(dsn, conn, key_rated)
        hot_workers = await conn.fetchval(
            "SELECT count(DISTINCT e.data ->> 'worker') FROM asyncjobs.run_events e"
            " JOIN asyncjobs.runs r ON r.id = e.run_id WHERE e.kind = 'running'"
            " AND r.job = 'key_rated' AND r.args ->> 'tenant' = 'hot'"
        )
        unrated = await _run_load(dsn, conn, key_unrated)
    finally:
        _stop(workers)
        await conn.close()
    # every key: no window of the period holds more than the limit, and the limit is reached
    for key, starts in rated.items():
        assert _most_in_a_window(starts, period) == count, key
    # the hot key waited for its windows: (runs / count - 1) periods at best, and it was
    # shared by the workers (a run holds its slot half a period)
    hot = rated["hot"]
    best = (HOT_RUNS / count - 1) * period
    assert best - 0.01 <= hot[-1] - hot[0] < best + 1.5
    assert hot_workers > 1
    # the other keys were not held back behind the hot key's backlog (triggered before them)
    cold_last = max(rated[key][-1] for key in COLD_KEYS)
    assert cold_last - hot[0] < best / 3, (cold_last - hot[0], best)
    # the same load without the per-key rate goes over it: the check above can fail
    assert _most_in_a_window(unrated["hot"], period) > count


async def test_key_rate_limit_is_explained_and_spares_other_keys(dsn: str) -> None:
    app = App("key-rate-explained")

    @app.job(concurrency_key="tenant", key_rate_limit="1/m")
    async def per_tenant(tenant: str) -> str:
        return tenant

    async with app.worker(dsn, poll_interval=0.05), app.client(dsn) as client:
        first = await client.trigger_async(per_tenant, tenant="acme")
        assert await first.result(DEADLINE) == "acme"
        waiting = await client.trigger_async(per_tenant, tenant="acme")
        # another key starts at once, while acme's window is full
        assert await (await client.trigger_async(per_tenant, tenant="zeta")).result(DEADLINE)
        explained = await client.explain(waiting.id)
        assert explained.codes == [ReasonCode.RATE_LIMITED], explained
        (reason,) = explained.reasons
        started = (await first.get()).started_at
        assert started is not None
        assert reason.data["next_start_at"] == started + timedelta(minutes=1)
        assert (reason.data["kind"], reason.data["name"], reason.data["job"]) == (
            "key", "acme", "per_tenant"
        )
        assert "key 'acme' of job 'per_tenant'" in reason.message
        assert (await waiting.get()).status.value == "pending"


def test_key_rate_limits_are_declared_whole() -> None:
    app = App("bad-key-rates")

    async def job(tenant: str) -> None: ...

    with pytest.raises(ConfigurationError, match="go together"):
        app.job(key_rate_limit="1/s")(job)
    with pytest.raises(ConfigurationError, match="key_rate_limit"):
        app.job(concurrency_key="tenant", key_rate_limit="often")(job)
    with pytest.raises(ConfigurationError, match="argument's name or a function"):
        app.job(concurrency_key=5, key_concurrency=1)(job)  # type: ignore[call-overload]
    declared = app.job(concurrency_key="tenant", key_rate_limit=(3, timedelta(seconds=2)))(job)
    assert declared.key_limit is not None and declared.key_limit.rate is not None
    assert declared.key_limit.limit is None and declared.key_limit.rate.count == 3


# ---------------------------------------------------------------------- computed keys

async def test_computed_key_limit_holds_across_four_workers(dsn: str, tmp_path: Path) -> None:
    conn = await asyncpg.connect(dsn)
    await conn.execute(SIDE_DDL)
    workers = [
        _start_worker(dsn, "tests.step_apps:fn_keys_app", tmp_path / f"w{n}.log",
                      "--concurrency", "4")
        for n in range(4)
    ]  # fmt: skip
    # two keys share a tenant, two share a region: only the whole key counts
    pairs = [("a", "eu"), ("a", "us"), ("b", "eu")]
    try:
        async with fn_keys_app.client(dsn) as client:
            for job in (fn_keyed, fn_unkeyed):
                await client.trigger_many(
                    job,
                    [{"tenant": t, "region": r, "sleep_ms": 30} for t, r in pairs
                     for _ in range(20)],
                )  # fmt: skip
                await _until(
                    conn, "SELECT count(*) FROM asyncjobs.runs WHERE status = 'succeeded'"
                    f" AND job = '{job.name}'", 60,
                )  # fmt: skip
        rows = await conn.fetch("SELECT * FROM public.key_intervals")
        keys = await conn.fetch(
            "SELECT DISTINCT args ->> 'tenant' AS t, args ->> 'region' AS r, concurrency_key"
            " FROM asyncjobs.runs WHERE job = 'fn_keyed'"
        )
    finally:
        _stop(workers)
        await conn.close()
    assert {(k["t"], k["r"], k["concurrency_key"]) for k in keys} == {
        (t, r, f"{t}:{r}") for t, r in pairs
    }
    per: dict[tuple[str, str], list[tuple[datetime, datetime]]] = defaultdict(list)
    for row in rows:
        per[row["job"], row["tenant"]].append((row["started_at"], row["ended_at"]))
    for t, r in pairs:
        assert _max_overlap(per["fn_keyed", f"{t}:{r}"]) == KEY_LIMIT, (t, r)
    # the same load without the key goes over the limit: the check above can fail
    assert max(_max_overlap(per["fn_unkeyed", f"{t}:{r}"]) for t, r in pairs) > KEY_LIMIT


async def _run_count(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM asyncjobs.runs"))


async def test_bad_computed_keys_are_typed_and_write_nothing(dsn: str) -> None:
    app = App("bad-fn-keys")

    def key(args: Any) -> Any:
        if args.kind == "raise":
            raise LookupError("no region for this tenant")
        return {"int": 7, "long": "k" * 201, "max": "k" * 200, "nul": "a\x00b"}.get(
            args.kind, args.kind
        )

    @app.job(concurrency_key=key, key_concurrency=1)
    async def keyed(kind: str) -> str:
        return kind

    conn = await asyncpg.connect(dsn)
    try:
        async with app.client(dsn) as client:
            for kind, message in [
                ("raise", "raised LookupError: no region for this tenant"),
                ("int", "returned int, not a str"),
                ("long", "201 characters"),
                ("nul", "NUL"),
            ]:
                with pytest.raises(ConcurrencyKeyError, match=message) as caught:
                    await client.trigger_async(keyed, kind=kind)
                assert "job 'keyed'" in str(caught.value)
            with pytest.raises(ConcurrencyKeyError, match=r"item 1: .*raised LookupError"):
                await client.trigger_many(keyed, [{"kind": "ok"}, {"kind": "raise"}])
            assert await _run_count(conn) == 0
            # the longest key is stored whole
            run = await client.trigger_async(keyed, kind="max")
            assert await conn.fetchval(
                "SELECT concurrency_key FROM asyncjobs.runs WHERE id = $1", run.id
            ) == "k" * 200
    finally:
        await conn.close()


async def test_a_computed_key_is_never_left_out(dsn: str) -> None:
    """A client without the code cannot compute the key: the database refuses its runs. A
    retry keeps the repeated run's key; a schedule's runs get the function's key."""
    conn = await asyncpg.connect(dsn)
    try:
        # a worker of fn_keys_app registers the job, with no key field: a function's key
        async with fn_keys_app.worker(dsn, poll_interval=0.05):
            pass
        await conn.execute("UPDATE asyncjobs.jobs SET enabled = false")
        async with App("elsewhere").client(dsn) as client:
            args = {"tenant": "a", "region": "eu", "sleep_ms": 1}
            with pytest.raises(ConcurrencyKeyError, match="computes its concurrency key"):
                await client.trigger_async(JobRef("fn_keyed"), **args)
            with pytest.raises(ConcurrencyKeyError, match="from a client that has the code"):
                await client.trigger_many("fn_keyed", [args, args])
        assert await _run_count(conn) == 0
        async with fn_keys_app.client(dsn) as client:
            run = await client.trigger_async(fn_keyed, tenant="a", region="eu", sleep_ms=1)
            await client.cancel(run.id)
            again = await client.retry(run.id)
        keys = await conn.fetch(
            "SELECT concurrency_key FROM asyncjobs.runs WHERE id = ANY ($1)", [run.id, again.id]
        )
        assert [k["concurrency_key"] for k in keys] == ["a:eu", "a:eu"]
    finally:
        await conn.close()


async def test_scheduled_runs_get_the_computed_key(dsn: str) -> None:
    app = App("fn-key-schedule")

    @app.job(
        concurrency_key=lambda args: f"{args.tenant}/{args.n * 2}", key_concurrency=1,
        every=timedelta(milliseconds=100), schedule_args={"tenant": "acme", "n": 21},
    )  # fmt: skip
    async def ticking(tenant: str, n: int) -> None: ...

    conn = await asyncpg.connect(dsn)
    try:
        async with app.worker(dsn, poll_interval=0.05):
            await _until(
                conn, "SELECT count(*) > 0 FROM asyncjobs.runs WHERE trigger = 'schedule'", True
            )
        keys = await conn.fetch("SELECT DISTINCT concurrency_key FROM asyncjobs.runs")
    finally:
        await conn.close()
    assert [k["concurrency_key"] for k in keys] == ["acme/42"]

    # a key function that fails on the schedule's arguments fails where it is declared
    with pytest.raises(ConfigurationError, match=r"schedule 'broken'.*raised ZeroDivisionError"):
        app.job(
            name="broken", concurrency_key=lambda args: str(1 // args.n), key_concurrency=1,
            every=timedelta(seconds=1), schedule_args={"tenant": "x", "n": 0},
        )(ticking.function)  # fmt: skip


async def test_computed_keys_get_the_validated_arguments(dsn: str) -> None:
    """The key function sees what the job itself gets: validated values, typed."""
    app = App("typed-fn-keys")
    seen: list[Any] = []

    def key(args: Any) -> str:
        seen.append((args.when, args.n))
        return f"{args.when.year}-{args.n + 1}"

    @app.job(concurrency_key=key, key_concurrency=1)
    async def dated(when: datetime, n: int = 1) -> None: ...

    conn = await asyncpg.connect(dsn)
    try:
        async with app.client(dsn) as client:
            run = await client.trigger_json("dated", {"when": "2030-01-02T03:04:05Z"})
        stored = await conn.fetchval(
            "SELECT concurrency_key FROM asyncjobs.runs WHERE id = $1", run.id
        )
    finally:
        await conn.close()
    assert stored == "2030-2"
    assert isinstance(seen[0][0], datetime) and seen[0][1] == 1


async def test_key_rate_windows_follow_the_test_clock(dsn: str) -> None:
    """With a test clock the windows are exact: a used-up key waits one period to the
    second, the wake row says so, and other keys start meanwhile."""
    from asyncjobs.backends.base import WorkerInfo
    from asyncjobs.testing import TestClock

    app = App("key-rate-clock")

    @app.job(concurrency_key="tenant", key_rate_limit="2/h")
    async def hourly(tenant: str, n: int) -> None: ...

    clock = TestClock()
    async with app.client(dsn, clock=clock) as client:
        backend = client.backend
        await backend.register_definitions(*app.definitions())
        await backend.register_worker(WorkerInfo("w1", "host", 1, ("default",), ("hourly",), 9))

        async def claim() -> tuple[list[str], float | None]:
            records = await backend.claim("w1", ["default"], ["hourly"], 9, 60.0)
            keys = sorted(f"{r.concurrency_key}{r.args['n']}" for r in records)
            return keys, getattr(records, "wake_in", None)

        await client.trigger_many(hourly, [{"tenant": "a", "n": n} for n in range(3)])
        assert (await claim())[0] == ["a0", "a1"]
        # a's window is used up: its third run waits, and a claim that finds nothing says
        # when a's next start is allowed
        assert await claim() == ([], 3600.0)
        await client.trigger_async(hourly, tenant="b", n=0)
        assert (await claim())[0] == ["b0"]
        clock.advance(timedelta(minutes=59, seconds=59))
        assert await claim() == ([], 1.0)
        clock.advance(timedelta(seconds=1))
        assert (await claim())[0] == ["a2"]
