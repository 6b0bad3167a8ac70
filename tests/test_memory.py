"""What only the memory backend has: an injectable clock, in-process notifications, and the
``asyncjobs.testing`` helpers built on it. Shared behaviour is in test_behaviour.py."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import pytest

from asyncjobs import App, Context, RunStatus, Trigger, testing
from asyncjobs.backends.base import NewRun, Notification, RunFilter
from asyncjobs.backends.memory import MemoryBackend

pytestmark = pytest.mark.anyio


async def test_notifications_arrive_later_from_the_loop() -> None:
    backend = MemoryBackend()
    await backend.open()
    seen: list[tuple[Notification, asyncio.Task[object] | None]] = []

    def broken(_: Notification) -> None:
        raise RuntimeError("a listener bug")

    backend.add_listener(broken)
    backend.add_listener(lambda n: seen.append((n, asyncio.current_task())))
    await backend.enqueue([NewRun("j", "q", "{}")])
    assert seen == []  # never inside the caller's stack
    await asyncio.sleep(0)
    assert seen == [(Notification(queues=frozenset({"q"}), events=True), None)]
    backend.remove_listener(broken)
    await backend.close()


async def test_the_clock_drives_delays_deadlines_and_leases() -> None:
    clock = testing.ManualClock()
    backend = MemoryBackend(clock=clock)
    await backend.open()
    start = backend.now()
    later, soon, plain = await backend.enqueue(
        [
            NewRun("j", "q", "{}", not_before=start + timedelta(hours=1)),
            NewRun("j", "q", "{}", not_after=start + timedelta(minutes=1)),
            NewRun("j", "q", "{}", max_attempts=2),
        ]
    )
    assert [r.id for r in await backend.claim("w", ["q"], ["j"], 1, 30)] == [soon.run_id]
    assert [r.id for r in await backend.claim("w", ["q"], ["j"], 5, 30)] == [plain.run_id]

    clock.advance(31)  # both leases run out; the delayed run is still not due
    swept = await backend.sweep(60)
    assert (swept.restarted, swept.failed) == (1, 1)
    assert await backend.claim("w", ["q"], ["j"], 5, 30) != []  # the restarted one

    clock.advance(3600)
    (due,) = await backend.claim("w", ["q"], ["j"], 5, 30)
    assert due.id == later.run_id and due.started_at == start + timedelta(seconds=3631)
    with pytest.raises(ValueError, match="cannot go back"):
        clock.advance(-1)
    await backend.close()


async def test_a_pending_run_expires_when_the_clock_passes_not_after() -> None:
    clock = testing.ManualClock()
    backend = MemoryBackend(clock=clock)
    await backend.open()
    (run,) = await backend.enqueue(
        [NewRun("j", "q", "{}", not_after=backend.now() + timedelta(seconds=10))]
    )
    assert (await backend.sweep(60)).expired == 0
    clock.advance(10)
    assert (await backend.sweep(60)).expired == 1
    record = await backend.get_run(run.run_id)
    assert record is not None and record.status is RunStatus.EXPIRED
    await backend.close()


async def test_records_are_copies_and_data_outlives_close() -> None:
    backend = MemoryBackend()
    await backend.open()
    (run,) = await backend.enqueue([NewRun("j", "q", '{"items": [1]}')])
    record = await backend.get_run(run.run_id)
    assert record is not None
    record.args["items"].append(2)
    await backend.close()
    await backend.open()
    again = await backend.get_run(run.run_id)
    assert again is not None and again.args == {"items": [1]}
    await backend.close()


async def test_run_app_runs_jobs_without_a_database(caplog: pytest.LogCaptureFixture) -> None:
    app = App("unit")

    @app.job(retries=1, backoff_base=0)
    async def invoice(ctx: Context, cents: int) -> str:
        if ctx.attempt == 1:
            raise ConnectionError("flaky")
        return f"INV-{cents}"

    caplog.set_level(logging.ERROR)
    async with testing.run_app(app) as client:
        assert await client.run_async(invoice, cents=500) == "INV-500"
        (record,) = (await client.get_runs()).runs
        assert (record.attempt, record.trigger) == (2, Trigger.RETRY)
        backend = client.backend
    assert isinstance(backend, MemoryBackend)
    with pytest.raises(RuntimeError, match="not open"):
        await backend.get_runs(RunFilter())
    assert not caplog.records


async def test_run_app_with_a_manual_clock_skips_waiting() -> None:
    app = App("unit")

    @app.job
    async def remind(user_id: int) -> int:
        return user_id

    clock = testing.ManualClock()
    backend = testing.MemoryBackend(clock=clock)
    async with testing.run_app(app, backend) as client:
        later = backend.now() + timedelta(hours=1)
        run = await client.trigger_async(remind.options(not_before=later), user_id=7)
        assert (await run.get()).status is RunStatus.PENDING
        clock.advance(3600)
        assert await run.result(10) == 7
