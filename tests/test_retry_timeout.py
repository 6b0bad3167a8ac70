"""Retries with exponential backoff and full jitter, ``retry_on``, and timeouts that follow the
retry policy. Delays are read from the run events (database clock), not from the worker."""

from __future__ import annotations

import asyncio
import random
import statistics
from datetime import datetime

import pytest

from asyncjobs import App, Context, RetryPolicy, RunFailed, RunStatus, Trigger

pytestmark = pytest.mark.anyio

FAST = {"poll_interval": 0.05, "heartbeat_interval": 0.5, "lease": 10.0}
WAIT = 20.0


def _ceiling(policy: RetryPolicy, failed_attempt: int) -> float:
    return min(policy.backoff_cap, policy.backoff_base * 2.0 ** (failed_attempt - 1))


def test_backoff_is_full_jitter_under_an_exponential_ceiling_with_a_cap() -> None:
    policy = RetryPolicy(retries=10, backoff_base=0.5, backoff_cap=6.0)
    rng = random.Random(4)
    assert [_ceiling(policy, n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 6.0, 6.0]
    for attempt in range(1, 11):
        ceiling = _ceiling(policy, attempt)
        delays = [policy.delay(attempt, rng) for _ in range(4000)]
        assert all(0 <= d <= ceiling for d in delays)
        # full jitter: spread over the whole range, not bunched near the ceiling
        assert min(delays) < 0.02 * ceiling and max(delays) > 0.98 * ceiling
        assert abs(statistics.fmean(delays) - ceiling / 2) < 0.05 * ceiling
    assert policy.delay(1000) <= 6.0  # no overflow far past the cap


async def test_retries_follow_the_backoff_schedule_and_keep_every_error(dsn: str) -> None:
    app = App("retries")

    @app.job(retries=4, backoff_base=0.1, backoff_cap=0.25)
    async def always_fails(ctx: Context) -> None:
        raise RuntimeError(f"attempt {ctx.attempt} failed")

    async with app.worker(dsn, **FAST), app.client(dsn) as client:
        run = await client.trigger_async(always_fails)
        with pytest.raises(RunFailed):
            await run.result(WAIT)
        record = await run.get()
        events = await client.get_events(run.id)
    assert (record.status, record.attempt, record.max_attempts) == (RunStatus.FAILED, 5, 5)
    assert record.trigger is Trigger.RETRY
    assert [(e["attempt"], e["type"], e["message"]) for e in record.errors] == [
        (n, "RuntimeError", f"attempt {n} failed") for n in range(1, 6)
    ]
    assert all("in always_fails" in e["traceback"] for e in record.errors)
    assert record.error == record.errors[-1]

    retrying = [e for e in events if e.kind == "retrying"]
    starts = [e for e in events if e.kind == "running"]
    assert [e.data["attempt"] for e in retrying] == [1, 2, 3, 4]
    policy = always_fails.retry
    for failed, next_start in zip(retrying, starts[1:], strict=True):
        retry_at = datetime.fromisoformat(failed.data["retry_at"])
        # retry_at = (statement start) + delay; the event's clock is read a little later
        delay = (retry_at - failed.at).total_seconds()
        assert -0.05 <= delay <= _ceiling(policy, failed.data["attempt"]), failed.data
        assert next_start.at >= retry_at  # never claimed before its time


async def test_retry_on_exception_types_and_predicate(dsn: str) -> None:
    app = App("retry_on")
    seen: list[tuple[str, int]] = []

    @app.job(retries=3, backoff_base=0.01, retry_on=(ConnectionError,))
    async def by_type(ctx: Context, kind: str) -> int:
        seen.append((kind, ctx.attempt))
        if ctx.attempt == 1:
            raise ConnectionError("flaky") if kind == "transient" else ValueError("bad input")
        return ctx.attempt

    @app.job(retries=3, backoff_base=0.01, retry_on=lambda exc: "retry me" in str(exc))
    async def by_predicate(ctx: Context, message: str) -> int:
        if ctx.attempt == 1:
            raise RuntimeError(message)
        return ctx.attempt

    async with app.worker(dsn, **FAST), app.client(dsn) as client:
        assert await client.run_async(by_type, kind="transient") == 2
        with pytest.raises(RunFailed) as info:
            await client.run_async(by_type, kind="permanent")
        assert info.value.error_type == "ValueError"
        assert await client.run_async(by_predicate, message="please retry me") == 2
        with pytest.raises(RunFailed):
            await client.run_async(by_predicate, message="give up")
        failed = (await client.get_runs(status="failed")).runs
    # errors not accepted by retry_on fail the run at once, with attempts left unused
    assert sorted((r.job, r.attempt, r.max_attempts) for r in failed) == [
        ("by_predicate", 1, 4),
        ("by_type", 1, 4),
    ]
    assert seen == [("transient", 1), ("transient", 2), ("permanent", 1)]


async def test_timeout_fails_the_attempt_with_job_timeout_and_is_retried(dsn: str) -> None:
    app = App("timeouts")

    @app.job(timeout=0.2, retries=1, backoff_base=0.01)
    async def slow_first(ctx: Context) -> int:
        if ctx.attempt == 1:
            await asyncio.sleep(30)
        return ctx.attempt

    @app.job(timeout=0.2, retries=1, backoff_base=0.01)
    async def always_slow() -> None:
        await asyncio.sleep(30)

    async with app.worker(dsn, **FAST), app.client(dsn) as client:
        run = await client.trigger_async(slow_first)
        assert await run.result(WAIT) == 2
        record = await run.get()
        assert record.trigger is Trigger.RETRY
        assert [(e["attempt"], e["type"]) for e in record.errors] == [
            (1, "asyncjobs.errors.JobTimeout")
        ]
        assert "exceeded its timeout of 0.2 s" in record.errors[0]["message"]

        hopeless = await client.trigger_async(always_slow)
        with pytest.raises(RunFailed) as info:
            await hopeless.result(WAIT)
        assert info.value.error_type == "asyncjobs.errors.JobTimeout"
        record = await hopeless.get()
        assert [e["attempt"] for e in record.errors] == [1, 2]
        # each attempt was stopped at its timeout, not left to sleep
        assert record.duration is not None and record.duration < 5
