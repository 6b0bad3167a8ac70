"""Lifecycle of workers and runs: hooks, trigger types, progress and logs (rate and capture),
enable/disable at run time (API and CLI), last success and summaries, renamed jobs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest

from asyncjobs import App, Context, RunFailed, RunStatus, Trigger, Worker
from asyncjobs.__main__ import main as cli
from asyncjobs.client import Client
from asyncjobs.runlog import EventGate, RunLogCapture

pytestmark = pytest.mark.anyio

FAST = {"poll_interval": 0.05, "sweep_interval": 0.5, "heartbeat_interval": 0.5}
WAIT = 20.0


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.02)


async def claim_passes(worker: Worker, passes: int) -> None:
    """Wait until the worker has looked for work ``passes`` more times."""
    target = worker.stats.claims + passes

    async def done() -> bool:
        return worker.stats.claims >= target

    await eventually(done)


async def events(client: Client, run_id: int, kind: str) -> list[dict[str, Any]]:
    return [e.data for e in await client.get_events(run_id) if e.kind == kind]


# ---------------------------------------------------------------------- hooks


async def test_hooks_run_in_order_and_a_failing_hook_breaks_nothing(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = App("t")
    seen: list[str] = []

    @app.job(retries=1, backoff_base=0)
    async def flaky(ctx: Context) -> str:
        if ctx.attempt == 1:
            raise ValueError("first attempt fails")
        return "ok"

    def on_worker(event: str) -> Callable[[Worker], None]:
        def hook(worker: Worker) -> None:
            assert isinstance(worker, Worker)
            seen.append(event)

        return hook

    for event in ("starting", "started", "stopping", "stopped"):
        app.on(event)(on_worker(event))

    @app.on("executing")
    async def executing(ctx: Context) -> None:
        seen.append(f"executing {ctx.job} #{ctx.attempt}")
        await ctx.log("hook says hi")

    @app.on("executed")
    def executed(ctx: Context) -> None:
        seen.append(f"executed #{ctx.attempt}")

    @app.on("failed")
    async def failed(ctx: Context, error: BaseException) -> None:
        seen.append(f"failed #{ctx.attempt} {type(error).__name__}: {error}")

    def broken(*args: object) -> None:
        raise RuntimeError("a broken hook")

    app.on("started")(broken)
    app.on("executing")(broken)

    with caplog.at_level(logging.ERROR, logger="asyncjobs.hooks"):
        async with app.worker(dsn, **FAST), app.client(dsn) as client:
            run = await client.trigger_async(flaky)
            assert await run.result(WAIT) == "ok"
            assert len(await events(client, run.id, "log")) == 2  # one per attempt
    assert seen == [
        "starting",
        "started",
        "executing flaky #1",
        "failed #1 ValueError: first attempt fails",
        "executing flaky #2",
        "executed #2",
        "stopping",
        "stopped",
    ]
    broken_logs = [r for r in caplog.records if "broken" in r.getMessage()]
    assert len(broken_logs) == 3 and all(r.exc_info for r in broken_logs)


async def test_failed_hook_gets_the_timeout_error(dsn: str) -> None:
    app = App("t")
    errors: list[BaseException] = []

    @app.job(timeout=0.05)
    async def slow() -> None:
        await asyncio.sleep(10)

    app.on("failed")(lambda ctx, error: errors.append(error))
    async with app.worker(dsn, **FAST), app.client(dsn) as client:
        with pytest.raises(RunFailed, match="JobTimeout"):
            await client.run_async(slow)
    (error,) = errors
    assert type(error).__name__ == "JobTimeout"


def test_unknown_hook_events_are_refused() -> None:
    from asyncjobs import ConfigurationError

    with pytest.raises(ConfigurationError, match="unknown hook event"):
        App("t").on("finished")  # type: ignore[call-overload]


# ---------------------------------------------------------------------- trigger types


async def test_every_trigger_type_is_recorded_and_filterable(dsn: str) -> None:
    app = App("t")
    release = asyncio.Event()

    @app.job
    async def leaf() -> None: ...

    @app.job
    async def parent() -> None:
        await leaf.run_async()

    @app.job(retries=1, backoff_base=0)
    async def retried(ctx: Context) -> None:
        if ctx.attempt == 1:
            raise ValueError("once")

    @app.job(every=timedelta(hours=1))
    async def hourly() -> None: ...

    @app.job
    async def blocks() -> None:
        await release.wait()

    async with app.client(dsn) as client:
        async with app.worker(dsn, drain_timeout=0, **FAST) as worker:
            user = await client.trigger_async(leaf)
            api = await client.trigger_json("leaf", {})
            await client.run_async(parent)
            retry = await client.trigger_async(retried)
            await retry.result(WAIT)
            blocked = await client.trigger_async(blocks)
            await eventually(lambda: _status_is(client, blocked.id, RunStatus.RUNNING))
        # the worker stopped with `blocks` running: it was handed back as a restart
        assert worker.stats.handed_back == 1

        expected = {
            Trigger.USER: {user.id, blocked.id},
            Trigger.API: {api.id},
            Trigger.CHILD: {r.id for r in (await client.get_runs(job="leaf")).runs}
            - {user.id, api.id},
            Trigger.SCHEDULE: {r.id for r in (await client.get_runs(job="hourly")).runs},
            Trigger.RETRY: {retry.id},
        }
        expected[Trigger.USER] |= {r.id for r in (await client.get_runs(job="parent")).runs}
        expected[Trigger.RESTART] = {blocked.id}
        expected[Trigger.USER] -= {blocked.id}
        assert len(expected[Trigger.CHILD]) == 1 and len(expected[Trigger.SCHEDULE]) == 1
        for trigger, ids in expected.items():
            page = await client.get_runs(trigger=trigger)
            assert {r.id for r in page.runs} == ids, trigger
            assert {r.trigger for r in page.runs} == {trigger}
        assert (await client.get_runs(trigger="schedule")).runs[0].schedule == "hourly"


async def _status_is(client: Client, run_id: int, status: RunStatus) -> bool:
    return (await client.get_run(run_id)).status is status


# ---------------------------------------------------------------------- progress and logs


async def test_event_rate_coalesces_progress_and_counts_dropped_logs(dsn: str) -> None:
    app = App("t")

    @app.job
    async def chatty(ctx: Context, lines: int) -> None:
        for n in range(lines):
            await ctx.log(f"line {n}")
            await ctx.progress(n / lines, f"step {n}")
        await ctx.progress(0.99, "last step")

    async with app.worker(dsn, event_rate=20, event_burst=10, **FAST), app.client(dsn) as client:
        started = time.monotonic()
        await client.run_async(chatty, lines=1000)
        elapsed = time.monotonic() - started
        run = (await client.get_runs(job="chatty")).runs[0]
        logs = await events(client, run.id, "log")
        notes = await events(client, run.id, "log_dropped")
        progress = await events(client, run.id, "progress")
    written = len(logs) + len(progress) + sum(1 for _ in notes)
    assert written <= 10 + 20 * elapsed + 3  # burst + rate, plus what the end releases
    assert len(logs) + sum(note["dropped"] for note in notes) == 1000  # every line accounted
    assert notes, "dropped lines leave a note"
    assert progress[-1] == {"progress": 0.99, "message": "last step"}  # the latest survives
    assert run.status_message == "last step"


async def test_event_gate_holds_back_and_releases_on_close() -> None:
    sent: list[tuple[str, dict[str, Any]]] = []
    now = [0.0]

    def sink(event: tuple[int, int, str, dict[str, Any]]) -> asyncio.Future[None]:
        sent.append((event[2], event[3]))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    gate = EventGate(1, 1, sink, rate=1.0, burst=2, clock=lambda: now[0])
    for n in range(5):
        gate.offer("log", {"message": f"log {n}"})
    for value in (0.1, 0.2, 0.3):
        gate.offer("progress", {"progress": value})
    assert [kind for kind, _ in sent] == ["log", "log"]
    now[0] = 1.0  # one token back: the next event goes through
    gate.offer("progress", {"progress": 0.4})
    assert sent[-1] == ("progress", {"progress": 0.4})
    gate.offer("progress", {"progress": 0.5})  # held again
    await gate.close()
    assert sent[-2:] == [("log_dropped", {"dropped": 3}), ("progress", {"progress": 0.5})]
    assert (gate.stats.dropped, gate.stats.coalesced) == (3, 2)
    assert gate.offer("log", {"message": "after the end"}) is None


async def test_logging_records_inside_a_job_go_to_its_log(dsn: str) -> None:
    app = App("t")
    user_logger = logging.getLogger("tests.capture")
    previous_level = user_logger.level
    user_logger.setLevel(logging.DEBUG)

    def in_a_thread() -> None:
        user_logger.info("from a thread")

    @app.job
    async def logs(ctx: Context) -> None:
        user_logger.debug("too fine to keep")
        user_logger.info("charging %s", "card")
        await asyncio.to_thread(in_a_thread)
        logging.getLogger("asyncjobs.something").warning("the framework's own: not captured")
        try:
            raise KeyError("missing")
        except KeyError:
            user_logger.exception("lookup failed")

    try:
        async with app.worker(dsn, **FAST) as worker, app.client(dsn) as client:
            assert _capturing()
            await client.run_async(logs)
            user_logger.warning("outside any job: not captured")
            run = (await client.get_runs(job="logs")).runs[0]
            captured = await events(client, run.id, "log")
        assert not _capturing()  # the handler leaves with the last worker
        assert worker.stats.succeeded == 1
    finally:
        user_logger.setLevel(previous_level)
    assert [(e["level"], e["logger"], e["message"].splitlines()[0]) for e in captured] == [
        ("info", "tests.capture", "charging card"),
        ("info", "tests.capture", "from a thread"),
        ("error", "tests.capture", "lookup failed"),
    ]
    assert "KeyError: 'missing'" in captured[-1]["message"]


def _capturing() -> bool:
    return any(isinstance(h, RunLogCapture) for h in logging.getLogger().handlers)


# ---------------------------------------------------------------------- enable / disable


async def test_disabled_job_and_queue_hold_their_runs(dsn: str) -> None:
    app = App("t")
    app.queue("mail")

    @app.job
    async def work() -> str:
        return "done"

    @app.job(queue="mail")
    async def send() -> str:
        return "sent"

    async with app.worker(dsn, **FAST) as worker, app.client(dsn) as client:
        await client.set_job_enabled("work", False)
        await client.set_queue_enabled("mail", False)
        held = [await client.trigger_async(work), await client.trigger_async(send)]
        await claim_passes(worker, 5)
        for run in held:
            assert (await client.get_run(run.id)).status is RunStatus.PENDING
        assert (await client.explain(held[0].id)).codes == ["job_disabled"]
        assert (await client.explain(held[1].id)).codes == ["queue_disabled"]
        await client.set_job_enabled("work", True)
        await client.set_enabled("queue", "mail", True)
        assert await held[0].result(WAIT) == "done"
        assert await held[1].result(WAIT) == "sent"
        with pytest.raises(Exception, match="not registered"):
            await client.set_schedule_enabled("nope", False)


async def test_cli_enables_and_disables_and_explains(
    dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    app = App("t")

    @app.job(every=timedelta(hours=1))
    async def nightly() -> None: ...

    async with app.worker(dsn, **FAST), app.client(dsn) as client:
        for argv in (
            ["disable", "job", "nightly"],
            ["disable", "schedule", "nightly"],
            ["disable", "queue", "default"],
        ):
            assert await asyncio.to_thread(cli, [*argv, "--dsn", dsn]) == 0
        (schedule,) = await client.get_schedules()
        assert not schedule.enabled and not schedule.job_enabled and not schedule.queue_enabled
        run = await client.trigger_async(nightly)
        assert await asyncio.to_thread(cli, ["explain", str(run.id), "--dsn", dsn]) == 0
        assert await asyncio.to_thread(cli, ["schedules", "--dsn", dsn]) == 0
        for kind in ("job", "schedule", "queue"):
            assert await asyncio.to_thread(cli, ["enable", kind, "nightly" if kind != "queue"
                                                 else "default", "--dsn", dsn]) == 0  # fmt: skip
        assert await asyncio.to_thread(cli, ["enable", "job", "nope", "--dsn", dsn]) == 1
        (schedule,) = await client.get_schedules()
        assert schedule.enabled and schedule.job_enabled and schedule.queue_enabled
    out = capsys.readouterr()
    assert "job 'nightly' disabled" in out.out and "schedule 'nightly' enabled" in out.out
    assert "job_disabled" in out.out and "queue_disabled" in out.out
    assert "every 1:00:00" in out.out
    assert "job 'nope' is not registered" in out.err


# ---------------------------------------------------------------------- summaries


async def test_last_success_and_job_summary(dsn: str) -> None:
    app = App("t")

    @app.job
    async def maybe(ok: bool, ms: int) -> None:
        await asyncio.sleep(ms / 1000)
        if not ok:
            raise ValueError("no")

    async with app.worker(dsn, **FAST), app.client(dsn) as client:
        assert await client.last_success(maybe) is None
        for ok, ms in [(True, 10), (True, 20), (False, 5), (True, 60), (False, 5)]:
            with contextlib.suppress(RunFailed):
                await client.run_async(maybe, ok=ok, ms=ms)
        pending = await client.trigger_async(maybe.options(not_before=timedelta(hours=1)),
                                             ok=True, ms=0)  # fmt: skip
        summary = await client.job_summary("maybe", window=timedelta(hours=1))
        last = await client.last_success(maybe)
        runs = {r.id: r for r in (await client.get_runs(job="maybe")).runs}
    assert summary.job == "maybe" and summary.total == 6
    assert summary.counts[RunStatus.SUCCEEDED] == 3 and summary.counts[RunStatus.FAILED] == 2
    assert summary.counts[RunStatus.PENDING] == 1 and summary.counts[RunStatus.EXPIRED] == 0
    assert summary.p50 is not None and summary.p95 is not None
    assert 0.004 < summary.p50 <= summary.p95 < 5
    assert summary.p95 >= 0.05  # the 60 ms run is the slowest
    succeeded = [r for r in runs.values() if r.status is RunStatus.SUCCEEDED]
    newest = max(succeeded, key=lambda r: r.finished_at or r.created_at)
    assert last is not None and summary.last_success == last
    assert (last.run_id, last.finished_at) == (newest.id, newest.finished_at)
    assert last.duration is not None and last.duration >= 0.06
    assert last.duration == pytest.approx(newest.duration)
    assert pending.id in runs


# ---------------------------------------------------------------------- renamed jobs


async def test_a_run_stored_under_an_old_name_runs_with_the_renamed_job(dsn: str) -> None:
    before = App("t")

    @before.job(name="send_mail")
    async def send_mail(to: str) -> str:
        return f"old code: {to}"

    async with before.client(dsn) as client:
        stored = await client.trigger_async(send_mail, to="a@b.c")

    after = App("t")

    @after.job(name="deliver_email", aliases=["send_mail"])
    async def deliver_email(ctx: Context, to: str) -> str:
        return f"new code ran {ctx.job} for {to}"

    async with after.worker(dsn, **FAST), after.client(dsn) as client:
        record = await client.wait(stored.id, WAIT)
        assert (record.status, record.job) == (RunStatus.SUCCEEDED, "send_mail")
        assert record.result == "new code ran send_mail for a@b.c"
        fresh = await client.trigger_async("send_mail", to="c@d.e")  # by the old name
        assert fresh.job is deliver_email
        assert await fresh.result(WAIT) == "new code ran deliver_email for c@d.e"
        summary = await client.job_summary(deliver_email)
        assert summary.counts[RunStatus.SUCCEEDED] == 2  # runs of both names count


def test_event_rate_settings_are_checked() -> None:
    from asyncjobs import ConfigurationError

    app = App("t")
    for bad in ({"event_rate": 0}, {"event_burst": 0}):
        with pytest.raises(ConfigurationError, match="event_rate must be positive"):
            app.worker("postgresql://127.0.0.1/unused", **bad)
