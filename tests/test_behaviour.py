"""The behavioural suite: the documented queue semantics, on a fresh PostgreSQL database per test.

Most tests go through the public API (``app.client(dsn)`` / ``app.worker(dsn)``, each opening its
own ``PostgresBackend``); the tests at the end call the backend directly where the public API
cannot reach a state (limits at claim time, expired leases, notifications).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pydantic
import pytest

from asyncjobs import (
    App,
    Context,
    DuplicateRun,
    InvalidArguments,
    RunCancelled,
    RunExpired,
    RunFailed,
    RunNotFound,
    RunStatus,
    Trigger,
)
from asyncjobs.backends.base import (
    Completion,
    Enqueued,
    JobDefinition,
    NewRun,
    Notification,
    QueueDefinition,
    RunFilter,
    WorkerInfo,
)
from asyncjobs.backends.postgres import PostgresBackend
from asyncjobs.client import Client

pytestmark = pytest.mark.anyio

#: quick polls and sweeps, so delayed and expired runs do not wait for the defaults
FAST = {"poll_interval": 0.05, "sweep_interval": 0.2, "heartbeat_interval": 0.5, "lease": 10.0}
WAIT = 20.0  # generous: other engineers' tests share the two cores


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = WAIT) -> None:
    """Wait until ``check()`` holds, polling, with a deadline."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.02)


async def status_is(client: Client, run_id: int, status: RunStatus) -> None:
    async def check() -> bool:
        return (await client.get_run(run_id)).status is status

    await eventually(check)


async def kinds(client: Client, run_id: int) -> list[str]:
    return [event.kind for event in await client.get_events(run_id)]


class Receipt(pydantic.BaseModel):
    order_id: int
    lines: list[str]


# ---------------------------------------------------------------------- triggering


async def test_trigger_returns_handle_and_stores_the_run(dsn: str) -> None:
    app = App("t")

    @app.job(queue="mail", priority=3)
    async def send(to: str, copies: int = 1, tags: list[str] | None = None) -> None: ...

    async with app.client(dsn) as client:
        run = await client.trigger_async(send, "a@b.c", tags=["x"])
        assert (run.id, run.created, run.job) == (1, True, send)
        record = await client.get_run(run.id)
        assert record.args == {"to": "a@b.c", "copies": 1, "tags": ["x"]}
        assert (record.job, record.queue, record.priority) == ("send", "mail", 3)
        assert (record.status, record.trigger) == (RunStatus.PENDING, Trigger.USER)
        assert (record.attempt, record.max_attempts) == (0, 1)
        assert (record.root_run_id, record.parent_run_id) == (run.id, None)
        assert record.not_before == record.created_at and record.started_at is None
        by_name = await client.trigger_async("send", to="d@e.f")
        assert by_name.id == 2
        assert await kinds(client, run.id) == ["pending"]
        with pytest.raises(RunNotFound):
            await client.get_run(999)


async def test_run_async_returns_typed_results(dsn: str) -> None:
    app = App("t")

    @app.job
    async def number() -> int:
        return 42

    @app.job
    async def text() -> str:
        return "ünïcode ✓"

    @app.job
    async def listing() -> list[int]:
        return [1, 2, 3]

    @app.job
    async def mapping() -> dict[str, Any]:
        return {"a": [1, {"b": None}], "c": 1.5}

    @app.job
    async def model(order_id: int) -> Receipt:
        return Receipt(order_id=order_id, lines=["x"])

    @app.job
    async def nothing() -> None:
        return None

    async with app.worker(dsn, **FAST), app.client(dsn) as client:
        assert await client.run_async(number) == 42
        assert await client.run_async(text) == "ünïcode ✓"
        assert await client.run_async(listing) == [1, 2, 3]
        assert await client.run_async(mapping) == {"a": [1, {"b": None}], "c": 1.5}
        receipt = await client.run_async(model, order_id=7)
        assert isinstance(receipt, Receipt) and receipt == Receipt(order_id=7, lines=["x"])
        assert await client.run_async(nothing) is None  # type: ignore[func-returns-value]
        run = await client.trigger_async(number)
        assert await run.result() == 42
        record = await run.get()
        assert record.status is RunStatus.SUCCEEDED and record.result == 42
        assert record.progress == 1.0 and record.finished_at is not None


async def test_priority_first_then_age(dsn: str) -> None:
    app = App("t")
    order: list[str] = []

    @app.job
    async def step(label: str) -> None:
        order.append(label)

    async with app.client(dsn) as client:
        runs = []
        for label, priority in [("a0", 0), ("b5", 5), ("c0", 0), ("d9", 9), ("e5", 5)]:
            runs.append(await client.trigger_async(step.options(priority=priority), label))
        async with app.worker(dsn, concurrency=1, **FAST):
            for run in runs:
                await run.result(WAIT)
    assert order == ["d9", "b5", "e5", "a0", "c0"]


async def test_not_before_delays_a_run(dsn: str) -> None:
    app = App("t")

    @app.job
    async def tick(n: int) -> int:
        return n

    async with app.worker(dsn, **FAST), app.client(dsn) as client:
        delayed = await client.trigger_async(tick.options(not_before=timedelta(seconds=0.8)), 1)
        assert await client.run_async(tick, 2) == 2
        assert await delayed.result(WAIT) == 1
        record = await delayed.get()
        assert record.started_at is not None and record.started_at >= record.not_before
        assert record.not_before > record.created_at


async def test_not_after_in_the_past_expires_without_starting(dsn: str) -> None:
    app = App("t")
    started: list[int] = []

    @app.job
    async def late(n: int) -> None:
        started.append(n)

    async with app.worker(dsn, **FAST), app.client(dsn) as client:
        run = await client.trigger_async(late.options(not_after=timedelta(seconds=-1)), 1)
        with pytest.raises(RunExpired) as info:
            await run.result(WAIT)
        assert info.value.run_id == run.id
        record = await run.get()
        assert record.status is RunStatus.EXPIRED and record.finished_at is not None
        assert (record.attempt, record.started_at) == (0, None)
        assert await kinds(client, run.id) == ["pending", "expired"]
    assert started == []


async def test_dedup_conflict_return_and_release(dsn: str) -> None:
    app = App("t")

    @app.job
    async def charge(order: int) -> int:
        return order

    @app.job
    async def refund(order: int) -> int:
        return order

    keyed = charge.options(dedup_id="order-7")
    async with app.client(dsn) as client:
        first = await client.trigger_async(keyed, 7)
        with pytest.raises(DuplicateRun) as info:
            await client.trigger_async(keyed, 8)
        assert (info.value.existing_run_id, info.value.dedup_id) == (first.id, "order-7")
        again = await client.trigger_async(keyed.options(on_duplicate="return"), 9)
        assert (again.id, again.created) == (first.id, False)
        other = await client.trigger_async(refund.options(dedup_id="order-7"), 7)
        assert other.created  # the key is per job
        assert len((await client.get_runs(job="charge")).runs) == 1
        async with app.worker(dsn, **FAST):
            assert await first.result(WAIT) == 7
            fresh = await client.trigger_async(keyed, 10)
            assert fresh.created and fresh.id not in (first.id, other.id)
            assert await fresh.result(WAIT) == 10


async def test_trigger_many_and_strict_dedup_writes_nothing(dsn: str) -> None:
    app = App("t")

    @app.job
    async def square(n: int) -> int:
        return n * n

    async with app.client(dsn) as client:
        runs = await client.trigger_many(square, [{"n": n} for n in range(40)])
        ids = [run.id for run in runs]
        assert ids == sorted(ids) and len(set(ids)) == 40 and all(r.created for r in runs)
        assert (await client.get_run(ids[5])).args == {"n": 5}
        holder = await client.trigger_async(square.options(dedup_id="k"), 99)
        count = len((await client.get_runs(limit=1000)).runs)

        with pytest.raises(DuplicateRun):
            await client.trigger_many(square.options(dedup_id="k"), [{"n": 1}])
        backend = client.backend
        batch = [
            NewRun("square", "default", '{"n": 1}'),
            NewRun("square", "default", '{"n": 2}', dedup_id="k"),
        ]
        with pytest.raises(DuplicateRun) as info:
            await backend.enqueue(batch, reject_duplicates=True)
        assert info.value.existing_run_id == holder.id
        assert len((await client.get_runs(limit=1000)).runs) == count

        result = await backend.enqueue(batch)
        assert result[1] == Enqueued(holder.id, False) and result[0].created
        async with app.worker(dsn, **FAST):
            assert [await run.result(WAIT) for run in runs[:3]] == [0, 1, 4]


# ---------------------------------------------------------------------- cancelling


async def test_cancel_pending_run(dsn: str) -> None:
    app = App("t")

    @app.job
    async def idle() -> None: ...

    async with app.client(dsn) as client:
        run = await client.trigger_async(idle)
        assert await client.cancel(run.id) == [(run.id, RunStatus.CANCELLED)]
        record = await run.get()
        assert record.status is RunStatus.CANCELLED and record.finished_at is not None
        with pytest.raises(RunCancelled):
            await run.result(WAIT)
        assert await client.cancel(run.id) == []  # finished runs stay as they are
        assert await kinds(client, run.id) == ["pending", "cancelled"]
        with pytest.raises(RunNotFound):
            await client.cancel(12345)


async def test_cancel_running_run_cancels_its_task(dsn: str) -> None:
    app = App("t")
    started, stopped = asyncio.Event(), asyncio.Event()

    @app.job
    async def forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            stopped.set()
            raise

    async with app.worker(dsn, **FAST), app.client(dsn) as client:
        run = await client.trigger_async(forever)
        await asyncio.wait_for(started.wait(), WAIT)
        assert await client.cancel(run.id) == [(run.id, RunStatus.RUNNING)]
        with pytest.raises(RunCancelled):
            await run.result(WAIT)
        assert stopped.is_set()
        record = await run.get()
        assert record.status is RunStatus.CANCELLED and record.cancel_requested
        assert await kinds(client, run.id) == [
            "pending",
            "running",
            "cancel_requested",
            "cancelled",
        ]


async def test_cancel_cascade_reaches_every_descendant(dsn: str) -> None:
    app = App("t")
    leaf_started = asyncio.Event()

    @app.job
    async def leaf() -> None:
        leaf_started.set()
        await asyncio.Event().wait()

    @app.job
    async def middle() -> None:
        await leaf.options(not_before=timedelta(hours=1)).trigger_async()
        await leaf.run_async()

    @app.job
    async def top() -> None:
        await middle.run_async()

    async with app.worker(dsn, **FAST), app.client(dsn) as client:
        run = await client.trigger_async(top)
        await asyncio.wait_for(leaf_started.wait(), WAIT)
        tree = (await client.get_runs(root_run_id=run.id)).runs
        assert len(tree) == 4
        assert sorted(r.status for r in tree) == ["pending", "running", "running", "running"]
        changed = await client.cancel(run.id, cascade=True)
        pending_now = RunStatus.CANCELLED  # a pending run is cancelled at once
        assert changed == [
            (r.id, pending_now if r.status is RunStatus.PENDING else RunStatus.RUNNING)
            for r in sorted(tree, key=lambda r: r.id)
        ]
        with pytest.raises(RunCancelled):
            await run.result(WAIT)
        for record in tree:
            await status_is(client, record.id, RunStatus.CANCELLED)


async def test_cancel_without_cascade_leaves_children(dsn: str) -> None:
    app = App("t")

    @app.job
    async def node() -> None: ...

    async with app.client(dsn) as client:
        backend = client.backend
        root = await client.trigger_async(node)
        (child,) = await backend.enqueue(
            [NewRun("node", "default", "{}", parent_run_id=root.id, root_run_id=root.id)]
        )
        (grandchild,) = await backend.enqueue(
            [NewRun("node", "default", "{}", parent_run_id=child.run_id, root_run_id=root.id)]
        )
        assert await client.cancel(root.id) == [(root.id, RunStatus.CANCELLED)]
        assert (await client.get_run(child.run_id)).status is RunStatus.PENDING
        changed = await client.cancel(child.run_id, cascade=True)
        assert changed == [
            (child.run_id, RunStatus.CANCELLED),
            (grandchild.run_id, RunStatus.CANCELLED),
        ]


# ---------------------------------------------------------------------- reading


async def test_get_runs_filters_and_paging(dsn: str) -> None:
    app = App("t")

    @app.job
    async def alpha() -> None: ...

    @app.job
    async def beta() -> None: ...

    async with app.client(dsn) as client:
        a = [(await client.trigger_async(alpha)).id for _ in range(3)]
        b = [(await client.trigger_async(beta)).id for _ in range(2)]
        kids = await client.backend.enqueue(
            [
                NewRun("beta", "default", "{}", parent_run_id=a[0], trigger=Trigger.CHILD)
                for _ in range(2)
            ]
        )
        kid_ids = [k.run_id for k in kids]
        await client.cancel(b[0])

        async def ids(**where: Any) -> list[int]:
            return [r.id for r in (await client.get_runs(**where)).runs]

        assert await ids(job="alpha") == a[::-1]
        assert await ids(job="beta") == (b + kid_ids)[::-1]
        assert await ids(status="cancelled") == [b[0]]
        assert await ids(status=RunStatus.PENDING, job="alpha") == a[::-1]
        assert await ids(parent_run_id=a[0]) == kid_ids[::-1]
        assert await ids(trigger="child") == kid_ids[::-1]
        assert await ids(trigger=Trigger.USER) == (a + b)[::-1]
        assert await ids(root_run_id=kid_ids[0]) == [kid_ids[0]]  # no root given: its own

        seen, cursor = [], None
        while True:
            page = await client.get_runs(limit=3, cursor=cursor)
            seen += [r.id for r in page.runs]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert seen == sorted(a + b + kid_ids, reverse=True)
        with pytest.raises(InvalidArguments):
            await client.get_runs(status="nonsense")


async def test_parent_child_root_ids_three_levels_deep(dsn: str) -> None:
    app = App("t")

    @app.job
    async def grandchild(n: int) -> int:
        return n + 1

    @app.job
    async def child(n: int) -> int:
        return await grandchild.run_async(n * 10)

    @app.job
    async def root(ctx: Context, n: int) -> int:
        assert ctx.run_id == ctx.root_run_id
        return await child.run_async(n)

    async with app.worker(dsn, concurrency=1, **FAST), app.client(dsn) as client:
        run = await client.trigger_async(root, 4)
        assert await run.result(WAIT) == 41
        runs = {r.job: r for r in (await client.get_runs(root_run_id=run.id)).runs}
        children = (await client.get_runs(parent_run_id=run.id)).runs
        tree_root, tree = await client.get_tree(runs["grandchild"].id)
        assert await client.root_of(runs["grandchild"].id) == tree_root == run.id
        with pytest.raises(RunNotFound):
            await client.root_of(10**9)
    assert [r.job for r in children] == ["child"]
    assert [r.job for r in tree] == ["root", "child", "grandchild"]
    assert all(r.version > 0 for r in tree)
    assert set(runs) == {"root", "child", "grandchild"}
    assert runs["root"].parent_run_id is None and runs["root"].trigger is Trigger.USER
    assert runs["child"].parent_run_id == run.id
    assert runs["grandchild"].parent_run_id == runs["child"].id
    assert {r.root_run_id for r in runs.values()} == {run.id}
    assert runs["child"].trigger is runs["grandchild"].trigger is Trigger.CHILD


# ---------------------------------------------------------------------- failures


async def test_failing_job_raises_run_failed(dsn: str) -> None:
    app = App("t")

    @app.job
    async def explode(order: int) -> None:
        raise ValueError(f"bad order {order}")

    async with app.worker(dsn, **FAST), app.client(dsn) as client:
        run = await client.trigger_async(explode, 7)
        with pytest.raises(RunFailed) as info:
            await run.result(WAIT)
        error = info.value
        assert (error.run_id, error.error_type, error.error_message) == (
            run.id,
            "ValueError",
            "bad order 7",
        )
        assert "in explode" in error.traceback and "ValueError: bad order 7" in error.traceback
        record = await run.get()
        assert record.status is RunStatus.FAILED and record.result is None
        assert record.error is not None and record.error["attempt"] == 1
        assert record.errors == [record.error]
        assert await kinds(client, run.id) == ["pending", "running", "failed"]


async def test_retries_keep_every_error(dsn: str) -> None:
    app = App("t")

    @app.job(retries=2, backoff_base=0.01)
    async def flaky(ctx: Context) -> int:
        if ctx.attempt < 3:
            raise RuntimeError(f"attempt {ctx.attempt}")
        return ctx.attempt

    @app.job(retries=1, backoff_base=0.01)
    async def hopeless() -> None:
        raise RuntimeError("never")

    async with app.worker(dsn, **FAST), app.client(dsn) as client:
        run = await client.trigger_async(flaky)
        assert await run.result(WAIT) == 3
        record = await run.get()
        assert (record.status, record.attempt, record.max_attempts) == (RunStatus.SUCCEEDED, 3, 3)
        assert record.trigger is Trigger.RETRY and record.error is None
        assert [(e["attempt"], e["message"]) for e in record.errors] == [
            (1, "attempt 1"),
            (2, "attempt 2"),
        ]
        assert await kinds(client, run.id) == [
            "pending",
            "running",
            "retrying",
            "running",
            "retrying",
            "running",
            "succeeded",
        ]
        retrying = [e for e in await client.get_events(run.id) if e.kind == "retrying"]
        assert retrying[0].data["attempt"] == 1 and "retry_at" in retrying[0].data

        with pytest.raises(RunFailed):
            await client.run_async(hopeless)
        (failed,) = (await client.get_runs(job="hopeless")).runs
        assert (failed.attempt, len(failed.errors)) == (2, 2)


async def test_job_timeout_fails_the_run(dsn: str) -> None:
    app = App("t")

    @app.job(timeout=0.2)
    async def slow() -> None:
        await asyncio.sleep(60)

    async with app.worker(dsn, **FAST), app.client(dsn) as client:
        with pytest.raises(RunFailed) as info:
            await client.run_async(slow)
    assert info.value.error_type == "asyncjobs.errors.JobTimeout"
    assert "timeout of 0.2 s" in info.value.error_message


# ---------------------------------------------------------------------- worker writes


async def test_completions_are_fenced(dsn: str) -> None:
    app = App("t")

    @app.job
    async def work(n: int) -> int:
        return n

    async with app.client(dsn) as client:
        backend = client.backend
        run = await client.trigger_async(work, 1)
        (claimed,) = await backend.claim("w1", ["default"], ["work"], 5, 30.0)
        assert (claimed.id, claimed.attempt, claimed.worker_id) == (run.id, 1, "w1")
        assert claimed.status is RunStatus.RUNNING and claimed.lease_expires_at is not None
        done = Completion(run.id, 1, RunStatus.SUCCEEDED, result_json="1")
        wrong_attempt = Completion(run.id, 2, RunStatus.SUCCEEDED, result_json="2")
        assert await backend.complete("w1", [wrong_attempt]) == set()
        assert await backend.complete("w2", [done]) == set()
        assert await backend.add_events("w2", [(run.id, 1, "log", {"message": "x"})]) == 0
        beat = await backend.heartbeat("w1", [(run.id, 2)], 30.0)
        assert beat.kept == frozenset() and not beat.registered
        assert await client.get_run(run.id) == claimed  # nothing changed

        assert await backend.complete("w1", [done]) == {run.id}
        record = await client.get_run(run.id)
        assert (record.status, record.result, record.worker_id) == (RunStatus.SUCCEEDED, 1, None)
        failed = Completion(run.id, 1, RunStatus.FAILED, error={"type": "X"})
        assert await backend.complete("w1", [failed]) == set()  # not running any more
        assert (await client.get_run(run.id)).status is RunStatus.SUCCEEDED


async def test_progress_and_log_events(dsn: str) -> None:
    app = App("t")

    @app.job
    async def report(ctx: Context) -> None:
        await ctx.progress(0.25)
        await ctx.progress(0.5, "half way")
        await ctx.log("hello", level="warning", order=7)

    async with app.worker(dsn, **FAST) as worker, app.client(dsn) as client:
        run = await client.trigger_async(report)
        await run.result(WAIT)
        events = await client.get_events(run.id)
        record = await run.get()
    assert [e.kind for e in events] == [
        "pending",
        "running",
        "progress",
        "progress",
        "log",
        "succeeded",
    ]
    assert [e.id for e in events] == sorted(e.id for e in events)
    assert all(e.run_id == run.id and e.root_run_id == run.id for e in events)
    created = {"job": "report", "queue": "default", "parent_run_id": None, "trigger": "user"}
    assert events[0].data == created
    assert events[1].data == {"attempt": 1, "worker": worker.id}
    assert events[2].data == {"progress": 0.25}
    assert events[3].data == {"progress": 0.5, "message": "half way"}
    assert events[4].data == {"level": "warning", "message": "hello", "fields": {"order": 7}}
    assert events[5].data == {"attempt": 1}
    assert record.progress == 1.0 and record.status_message == "half way"


# ---------------------------------------------------------------------- backend level


async def test_claim_honours_limits_and_disabled_jobs_and_queues(dsn: str) -> None:
    backend = PostgresBackend(dsn)
    await backend.open()
    try:
        await backend.register_definitions(
            [QueueDefinition("default", None), QueueDefinition("narrow", 3)],
            [
                JobDefinition("limited", "default", 2, {}),
                JobDefinition("free", "default", None, {}),
                JobDefinition("inner", "narrow", None, {}),
            ],
        )
        new = [NewRun("limited", "default", "{}", priority=p) for p in (0, 1, 2, 3)]
        new += [NewRun("free", "default", "{}") for _ in range(3)]
        new += [NewRun("inner", "narrow", "{}") for _ in range(5)]
        ids = [e.run_id for e in await backend.enqueue(new)]

        async def claim(queues: list[str], capacity: int = 10) -> list[int]:
            runs = await backend.claim("w", queues, ["limited", "free", "inner"], capacity, 30)
            return [r.id for r in runs]

        # priority first: limited 3 and 2 (its limit), then the unprioritised by age
        assert await claim(["default"]) == [ids[3], ids[2], *ids[4:7]]
        assert await claim(["default"]) == []
        assert await claim(["narrow"], capacity=2) == ids[7:9]
        assert await claim(["narrow"]) == ids[9:10]  # the queue's limit is 3

        assert await backend.set_enabled("job", "free", False)
        assert not await backend.set_enabled("job", "missing", False)
        await backend.enqueue([NewRun("free", "default", "{}")])
        assert await claim(["default"]) == []
        assert await backend.set_enabled("queue", "narrow", False)
        await backend.complete("w", [Completion(ids[7], 1, RunStatus.SUCCEEDED, "null")])
        assert await claim(["narrow"]) == []
        assert await backend.set_enabled("queue", "narrow", True)
        assert await claim(["narrow"]) == ids[10:11]
        # a deploy re-registering definitions does not enable what an operator disabled
        await backend.register_definitions([], [JobDefinition("free", "default", None, {})])
        assert await claim(["default"]) == []
    finally:
        await backend.close()


async def test_sweep_rescues_expired_leases_and_dead_workers(dsn: str) -> None:
    backend = PostgresBackend(dsn)
    await backend.open()
    try:
        await backend.register_worker(WorkerInfo("w", "host", 1, ("default",), ("j",), 2))
        # a crash is a restart (up to max_restarts), whatever the job's retries
        again, once, alive = await backend.enqueue(
            [
                NewRun("j", "default", "{}"),
                NewRun("j", "default", "{}", max_attempts=5, max_restarts=0),
                NewRun("j", "default", "{}"),
            ]
        )
        assert len(await backend.claim("w", ["default"], ["j"], 2, 0.3)) == 2
        assert len(await backend.claim("w", ["default"], ["j"], 2, 60.0)) == 1

        rescued = 0

        async def sweep_done() -> bool:
            nonlocal rescued
            result = await backend.sweep(0.3)
            rescued += result.restarted + result.failed
            return rescued == 2

        await eventually(sweep_done)
        retried, failed = await backend.get_run(again.run_id), await backend.get_run(once.run_id)
        assert retried is not None and failed is not None
        assert (retried.status, retried.trigger, retried.worker_id) == (
            RunStatus.PENDING,
            Trigger.RESTART,
            None,
        )
        assert failed.status is RunStatus.FAILED and failed.finished_at is not None
        assert failed.error is not None and failed.error["type"] == "LeaseExpired"
        assert [e["type"] for e in retried.errors] == ["LeaseExpired"]
        assert (retried.restarts, retried.retries, failed.restarts) == (1, 0, 0)
        beat = await backend.heartbeat("w", [(again.run_id, 1), (alive.run_id, 1)], 30.0)
        assert beat.kept == {alive.run_id}  # a live lease is never swept
        assert not beat.registered  # the worker was silent past the ttl and is gone
        events = await backend.get_events(again.run_id, 0, 10)
        assert events[-1].kind == "pending" and events[-1].data["rescued"] is True
        (reclaimed,) = await backend.claim("w2", ["default"], ["j"], 2, 30)
        assert (reclaimed.id, reclaimed.attempt) == (again.run_id, 2)
    finally:
        await backend.close()


async def test_notifications_carry_what_waiters_and_workers_need(dsn: str) -> None:
    backend = PostgresBackend(dsn)
    await backend.open()
    await backend.register_definitions([], [JobDefinition("j", "q", 1, {})])
    received: list[Notification] = []

    def listener(notification: Notification) -> None:
        if not notification.reconnected:  # the (first) connect's catch-up signal
            received.append(notification)

    backend.add_listener(listener)
    try:
        await asyncio.wait_for(backend._listener.connected.wait(), WAIT)

        async def arrived(count: int) -> list[Notification]:
            async def check() -> bool:
                return len(received) >= count

            await eventually(check)
            return received[count - 1 : count]

        (run,) = await backend.enqueue([NewRun("j", "q", "{}")])
        # the claimers of this process are woken at once, in the process; the NOTIFY comes
        # back too (for the event feed) but does not wake them again (in either order)
        await arrived(2)
        assert sorted(received, key=repr) == [
            Notification(events=True), Notification(queues=frozenset({"q"}))
        ]
        await backend.claim("w", ["q"], ["j"], 1, 30)
        await backend.add_events("w", [(run.run_id, 1, "log", {"message": "m"})])
        assert await arrived(3) == [Notification(events=True)]
        await backend.cancel(run.run_id, cascade=False)
        assert await arrived(4) == [Notification(cancel=frozenset({run.run_id}), events=True)]
        await backend.complete("w", [Completion(run.run_id, 1, RunStatus.CANCELLED)])
        # the job has a limit, so the slot it frees wakes its queue's workers too
        done = Notification(done=frozenset({run.run_id}), queues=frozenset({"q"}), events=True)
        assert await arrived(5) == [done]
        # a success's result travels with it (a waiting run_async needs no query)
        (second,) = await backend.enqueue([NewRun("j", "q", "{}")])
        await arrived(7)
        await backend.claim("w", ["q"], ["j"], 1, 30)
        ok = Completion(second.run_id, 1, RunStatus.SUCCEEDED, result_json='{"b": [1, 2.5]}')
        await backend.complete("w", [ok])
        (finished,) = await arrived(8)
        assert finished.done == {second.run_id}
        assert finished.results == {second.run_id: {"b": [1, 2.5]}}
    finally:
        backend.remove_listener(listener)
        await backend.close()


async def test_one_backend_shared_by_client_and_worker(dsn: str) -> None:
    app = App("t")

    @app.job
    async def double(n: int) -> int:
        return 2 * n

    backend = PostgresBackend(dsn)
    async with app.worker(backend, **FAST), app.client(backend) as client:
        assert await client.run_async(double, 21) == 42
    with pytest.raises(RuntimeError, match="not open"):
        await backend.get_runs(RunFilter())

    await backend.open()
    await backend.open()
    await backend.close()
    assert [r.id for r in await backend.get_runs(RunFilter())] == [1]  # still open
    await backend.close()
    await backend.close()  # one close too many does nothing
    with pytest.raises(RuntimeError, match="not open"):
        await backend.get_run(1)
