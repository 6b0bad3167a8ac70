"""No statement fails on NOTIFY's 8,000-byte payload limit, and listeners catch up when a
list was too long to send: cascade cancel of a 10,000-run tree, a sweep rescuing 10,000 runs,
``trigger_many`` of 10,000 runs and an enqueue into many long-named queues.

The clients and workers here poll rarely (30–60 s): what they do within the test's few
seconds, only a notification (or the catch-up it triggers) can have made them do.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from asyncjobs import App, Context, RunCancelled, RunFailed
from asyncjobs.backends.base import NewRun, Notification
from asyncjobs.backends.listener import parse_notification
from asyncjobs.backends.postgres import SWEEP_BATCH, PostgresBackend
from asyncjobs.client import Client
from asyncjobs.runs import RunStatus
from tests.faults import eventually

pytestmark = pytest.mark.anyio

TREE = 10_000
#: rarely: only a notification can make something happen within the test
SLOW_POLL = 60.0

app = App("notify_limits")
app.queue("other")
started = asyncio.Event()


@app.job
async def sleeper(ctx: Context) -> str:
    started.set()
    await asyncio.sleep(120)
    return "woke"


@app.job
async def noop() -> None:
    return None


@pytest.fixture
async def conn(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(dsn)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
async def client(dsn: str) -> AsyncIterator[Client]:
    async with Client(app, PostgresBackend(dsn), poll_interval=SLOW_POLL) as opened:
        yield opened


async def _payloads(conn: asyncpg.Connection) -> list[str]:
    """Every payload sent on the channel from now on, appended as it arrives."""
    seen: list[str] = []
    await conn.add_listener("asyncjobs", lambda *args: seen.append(str(args[-1])))
    return seen


async def _received(seen: list[str], count: int = 1) -> list[Notification]:
    async def arrived() -> bool:
        return len(seen) >= count

    await eventually(arrived, what="notification")
    assert all(len(p.encode()) < 8000 for p in seen)
    return [parse_notification(p) for p in seen]


# ---------------------------------------------------------------------- the payload itself


async def test_long_lists_become_flags(dsn: str, conn: asyncpg.Connection) -> None:
    listener = await asyncpg.connect(dsn)
    try:
        seen = await _payloads(listener)
        long_queues = [f"{n:03d}" + "q" * 196 for n in range(60)]  # 12,000 bytes of names
        await conn.execute(
            "SELECT asyncjobs.notify($1, $2, $3)",
            long_queues, list(range(TREE)), list(range(TREE)),
        )  # fmt: skip
        await conn.execute("SELECT asyncjobs.notify($1, $2, $3)", ["a", "b"], [1, 2], [3])
        # ids of 19 digits: 300 of them are 6,000 bytes, two lists of them do not fit
        big = [9_000_000_000_000_000_000 + n for n in range(300)]
        await conn.execute("SELECT asyncjobs.notify($1, $2, $3)", ["q"], big, big)
        cut, small, long_ids = await _received(seen, 3)
    finally:
        await listener.close()
    assert (cut.all_queues, cut.many_done, cut.cancel_many) == (True, True, True)
    assert (cut.queues, cut.done, cut.cancel) == (frozenset(), frozenset(), frozenset())
    assert (small.queues, small.done, small.cancel) == (
        frozenset({"a", "b"}), frozenset({1, 2}), frozenset({3})
    )
    assert not (small.all_queues or small.many_done or small.cancel_many)
    # the short queue list is kept; one id list is cut (the longest), the other is sent
    assert long_ids.queues == {"q"} and long_ids.many_done != long_ids.cancel_many
    assert (long_ids.done or long_ids.cancel) == set(big)


# ---------------------------------------------------------------------- cascade cancel


async def test_cascade_cancel_of_a_10000_run_tree(
    dsn: str, conn: asyncpg.Connection, client: Client
) -> None:
    started.clear()
    # heartbeats every 30 s: only the cancel_many flag can make the worker ask in time
    worker = app.worker(
        dsn, lease=90, heartbeat_interval=30, poll_interval=0.2, retention=None
    )
    async with worker:
        root = await client.trigger_async(sleeper)
        await asyncio.wait_for(started.wait(), 20)
        await conn.execute(
            "INSERT INTO asyncjobs.runs (job, queue, args, parent_run_id, root_run_id)"
            " SELECT 'noop', 'other', '{}', $1, $1 FROM generate_series(1, $2)",
            root.id, TREE - 1,
        )  # fmt: skip
        child = await conn.fetchval(
            "SELECT max(id) FROM asyncjobs.runs WHERE root_run_id = $1", root.id
        )
        waiting = asyncio.ensure_future(client.wait_result(child, noop))
        await asyncio.sleep(0.2)  # the waiter has checked once and listens
        begun = time.monotonic()
        changed = await client.cancel(root.id, cascade=True)
        assert len(changed) == TREE
        assert {status for _, status in changed} == {RunStatus.CANCELLED, RunStatus.RUNNING}
        # the waiter learns it from the 'many' flag, not from a poll
        with pytest.raises(RunCancelled):
            await asyncio.wait_for(waiting, 10)

        async def root_cancelled() -> bool:
            return (await client.get_run(root.id)).status is RunStatus.CANCELLED

        await eventually(root_cancelled, timeout=10, what="running root cancelled")
        elapsed = time.monotonic() - begun
    assert elapsed < 10  # far below the 30 s heartbeat
    left = await conn.fetchval(
        "SELECT count(*) FROM asyncjobs.runs WHERE root_run_id = $1 AND status <> 'cancelled'",
        root.id,
    )
    assert left == 0


# ---------------------------------------------------------------------- sweep


async def test_sweep_rescues_10000_runs_in_one_pass(
    dsn: str, conn: asyncpg.Connection, client: Client
) -> None:
    half = TREE // 2
    await conn.execute(
        "INSERT INTO asyncjobs.runs (job, queue, args, root_run_id, max_restarts)"
        " SELECT 'noop', 'other', '{}', 0, CASE WHEN n <= $2 THEN 10 ELSE 0 END"
        "   FROM generate_series(1, $1) n",
        TREE, half,
    )  # fmt: skip
    # a worker that vanished while it held all of them
    await conn.execute(
        "UPDATE asyncjobs.runs SET root_run_id = id, status = 'running', attempt = 1,"
        " worker_id = 'ghost', started_at = now(), lease_expires_at = now() - interval '1 s'"
    )
    doomed = await conn.fetchval("SELECT max(id) FROM asyncjobs.runs")  # max_restarts 0
    waiting = asyncio.ensure_future(client.wait_result(doomed, noop))
    await asyncio.sleep(0.2)
    # one worker sweeping every 2-4 s (serving a queue the runs are not in): a full batch
    # sweeps again at once, so all 10,000 are rescued long before 20 sweep intervals
    worker = app.worker(dsn, queues=["default"], sweep_interval=4, retention=None)
    begun = time.monotonic()
    async with worker:

        async def all_rescued() -> bool:
            return not await conn.fetchval(
                "SELECT count(*) FROM asyncjobs.runs WHERE status = 'running'"
            )

        await eventually(all_rescued, timeout=30, what="10,000 rescued")
        elapsed = time.monotonic() - begun
        with pytest.raises(RunFailed, match="LeaseExpired"):
            await asyncio.wait_for(waiting, 10)
    assert elapsed < 20, f"{elapsed:.1f} s: the sweeper did not go on after full batches"
    assert worker.stats.rescued_by_sweep == TREE
    counts = {
        key: n
        for key, n in await conn.fetch(
            "SELECT status::text || ' ' || restarts, count(*) FROM asyncjobs.runs GROUP BY 1"
        )
    }
    assert counts == {"pending 1": half, "failed 0": TREE - half}
    assert TREE // SWEEP_BATCH > 10  # many batches, not one


# ---------------------------------------------------------------------- enqueue


async def test_trigger_many_10000_and_many_long_queue_names(
    dsn: str, conn: asyncpg.Connection, client: Client
) -> None:
    listener = await asyncpg.connect(dsn)
    try:
        seen = await _payloads(listener)
        runs = await client.trigger_many(noop, [{}] * TREE)
        assert len(runs) == TREE
        (first,) = await _received(seen)
        assert first.queues == {"default"}
        # 60 queue names of 199 characters do not fit in one payload
        names = [f"{n:03d}" + "q" * 196 for n in range(60)]
        await client.backend.enqueue([NewRun("noop", name, "{}") for name in names])
        (_, second) = await _received(seen, 2)
        assert second.all_queues and not second.queues
    finally:
        await listener.close()
    total = await conn.fetchval("SELECT count(*) FROM asyncjobs.runs")
    assert total == TREE + len(names)


async def test_a_worker_wakes_on_all_queues(dsn: str, client: Client) -> None:
    """A claimer that polls every 60 s claims at once when told 'all queues'."""
    async with app.worker(dsn, poll_interval=SLOW_POLL, retention=None) as worker:
        await asyncio.sleep(0.5)  # its first claim found nothing; it sleeps for 60 s
        claims = worker.stats.claims
        names = [f"{n:03d}" + "q" * 196 for n in range(60)]
        await client.backend.enqueue(
            [NewRun("noop", name, "{}") for name in names] + [NewRun("noop", "default", "{}")]
        )

        async def claimed() -> bool:
            return worker.stats.claims > claims and worker.stats.succeeded == 1

        await eventually(claimed, timeout=10, what="woken by all_queues")


def test_notification_flags_parse() -> None:
    parsed = parse_notification('{"many": true, "cancel_many": true, "all_queues": true}')
    assert parsed.many_done and parsed.cancel_many and parsed.all_queues
    assert not parse_notification('{"queues": ["a"]}').all_queues

