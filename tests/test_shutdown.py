"""Graceful shutdown of a worker process: SIGTERM stops claiming, lets running jobs finish
within ``--drain-timeout``, then cancels the rest and hands their runs back as pending (trigger
``restart``, no attempt used up); a second signal stops at once. The process exits 0."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from asyncjobs import Client, RunStatus, Trigger
from tests.fault_apps import nap, proc_app
from tests.faults import WorkerProcess, eventually, registered, start_worker

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture
async def client(dsn: str) -> AsyncIterator[Client]:
    async with proc_app.client(dsn) as opened:
        yield opened


async def _worker_running(
    dsn: str, client: Client, tmp_path: Path, drain_timeout: float, seconds: float
) -> tuple[WorkerProcess, int]:
    """A worker process (concurrency 2) running ``nap(seconds)``; returns it and the run id."""
    worker = start_worker(
        "tests.fault_apps:proc_app", dsn, "w", tmp_path,
        "--concurrency", "2", "--drain-timeout", str(drain_timeout), "--poll-interval", "0.1",
    )  # fmt: skip
    conn = await asyncpg.connect(dsn)
    try:
        await eventually(lambda: registered(conn, "w"), what="worker up")
    finally:
        await conn.close()
    run = await client.trigger_async(nap, seconds=seconds)

    async def running() -> bool:
        return (await run.get()).status is RunStatus.RUNNING

    await eventually(running)
    return worker, run.id


async def _said(worker: WorkerProcess, text: str) -> None:
    async def check() -> bool:
        return text in worker.output()

    await eventually(check, what=f"log line {text!r}")


async def test_sigterm_lets_a_job_finish_within_the_drain_timeout(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    worker, run_id = await _worker_running(dsn, client, tmp_path, drain_timeout=20, seconds=1.0)
    try:
        worker.proc.send_signal(signal.SIGTERM)
        await _said(worker, "stopping gracefully")
        # claiming has stopped: a slot is free, yet this run is not taken
        later = await client.trigger_async(nap, seconds=0.01)
        assert await worker.exited(15) == 0, worker.output()
        finished = await client.get_run(run_id)
        assert (finished.status, finished.attempt) == (RunStatus.SUCCEEDED, 1)
        waiting = await later.get()
        assert (waiting.status, waiting.attempt) == (RunStatus.PENDING, 0)
        assert "handed_back=0" in worker.output()
    finally:
        worker.stop_now()


async def test_a_job_outlasting_the_drain_timeout_is_handed_back_without_using_an_attempt(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    worker, run_id = await _worker_running(dsn, client, tmp_path, drain_timeout=0.5, seconds=60)
    try:
        worker.proc.send_signal(signal.SIGTERM)
        assert await worker.exited(10) == 0, worker.output()
        record = await client.get_run(run_id)
        # nap has no retries (max_attempts 1): a hand-back is neither a retry nor a restart
        assert (record.status, record.trigger) == (RunStatus.PENDING, Trigger.RESTART)
        assert (record.attempt, record.retries, record.restarts) == (1, 0, 0)
        assert record.max_attempts == 1
        assert record.worker_id is None and record.errors == []
        assert [e.kind for e in await client.get_events(run_id)][-1] == "pending"
        assert "handed_back=1" in worker.output()
        # the next claim is attempt 2 with no retry used: the run still gets its one real try
        (claimed,) = await client.backend.claim("next", ["default"], ["nap"], 1, 30)
        assert (claimed.id, claimed.attempt, claimed.retries) == (run_id, 2, 0)
    finally:
        worker.stop_now()


async def test_a_second_signal_stops_at_once(dsn: str, client: Client, tmp_path: Path) -> None:
    worker, run_id = await _worker_running(dsn, client, tmp_path, drain_timeout=60, seconds=60)
    try:
        worker.proc.send_signal(signal.SIGTERM)
        await _said(worker, "stopping gracefully")
        worker.proc.send_signal(signal.SIGINT)
        # far sooner than the 60 s drain timeout
        assert await worker.exited(5) == 0, worker.output()
        assert "second signal: stopping at once" in worker.output()
        record = await client.get_run(run_id)
        # drain, then abort: handed back without spending a retry or a restart
        assert (record.status, record.trigger) == (RunStatus.PENDING, Trigger.RESTART)
        assert (record.retries, record.restarts, record.max_attempts) == (0, 0, 1)
    finally:
        worker.stop_now()
