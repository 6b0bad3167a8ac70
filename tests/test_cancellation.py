"""Cancellation: a pending run never starts; a running one is stopped on its worker through
NOTIFY, or through the heartbeat when the notification is lost; ``ctx.cancel_requested`` tells
the job why it was cancelled; ``cascade=True`` takes the whole subtree and nothing else."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import asyncpg
import pytest

from asyncjobs import App, Context, RunCancelled, RunStatus, get_context
from tests.faults import eventually

pytestmark = pytest.mark.anyio

WAIT = 20.0


def _app() -> tuple[App, dict[int, bool], asyncio.Event]:
    """An app whose ``hold`` job waits until cancelled and records ``ctx.cancel_requested``."""
    app = App("cancel")
    seen: dict[int, bool] = {}
    started = asyncio.Event()

    @app.job
    async def hold(ctx: Context) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            seen[ctx.run_id] = ctx.cancel_requested
            raise

    return app, seen, started


async def test_cancel_pending_run_never_starts(dsn: str) -> None:
    app, seen, started = _app()
    async with app.client(dsn) as client:
        run = await client.trigger_async(app.get_job("hold"))
        waiter = asyncio.ensure_future(run.result(WAIT))
        assert await client.cancel(run.id) == [(run.id, RunStatus.CANCELLED)]
        with pytest.raises(RunCancelled):
            await waiter
        async with app.worker(dsn, poll_interval=0.05) as worker:

            async def looked_twice() -> bool:
                return worker.stats.claims >= 2

            await eventually(looked_twice)
        assert worker.stats.claimed == 0
        assert not started.is_set() and not seen
        assert (await run.get()).attempt == 0


async def test_cancel_running_run_reaches_its_worker_through_notify(dsn: str) -> None:
    app, seen, started = _app()
    # heartbeats every 10 s: a cancellation that arrives sooner came through NOTIFY
    timings = {"heartbeat_interval": 10.0, "lease": 30.0}
    async with app.worker(dsn, **timings), app.client(dsn) as client:
        run = await client.trigger_async(app.get_job("hold"))
        await asyncio.wait_for(started.wait(), WAIT)
        began = time.monotonic()
        assert await client.cancel(run.id) == [(run.id, RunStatus.RUNNING)]
        with pytest.raises(RunCancelled):
            await run.result(WAIT)
        assert time.monotonic() - began < 5
        record = await run.get()
    assert seen == {run.id: True}
    assert record.status is RunStatus.CANCELLED and record.attempt == 1


async def test_cancel_reaches_its_worker_through_the_heartbeat_when_notify_is_lost(
    dsn: str,
) -> None:
    app, seen, started = _app()
    async with app.worker(dsn, heartbeat_interval=0.2), app.client(dsn) as client:
        run = await client.trigger_async(app.get_job("hold"))
        await asyncio.wait_for(started.wait(), WAIT)
        # what cancel_runs does, minus its NOTIFY: only the heartbeat can tell the worker
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(
                "UPDATE asyncjobs.runs SET cancel_requested = true WHERE id = $1", run.id
            )
        finally:
            await conn.close()
        with pytest.raises(RunCancelled):
            await run.result(WAIT)
    assert seen == {run.id: True}


async def test_cancel_cascade_cancels_the_subtree_only(dsn: str) -> None:
    app = App("cascade")
    seen: dict[str, bool] = {}
    leaves_started = asyncio.Event()

    @app.job
    async def leaf(name: str) -> None:
        ctx = _context()
        if name.startswith("b"):
            leaves_started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            seen[name] = ctx.cancel_requested
            raise

    @app.job
    async def branch(name: str) -> None:
        ctx = _context()
        try:
            # one child delayed (pending when cancelled), one running
            await leaf.options(not_before=timedelta(hours=1)).trigger_async(name=f"{name}-later")
            await leaf.run_async(name=f"{name}-leaf")
        except asyncio.CancelledError:
            seen[name] = ctx.cancel_requested
            raise

    async with app.worker(dsn, concurrency=4), app.client(dsn) as client:
        bystander = await client.trigger_async(leaf, name="bystander")
        root = await client.trigger_async(branch, name="b")
        await asyncio.wait_for(leaves_started.wait(), WAIT)

        async def tree_running() -> bool:
            runs = (await client.get_runs(root_run_id=root.id)).runs
            return sorted(r.status for r in runs) == ["pending", "running", "running"]

        await eventually(tree_running)
        changed = dict(await client.cancel(root.id, cascade=True))
        assert sorted(changed.values()) == ["cancelled", "running", "running"]
        with pytest.raises(RunCancelled):
            await root.result(WAIT)
        for record in (await client.get_runs(root_run_id=root.id)).runs:
            final = await client.wait(record.id, WAIT)
            assert final.status is RunStatus.CANCELLED, final
        assert (await bystander.get()).status is RunStatus.RUNNING
        await client.cancel(bystander.id)
    # every running run of the tree learnt it was cancelled (not shut down)
    assert seen == {"b": True, "b-leaf": True, "bystander": True}


def _context() -> Context:
    context = get_context()
    assert context is not None
    return context
