"""The event feed: commit-safe order, resume without gap or duplicate, watch(), retention."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest

from asyncjobs import App, Context, EventCursor, RunStatus, TraceUpdate
from asyncjobs.backends.postgres import PostgresBackend
from asyncjobs.feed import UpdateKind
from tests.web_support import wait_for

pytestmark = pytest.mark.anyio

INSERT_EVENT = """
    INSERT INTO asyncjobs.run_events (run_id, root_run_id, kind, data)
    VALUES (1, 1, 'log', jsonb_build_object('message', $1::text)) RETURNING id, xid
"""


async def insert_event(db: asyncpg.Connection | asyncpg.Pool, message: str) -> tuple[int, int]:
    """Insert a log event (through a connection or the pool): its id and transaction id."""
    row = await db.fetchrow(INSERT_EVENT, message)
    assert row is not None  # INSERT ... RETURNING returns its row
    return row["id"], row["xid"]


async def _read_until(
    backend: PostgresBackend, after: EventCursor, count: int, grace: float = 5.0
) -> list[tuple[int, str]]:
    """Events after a cursor, waiting (bounded) until ``count`` are final."""
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        page = await backend.read_feed(after, None, 100, grace)
        if len(page.events) >= count or asyncio.get_running_loop().time() > deadline:
            return [(e.id, e.data["message"]) for e in page.events]
        await asyncio.sleep(0.02)


async def test_a_later_event_waits_for_an_earlier_uncommitted_one(
    backend: PostgresBackend, dsn: str
) -> None:
    """A takes id 10, B takes id 11 and commits first: 11 must not go out before 10."""
    a, b = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        tx_a = a.transaction()
        await tx_a.start()
        first_id, _ = await insert_event(a, "A")
        second_id, _ = await insert_event(b, "B")  # autocommit
        assert second_id > first_id
        page = await backend.read_feed(EventCursor(), None, 100, 5.0)
        assert page.events == [] and page.held_back  # B is visible but not final
        await tx_a.commit()
        assert await _read_until(backend, EventCursor(), 2) == [(first_id, "A"), (second_id, "B")]
    finally:
        await a.close()
        await b.close()


async def test_resume_after_a_cursor_sees_an_event_with_a_smaller_id_that_committed_later(
    backend: PostgresBackend, dsn: str
) -> None:
    """B's transaction is older (smaller xid) but takes the larger event id and commits
    first; A's event (smaller id) commits later. "After id 11" would lose A's event; the
    (xid, id) cursor does not, and nothing is delivered twice."""
    a, b = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        tx_b, tx_a = b.transaction(), a.transaction()
        await tx_b.start()
        await b.fetchval("SELECT pg_current_xact_id()")  # B's xid is taken first
        await tx_a.start()
        a_id, a_xid = await insert_event(a, "A")
        b_id, b_xid = await insert_event(b, "B")
        assert a_id < b_id and b_xid < a_xid
        await tx_b.commit()
        delivered = await _read_until(backend, EventCursor(), 1)
        assert delivered == [(b_id, "B")]
        cursor = EventCursor(b_xid, b_id)
        await tx_a.commit()
        assert await _read_until(backend, cursor, 1) == [(a_id, "A")]
        # the naive reader would have missed it
        naive = await backend.pool.fetch("SELECT id FROM asyncjobs.run_events WHERE id > $1", b_id)
        assert naive == []
    finally:
        await a.close()
        await b.close()


async def test_a_long_unrelated_transaction_delays_the_feed_only_by_the_grace_period(
    backend: PostgresBackend, dsn: str
) -> None:
    idle = await asyncpg.connect(dsn)
    try:
        tx = idle.transaction()
        await tx.start()
        await idle.fetchval("SELECT pg_current_xact_id()")  # holds xmin back, writes nothing
        event_id, _ = await insert_event(backend.pool, "late")
        assert (await backend.read_feed(EventCursor(), None, 10, 5.0)).held_back
        started = asyncio.get_running_loop().time()
        assert await _read_until(backend, EventCursor(), 1, grace=0.3) == [(event_id, "late")]
        assert asyncio.get_running_loop().time() - started < 5
        await tx.rollback()
    finally:
        await idle.close()


async def test_feed_position_stops_before_the_first_event_that_is_not_final(
    backend: PostgresBackend, dsn: str
) -> None:
    assert await backend.feed_position(5.0) == EventCursor()
    first_id, first_xid = await insert_event(backend.pool, "one")
    holder = await asyncpg.connect(dsn)
    try:
        tx = holder.transaction()
        await tx.start()
        await holder.fetchval("SELECT pg_current_xact_id()")
        await backend.pool.fetchrow(INSERT_EVENT, "two")
        position = await backend.feed_position(5.0)
        assert position <= EventCursor(first_xid, first_id)
        await tx.rollback()
    finally:
        await holder.close()


def _tree_app() -> App:
    app = App("feed")

    @app.job
    async def leaf(ctx: Context, n: int) -> int:
        await ctx.progress(0.5, f"leaf {n} halfway")
        await ctx.log(f"leaf {n} done")
        return n

    @app.job
    async def branch(ctx: Context, n: int) -> int:
        await ctx.log("branching")
        return sum([await leaf.run_async(n=n), await leaf.run_async(n=n + 1)])

    @app.job
    async def root(ctx: Context) -> int:
        await ctx.progress(0.1, "starting")
        return await branch.run_async(n=1) + await branch.run_async(n=10)

    return app


async def _collect(updates: AsyncIterator[TraceUpdate]) -> list[TraceUpdate]:
    collected = []
    async for update in updates:
        collected.append(update)
    return collected


async def test_watch_streams_a_tree_once_in_order_and_ends(dsn: str) -> None:
    app = _tree_app()
    backend = app.backend(dsn)
    async with app.client(backend) as client:
        run = await client.trigger_async("root")
        watching = asyncio.ensure_future(
            asyncio.wait_for(_collect(client.watch(run.id, poll_interval=0.2)), 30)
        )
        async with app.worker(backend, concurrency=4):
            updates = await watching
        assert updates[0].kind is UpdateKind.SNAPSHOT
        assert updates[-1].kind is UpdateKind.END
        assert all(u.kind is UpdateKind.EVENTS for u in updates[1:-1])
        final = {r.id: r for r in updates[-1].runs}
        assert len(final) == 7 and all(r.status is RunStatus.SUCCEEDED for r in final.values())
        events = [e for u in updates for e in u.events]
        stored = [e.id for r in final for e in await client.get_events(r)]
        assert sorted(e.id for e in events) == sorted(stored)  # every event, exactly once
        assert [e.cursor for e in events] == sorted(e.cursor for e in events)
        # per run, states come in the order they happened
        for run_id in final:
            kinds = [e.kind for e in events if e.run_id == run_id and e.kind != "log"]
            assert kinds[0] == "pending" and kinds[-1] == "succeeded"
        # resuming from the middle gives exactly the rest, then the end
        middle = len(updates) // 2
        rest = await asyncio.wait_for(
            _collect(client.watch(run.id, after=str(updates[middle].cursor))), 10
        )
        assert [e.id for u in rest for e in u.events] == [
            e.id for u in updates[middle + 1 :] for e in u.events
        ]
        assert rest[-1].kind is UpdateKind.END
        # a finished tree: snapshot then end straight away
        again = await asyncio.wait_for(_collect(client.watch(run.id)), 10)
        assert [u.kind for u in again] == [UpdateKind.SNAPSHOT, UpdateKind.END]
        assert sorted(e.id for e in again[0].events) == sorted(stored)


async def test_prune_deletes_old_finished_trees_and_keeps_active_ones(dsn: str) -> None:
    app = _tree_app()

    @app.job
    async def slow() -> None:
        await asyncio.Event().wait()

    async with app.client(dsn) as client:
        async with app.worker(dsn, concurrency=4):
            finished = await client.trigger_async("root")
            await finished.result(timeout=20)
        active = await client.trigger_async("slow")
        assert (await client.prune(timedelta(hours=1))).trees == 0
        result = await client.prune(timedelta(0))
        assert (result.trees, result.runs) == (1, 7) and result.events >= 7 * 3
        assert (await client.get_runs()).runs == [await client.get_run(active.id)]
        assert await client.get_events(active.id)


async def test_workers_prune_on_their_retention_schedule(dsn: str) -> None:
    app = _tree_app()
    worker = app.worker(dsn, concurrency=4, retention=timedelta(0), retention_interval=0.05)
    async with app.client(dsn) as client, worker:
        run = await client.trigger_async("root")
        await run.result(timeout=20)

        async def pruned() -> bool:
            return not (await client.get_runs()).runs

        await wait_for(pruned, 10)
        assert await client.get_events(run.id) == []


async def test_the_prune_and_demo_commands(dsn: str) -> None:
    async def run_cli(*args: str) -> str:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "asyncjobs",
            *args,
            "--dsn",
            dsn,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, output.decode()
        return output.decode()

    demo = await run_cli("demo", "--exit", "--port", "0", "--pace", "0.1")
    assert "dashboard: http://127.0.0.1:" in demo and "#/runs/1" in demo
    assert "└─ #8 send_email" in demo
    pruned = await run_cli("prune", "--older-than", "0s")
    assert "deleted 1 trace trees: 8 runs" in pruned


async def test_the_feed_queries_use_their_indexes(backend: PostgresBackend) -> None:
    from asyncjobs import sql

    async with backend.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO asyncjobs.run_events (run_id, root_run_id, kind) "
            "SELECT g, g / 10, 'log' FROM generate_series(1, 20000) g"
        )
        await conn.execute("ANALYZE asyncjobs.run_events")
        position = {"after_xid": "'5'::xid8", "after_id": "100", "limit": "500", "grace": "'5 s'"}
        for name, named, index in [
            ("read_feed", position, "run_events_feed_idx"),
            ("read_tree_feed", {**position, "root_run_id": "7"}, "run_events_root_feed_idx"),
        ]:
            args = ", ".join(named[p] for p in sql.QUERIES[name].params)  # literals, in order
            query = sql.QUERIES[name].text.rstrip().rstrip(";")
            await conn.execute(f"PREPARE q AS {query}")
            plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN EXECUTE q({args})"))
            await conn.execute("DEALLOCATE q")
            assert f"Index Scan using {index}" in plan and "Sort" not in plan, plan
