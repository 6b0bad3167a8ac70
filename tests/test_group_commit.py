"""Group commit: concurrent ``trigger_async`` calls share one insert and one commit, and every
caller still gets its own run id or its own error (asyncjobs.groupcommit).

The database tells how many statements wrote the runs: the rows one transaction inserted share
its ``xmin``. Without coalescing every call is its own transaction.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from asyncjobs import App, DuplicateRun, InvalidArguments, Run
from asyncjobs.backends.base import NewRun
from asyncjobs.backends.postgres import PostgresBackend
from asyncjobs.errors import DatabaseBusy, DatabaseUnavailable
from asyncjobs.groupcommit import GroupCommit

pytestmark = pytest.mark.anyio

app = App("group")


@app.job
async def echo(n: int) -> int:
    return n


async def _rows(dsn: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(
            "SELECT id, (args ->> 'n')::int AS n, dedup_id, xmin::text AS xmin"
            "  FROM asyncjobs.runs ORDER BY id"
        )
    finally:
        await conn.close()


async def test_concurrent_triggers_share_statements_and_keep_their_own_ids(dsn: str) -> None:
    async with app.client(dsn) as client:
        runs = await asyncio.gather(*(client.trigger_async(echo, n=n) for n in range(200)))
    rows = await _rows(dsn)
    assert len({run.id for run in runs}) == 200
    by_id = {row["id"]: row["n"] for row in rows}
    # each caller's id is the row holding its own arguments
    assert [by_id[run.id] for run in runs] == list(range(200))
    assert all(run.created for run in runs)
    # the first call went out alone; the 199 that arrived meanwhile went out together
    assert len({row["xmin"] for row in rows}) == 2


async def test_sequential_triggers_go_out_one_by_one(dsn: str) -> None:
    async with app.client(dsn) as client:
        runs = [await client.trigger_async(echo, n=n) for n in range(5)]
    rows = await _rows(dsn)
    assert [row["id"] for row in rows] == [run.id for run in runs]
    assert len({row["xmin"] for row in rows}) == 5


async def test_each_caller_of_a_coalesced_batch_gets_its_own_outcome(dsn: str) -> None:
    async with app.client(dsn) as client:
        holder = await client.trigger_async(echo.options(dedup_id="held"), n=-1)
        backend = client.backend
        assert isinstance(backend, PostgresBackend)
        sent_before = backend._group.statements
        bad = NewRun(job="x" * 201, queue="default", args_json="{}")  # runs_job_check
        calls: list[Any] = [
            client.trigger_async(echo, n=0),  # goes out alone; the rest queue behind it
            client.trigger_async(echo, n=1),
            client.trigger_async(echo.options(dedup_id="held"), n=2),
            client.trigger_async(echo.options(dedup_id="held", on_duplicate="return"), n=3),
            backend.enqueue([bad]),
            client.trigger_async(echo.options(dedup_id="new"), n=5),
            client.trigger_async(echo.options(dedup_id="new"), n=6),
            client.trigger_async(echo, n="x"),  # type: ignore[call-overload]  # refused at once
            client.trigger_async(echo, n=8),
        ]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        sent = backend._group.statements - sent_before
    rows = await _rows(dsn)
    stored = {row["id"]: row["n"] for row in rows}

    def run_of(n: int) -> int:
        outcome = outcomes[n]
        assert isinstance(outcome, Run) and outcome.created
        assert stored[outcome.id] == n
        return outcome.id

    created = [run_of(n) for n in (0, 1, 5, 8)]
    duplicate = outcomes[2]
    assert isinstance(duplicate, DuplicateRun) and duplicate.existing_run_id == holder.id
    returned = outcomes[3]
    assert isinstance(returned, Run) and (returned.id, returned.created) == (holder.id, False)
    assert isinstance(outcomes[4], InvalidArguments)
    assert "job name" in str(outcomes[4])
    second = outcomes[6]
    assert isinstance(second, DuplicateRun) and second.existing_run_id == created[2]
    assert isinstance(outcomes[7], InvalidArguments)
    # every good run written once, the bad one not at all
    assert sorted(stored.values()) == [-1, 0, 1, 5, 8]
    # one alone, the refused batch of seven, then each of those seven on its own
    assert sent == 1 + 1 + 7


async def test_a_caller_cancelled_while_queued_is_not_written(dsn: str) -> None:
    async with app.client(dsn) as client:
        first = asyncio.ensure_future(client.trigger_async(echo, n=1))
        queued = asyncio.ensure_future(client.trigger_async(echo, n=2))
        third = asyncio.ensure_future(client.trigger_async(echo, n=3))
        await asyncio.sleep(0)  # all three started: the first one's statement is in flight
        queued.cancel()
        results = await asyncio.gather(first, queued, third, return_exceptions=True)
    assert isinstance(results[1], asyncio.CancelledError)
    assert sorted(row["n"] for row in await _rows(dsn)) == [1, 3]


async def test_the_kept_connection_goes_back_to_the_pool_when_idle(dsn: str) -> None:
    backend = PostgresBackend(dsn)
    backend._held._idle = 0.05
    await backend.open()
    try:
        await backend.enqueue([NewRun(job="echo", queue="default", args_json='{"n": 1}')])
        assert backend._held._conn is not None
        for _ in range(200):  # the timer fires after 50 ms; the release is a task
            if backend._held._conn is None and not backend._held._releases:
                break
            await asyncio.sleep(0.01)
        assert backend._held._conn is None
        assert backend.pool.get_idle_size() == backend.pool.get_size()
    finally:
        await backend.close()


# ---------------------------------------------------------------- the coalescer alone


class _Sender:
    """A ``send`` the test controls: each call waits until released, records its items."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.gates: list[asyncio.Event] = []
        self.fail: dict[int, Exception] = {}  # item -> error when sent with others or alone
        self.fail_batches: Exception | None = None
        self.hold = True  # False: calls return at their next step
        self.called = asyncio.Event()  # set by every call

    async def __call__(self, items: list[int]) -> list[str]:
        self.calls.append(items)
        self.called.set()
        gate = asyncio.Event()
        self.gates.append(gate)
        if self.hold:
            await gate.wait()
        else:
            await asyncio.sleep(0)
        if len(items) > 1 and self.fail_batches is not None:
            raise self.fail_batches
        for item in items:
            if item in self.fail:
                raise self.fail[item]
        return [f"run-{item}" for item in items]

    def release_all(self) -> None:
        self.hold = False
        for gate in self.gates:
            gate.set()


def _split(error: Exception) -> bool:
    return not isinstance(error, DatabaseUnavailable)


async def _started(group: GroupCommit[int, str], items: list[int]) -> list[asyncio.Task[str]]:
    tasks = [asyncio.ensure_future(group.submit(item)) for item in items]
    await asyncio.sleep(0)
    return tasks


async def test_a_caller_cancelled_after_its_batch_was_sent_leaves_the_batch_whole() -> None:
    send = _Sender()
    group: GroupCommit[int, str] = GroupCommit(send, _split)
    tasks = await _started(group, [1, 2, 3])
    assert send.calls == [[1]]
    send.called.clear()
    send.gates[0].set()
    await send.called.wait()
    assert send.calls == [[1], [2, 3]]  # sent: cancelling 2 now cannot take it back
    tasks[1].cancel()
    send.gates[1].set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert results[0] == "run-1" and results[2] == "run-3"
    assert isinstance(results[1], asyncio.CancelledError)
    assert send.calls == [[1], [2, 3]]  # nothing sent again


async def test_a_refused_batch_is_sent_again_item_by_item() -> None:
    send = _Sender()
    send.fail = {3: InvalidArguments("item 3 is bad")}
    group: GroupCommit[int, str] = GroupCommit(send, _split)
    tasks = await _started(group, [1, 2, 3, 4])
    send.release_all()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert results[:2] == ["run-1", "run-2"] and results[3] == "run-4"
    assert isinstance(results[2], InvalidArguments)
    assert send.calls == [[1], [2, 3, 4], [2], [3], [4]]


async def test_an_unknown_outcome_is_not_sent_again() -> None:
    send = _Sender()
    send.fail_batches = DatabaseUnavailable("connection lost")
    group: GroupCommit[int, str] = GroupCommit(send, _split)
    tasks = await _started(group, [1, 2, 3])
    send.release_all()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert results[0] == "run-1"
    assert all(isinstance(r, DatabaseUnavailable) for r in results[1:])
    assert send.calls == [[1], [2, 3]]


async def test_a_busy_database_retries_each_item_once() -> None:
    send = _Sender()
    send.fail_batches = DatabaseBusy("deadlock detected")
    group: GroupCommit[int, str] = GroupCommit(send, _split)
    tasks = await _started(group, [1, 2, 3])
    send.release_all()
    assert await asyncio.gather(*tasks) == ["run-1", "run-2", "run-3"]
    assert send.calls == [[1], [2, 3], [2], [3]]


async def test_batches_are_capped() -> None:
    send = _Sender()
    group: GroupCommit[int, str] = GroupCommit(send, _split, max_batch=2)
    tasks = await _started(group, [1, 2, 3, 4, 5])
    send.release_all()
    assert await asyncio.gather(*tasks) == [f"run-{i}" for i in range(1, 6)]
    assert send.calls == [[1], [2, 3], [4, 5]]
