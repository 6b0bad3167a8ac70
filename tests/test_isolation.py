"""Nothing lost to one bad run (issue 10, rows 1-4 of its table, and bad results).

Each test starts a real worker process (forked from ``tests.forkserver``, as the command line
runs it) and triggers a group of runs that act together (``tests.isolation_apps``): one bad
run among many healthy ones, so that the bad item shares a batch with its neighbours. The bad
run must fail (or store its text escaped) on its own; every neighbour must succeed with its
result and its log lines stored; the worker process must keep running.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from asyncjobs import App, Client, Context, RunFailed, RunRecord, RunStatus
from asyncjobs.backends.base import Completion
from tests.faults import ForkedWorker, ForkServer, eventually, registered
from tests.isolation_apps import BAD_TEXT, app, chatty, finisher, returner

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

#: (run id, attempt, kind, data): one item of the worker's event batcher
Event = tuple[int, int, str, dict[str, Any]]

#: ``isolation_apps.BAD_TEXT`` as stored: the lone surrogate as its backslash escape
BAD_STORED = "processing caf\\udce9.csv"

#: short leases: on the code before issue 10 a dropped completion shows up as LeaseExpired
#: within seconds instead of after the default 20 s lease
WORKER_OPTIONS = (
    "--concurrency", "80", "--lease", "3", "--heartbeat-interval", "0.5",
    "--sweep-interval", "0.5", "--poll-interval", "0.2", "--drain-timeout", "5",
)  # fmt: skip


@pytest.fixture(scope="module")
def forks() -> Iterator[ForkServer]:
    server = ForkServer()
    yield server
    server.close()


@pytest.fixture
async def client(dsn: str) -> AsyncIterator[Client]:
    async with app.client(dsn) as opened:
        yield opened


@pytest.fixture
async def worker(dsn: str, forks: ForkServer, tmp_path: Path) -> AsyncIterator[ForkedWorker]:
    started = await forks.start_worker(
        "tests.isolation_apps:app", dsn, "iso", tmp_path, *WORKER_OPTIONS
    )
    conn = await asyncpg.connect(dsn)
    try:
        await eventually(lambda: registered(conn, "iso"), what="worker up")
    finally:
        await conn.close()
    yield started
    if started.alive:
        started.terminate()
        await started.exited(15)


async def _finished(client: Client, run_ids: list[int]) -> dict[int, RunRecord]:
    """Wait until every run is terminal; the records by id."""
    records: dict[int, RunRecord] = {}

    async def done() -> bool:
        for run_id in run_ids:
            if run_id not in records:
                record = await client.get_run(run_id)
                if record.status.is_terminal:
                    records[run_id] = record
        return len(records) == len(run_ids)

    await eventually(done, timeout=30, what="every run finished")
    return records


def _failed_with(record: RunRecord, error_type: str) -> dict[str, Any]:
    assert record.status is RunStatus.FAILED, record
    assert record.error is not None and record.error["type"] == error_type, record.error
    assert record.attempt == 1 and len(record.errors) == 1  # no retry for these
    return record.error


async def test_a_lone_surrogate_in_one_runs_logs_fails_no_neighbour(
    client: Client, worker: ForkedWorker
) -> None:
    """Row 1: ``ctx.log("processing caf\\udce9.csv")`` (and the same through ``logging``,
    ``ctx.progress`` and a log field) while 30 other runs log."""
    args = [{"group": "a", "size": 31, "n": n} for n in range(30)]
    bad = {"group": "a", "size": 31, "n": 30, "bad": True}
    runs = await client.trigger_many(chatty, [*args, bad])
    records = await _finished(client, [r.id for r in runs])
    assert all(r.status is RunStatus.SUCCEEDED for r in records.values()), [
        (r.id, r.status, r.error) for r in records.values() if r.status is not RunStatus.SUCCEEDED
    ]
    for n, run in enumerate(runs):
        text = BAD_STORED if n == 30 else f"processing file-{n}.csv"
        events = await client.get_events(run.id)
        logs = [e.data for e in events if e.kind == "log"]
        assert {"level": "info", "message": text} in logs, logs
        assert {"level": "info", "message": "with a field", "fields": {"file": text}} in logs
        assert {"level": "warning", "message": text, "logger": "isolation.jobs"} in logs, logs
        progress = [e.data for e in events if e.kind == "progress"]
        assert {"progress": 0.5, "message": text} in progress
        assert records[run.id].result == n
    assert worker.alive


async def test_a_lone_surrogate_in_one_error_fails_only_that_run(
    client: Client, worker: ForkedWorker
) -> None:
    """Row 2: one job raises ``ValueError("cannot parse caf\\udce9.csv")`` while 60 finish."""
    args = [{"group": "b", "size": 61, "n": n} for n in range(60)]
    bad = {"group": "b", "size": 61, "n": 60, "fail": "surrogate"}
    runs = await client.trigger_many(finisher, [*args, bad])
    records = await _finished(client, [r.id for r in runs])
    for n, run in enumerate(runs[:60]):
        assert (records[run.id].status, records[run.id].result) == (RunStatus.SUCCEEDED, n)
    error = _failed_with(records[runs[60].id], "ValueError")
    assert error["message"] == "cannot parse caf\\udce9.csv"
    assert "ValueError: cannot parse caf\\udce9.csv" in error["traceback"]
    assert "dropping" not in worker.output() and "LeaseExpired" not in worker.output()


async def test_keyboard_interrupt_and_system_exit_fail_their_run_not_the_worker(
    client: Client, worker: ForkedWorker
) -> None:
    """Row 3: a job raises ``KeyboardInterrupt`` or ``SystemExit(3)`` with 30 runs in flight."""
    args = [{"group": "c", "size": 32, "n": n} for n in range(30)]
    bad = [{"group": "c", "size": 32, "n": 30, "fail": "keyboard"},
           {"group": "c", "size": 32, "n": 31, "fail": "exit"}]  # fmt: skip
    runs = await client.trigger_many(finisher, [*args, *bad])
    records = await _finished(client, [r.id for r in runs])
    for n, run in enumerate(runs[:30]):
        assert (records[run.id].status, records[run.id].result) == (RunStatus.SUCCEEDED, n)
    assert _failed_with(records[runs[30].id], "KeyboardInterrupt")["message"] == ""
    assert _failed_with(records[runs[31].id], "SystemExit")["message"] == "3"
    assert worker.alive, worker.output()
    # it still works, and its own stop still works: SIGTERM drains and exits 0
    later = await client.trigger_async(finisher, group="c2", size=1, n=7)
    assert await later.result(timeout=20) == 7
    worker.terminate()
    assert await worker.exited(15) == 0, worker.output()


async def test_cancelled_error_custom_base_exceptions_and_unprintable_errors_fail_their_run(
    client: Client, worker: ForkedWorker
) -> None:
    """Row 4: ``asyncio.CancelledError()`` raised by the job itself, a custom
    ``BaseException``, and exceptions whose ``__str__`` (and ``__repr__``) raise."""
    kinds = ["cancelled", "halt", "unprintable", "unreadable"]
    size = 10 + len(kinds)
    args = [{"group": "d", "size": size, "n": n} for n in range(10)]
    bad = [{"group": "d", "size": size, "n": 10 + i, "fail": kind} for i, kind in enumerate(kinds)]
    runs = await client.trigger_many(finisher, [*args, *bad])
    records = await _finished(client, [r.id for r in runs])
    for n, run in enumerate(runs[:10]):
        assert (records[run.id].status, records[run.id].result) == (RunStatus.SUCCEEDED, n)
    cancelled, halt, unprintable, unreadable = (records[r.id] for r in runs[10:])
    assert _failed_with(cancelled, "asyncio.exceptions.CancelledError")["message"] == ""
    assert _failed_with(halt, "tests.isolation_apps.Halt")["message"] == "halt requested by the job"
    assert _failed_with(unprintable, "tests.isolation_apps.Unprintable")["message"] == (
        "<unprintable Unprintable: str() raised RuntimeError>"
    )
    error = _failed_with(unreadable, "tests.isolation_apps.Unreadable")
    assert error["message"] == "<unprintable Unreadable: str() raised RuntimeError>"
    assert "Unreadable" in error["traceback"]
    assert worker.alive, worker.output()


async def test_unstorable_results_are_escaped_or_fail_their_run_alone(
    client: Client, worker: ForkedWorker
) -> None:
    """A result with a NUL or a lone surrogate is stored escaped (the run succeeds); a result
    that is not JSON at all fails its run with ``ResultNotStorable``; neighbours unaffected."""
    kinds = ["nul", "surrogate", "key", "object"]
    size = 10 + len(kinds)
    args = [{"group": "e", "size": size, "n": n} for n in range(10)]
    bad = [{"group": "e", "size": size, "n": 10 + i, "value": k} for i, k in enumerate(kinds)]
    runs = await client.trigger_many(returner, [*args, *bad])
    records = await _finished(client, [r.id for r in runs])
    for n, run in enumerate(runs[:10]):
        assert (records[run.id].status, records[run.id].result) == (RunStatus.SUCCEEDED, n)
    nul, surrogate, key, not_json = (records[r.id] for r in runs[10:])
    assert (nul.status, nul.result) == (RunStatus.SUCCEEDED, "a\\0b")
    assert (surrogate.status, surrogate.result) == (RunStatus.SUCCEEDED, BAD_STORED)
    assert (key.status, key.result) == (RunStatus.SUCCEEDED, {"caf\\udce9": "x\\0y", "n": 12})
    error = _failed_with(not_json, "asyncjobs.errors.ResultNotStorable")
    assert "cannot be stored as JSON" in error["message"] and "object" in error["message"]



# ---------------------------------------------------------------------- each batched write
# One bad item injected into a batch of a worker running in this process, after the seam that
# makes text storable (as a future bug might): the real database refuses it; only its own run
# is affected. Events and completions are the batched writes (heartbeats carry only ids).


async def test_a_completion_the_database_refuses_fails_only_its_run(
    dsn: str, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    runs = await client.trigger_many(
        finisher, [{"group": "refused-completion", "size": 20, "n": n} for n in range(20)]
    )
    bad_id = runs[7].id
    worker = app.worker(dsn, concurrency=40, poll_interval=0.1)
    add = worker._completions.add

    def add_one_bad(item: Completion) -> asyncio.Future[None]:
        if item.run_id == bad_id:  # jsonb cannot hold \u0000: the statement fails
            item = dataclasses.replace(item, result_json='"\\u0000"')
        return add(item)

    worker._completions.add = add_one_bad  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="asyncjobs.batcher"):
        async with worker:
            records = await _finished(client, [r.id for r in runs])
    for n, run in enumerate(runs):
        if run.id != bad_id:
            assert (records[run.id].status, records[run.id].result) == (RunStatus.SUCCEEDED, n)
    error = _failed_with(records[bad_id], "asyncjobs.errors.ResultNotStorable")
    assert error["message"].startswith("the outcome of attempt 1 (succeeded) could not be stored")
    assert "UntranslatableCharacterError" in error["message"], error
    assert worker.stats.unstorable_completions == 1
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(logged) == 1 and f"run {bad_id} " in logged[0], logged


async def test_events_the_database_refuses_are_escaped_or_replaced_not_lost(
    dsn: str, client: Client
) -> None:
    runs = await client.trigger_many(
        chatty, [{"group": "refused-events", "size": 20, "n": n} for n in range(20)]
    )
    escaped_id, replaced_id = runs[3].id, runs[11].id
    worker = app.worker(dsn, concurrency=40, poll_interval=0.1)
    sink = worker._reporting._sink

    def sink_two_bad(event: Event) -> asyncio.Future[None]:
        run_id, attempt, kind, data = event
        if kind == "log" and run_id == escaped_id and "fields" not in data:
            data = {**data, "message": BAD_TEXT}  # past the seam: orjson refuses it
        if kind == "log" and run_id == replaced_id and "fields" in data:
            data = {**data, "fields": {"what": object()}}  # cannot be stored even escaped
        return sink((run_id, attempt, kind, data))

    worker._reporting._sink = sink_two_bad
    async with worker:
        records = await _finished(client, [r.id for r in runs])
    assert all(r.status is RunStatus.SUCCEEDED for r in records.values())
    for n, run in enumerate(runs):
        logs = [e.data["message"] for e in await client.get_events(run.id) if e.kind == "log"]
        text = BAD_STORED if run.id == escaped_id else f"processing file-{n}.csv"
        last = "with a field"
        if run.id == replaced_id:
            last = (
                "[a log event of this run could not be stored: "
                "TypeError: Type is not JSON serializable: object]"
            )
        assert logs == [text, text, last], logs
    # the ctx.log and the logging line of one run, the line with a field of the other
    assert worker.stats.unstorable_events == 3


async def test_failed_hooks_get_the_base_exception_and_a_hook_raising_one_is_ignored(
    dsn: str,
) -> None:
    local = App("isolation-hooks")
    seen: list[BaseException] = []

    @local.job
    async def interrupted() -> None:
        raise KeyboardInterrupt("from the job")

    @local.job
    def exits_in_a_thread(code: int) -> None:  # a plain `def` job runs in a worker thread
        raise SystemExit(code)

    @local.on("failed")
    def record(ctx: Context, error: BaseException) -> None:
        seen.append(error)

    @local.on("failed")
    def stubborn(ctx: Context, error: BaseException) -> None:
        raise SystemExit("from a hook")

    async with local.worker(dsn, poll_interval=0.1), local.client(dsn) as client:
        with pytest.raises(RunFailed) as info:
            await client.run_async(interrupted.options(wait_timeout=20))
        assert (info.value.error_type, info.value.error_message) == (
            "KeyboardInterrupt",
            "from the job",
        )
        second = await client.trigger_async(interrupted)
        with pytest.raises(RunFailed):
            await second.result(timeout=20)  # the worker lived on after the hook's SystemExit
        with pytest.raises(RunFailed) as info:
            await client.run_async(exits_in_a_thread.options(wait_timeout=20), 4)
        assert (info.value.error_type, info.value.error_message) == ("SystemExit", "4")
    assert [type(e) for e in seen] == [KeyboardInterrupt, KeyboardInterrupt, SystemExit]
