"""Backpressure (issue 17): a worker counts the runs whose completion is not stored yet.

A slot frees when its job returns, but the run stays the worker's until its completion is
written. While completions are slow or failing the worker must stop claiming once
``concurrency + completion_backlog`` runs are held, and its heartbeat must carry only those.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg
import pytest

from asyncjobs import App, ConfigurationError, Worker
from asyncjobs.backends.base import Completion, Heartbeat
from asyncjobs.errors import DatabaseUnavailable

pytestmark = pytest.mark.anyio

FAST = {"poll_interval": 0.05, "sweep_interval": 0.5, "heartbeat_interval": 0.2, "lease": 10.0}
RUNS = 40
CONCURRENCY, BACKLOG = 5, 3


async def eventually(check: Callable[[], Awaitable[bool] | bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        outcome = check()
        if await outcome if isinstance(outcome, Awaitable) else outcome:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.02)


class HeldCompletions:
    """Wraps a worker's backend: completions wait for ``release`` (``slow``) or fail as if
    the database were away until then (``failing``); heartbeats are recorded."""

    def __init__(self, worker: Worker, how: str) -> None:
        self.release = asyncio.Event()
        self.beats: list[int] = []
        self._how = how
        self._complete = worker.backend.complete
        self._heartbeat = worker.backend.heartbeat
        worker.backend.complete = self.complete  # type: ignore[method-assign]
        worker.backend.heartbeat = self.heartbeat  # type: ignore[method-assign]

    async def complete(self, worker_id: str, completions: Sequence[Completion]) -> set[int]:
        if self._how == "slow":
            await self.release.wait()
        elif not self.release.is_set():
            raise DatabaseUnavailable("completions fail in this test")
        return await self._complete(worker_id, completions)

    async def heartbeat(
        self, worker_id: str, runs: Sequence[tuple[int, int]], lease_seconds: float
    ) -> Heartbeat:
        self.beats.append(len(runs))
        return await self._heartbeat(worker_id, runs, lease_seconds)


def _app() -> tuple[App, Any]:
    app = App("t")

    @app.job
    async def noop(i: int) -> int:
        return i

    return app, noop


async def _count(dsn: str, status: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM asyncjobs.runs WHERE status = $1", status
        )
        return count
    finally:
        await conn.close()


@pytest.mark.parametrize("how", ["slow", "failing"])
async def test_worker_stops_claiming_while_completions_are_not_stored(dsn: str, how: str) -> None:
    app, noop = _app()
    bound = CONCURRENCY + BACKLOG
    async with app.client(dsn) as client:
        await client.trigger_many(noop, [{"i": i} for i in range(RUNS)])
        worker = app.worker(dsn, concurrency=CONCURRENCY, completion_backlog=BACKLOG, **FAST)
        held = HeldCompletions(worker, how)
        async with worker:
            try:
                # free slots but a full backlog: the claim loop waits instead of claiming
                await eventually(lambda: worker.stats.throttled > 0, timeout=10)
                assert worker.held == bound
                assert await _count(dsn, "running") == bound
                # a heartbeat sent meanwhile keeps exactly the held runs alive
                beats = len(held.beats)
                await eventually(lambda: len(held.beats) > beats)
                assert held.beats[-1] == bound
                assert await _count(dsn, "running") == bound  # still nothing more claimed
            finally:
                held.release.set()  # also on failure: the worker could not drain otherwise
            await eventually(lambda: _all_succeeded(dsn))
        assert worker.stats.held_peak == bound
        assert max(held.beats) <= bound
        assert worker.stats.succeeded == RUNS


async def _all_succeeded(dsn: str) -> bool:
    return await _count(dsn, "succeeded") == RUNS


async def test_fast_completions_do_not_throttle_a_light_load(dsn: str) -> None:
    """Completions stored at once: the backlog never fills with fewer runs than slots."""
    app, noop = _app()
    async with app.client(dsn) as client:
        await client.trigger_many(noop, [{"i": i} for i in range(3)])
        async with app.worker(dsn, concurrency=CONCURRENCY, **FAST) as worker:
            await eventually(lambda: _count_is(dsn, "succeeded", 3))
        assert worker.stats.throttled == 0
        assert worker.stats.held_peak <= 3
        assert worker.completion_backlog == CONCURRENCY  # the default


async def _count_is(dsn: str, status: str, expected: int) -> bool:
    return await _count(dsn, status) == expected


def test_completion_backlog_must_be_positive() -> None:
    app, _ = _app()
    with pytest.raises(ConfigurationError, match="completion_backlog"):
        Worker(app, "postgresql://unused", completion_backlog=0)


def test_the_cli_flag_reaches_the_worker(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``asyncjobs worker --completion-backlog N`` builds its Worker with N (default:
    ``--concurrency``); a bad N is the Worker's typed error, printed, exit code 1."""
    from asyncjobs.__main__ import main

    built: list[tuple[int, int]] = []

    async def run(self: Worker) -> None:  # the constructed worker, not started
        built.append((self.concurrency, self.completion_backlog))

    monkeypatch.setattr(Worker, "run", run)
    base = ["worker", "tests.test_retention:app", "--dsn", "postgresql://unused",
            "--concurrency", "4"]  # fmt: skip
    assert main([*base, "--completion-backlog", "32"]) == 0
    assert main(base) == 0
    assert built == [(4, 32), (4, 4)]
    assert main([*base, "--completion-backlog", "0"]) == 1
    assert "completion_backlog must be at least 1" in capsys.readouterr().err
