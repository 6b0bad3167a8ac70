"""The fast-path claim commits without waiting for the WAL flush (migration 0013), and the live
feed never hands out an event before it is durable.

A private server whose WAL writer flushes only every 10 s (and no autovacuum), so that an
asynchronous commit stays unflushed until a synchronous one comes: what was committed without
a flush is exactly what a server crash would lose. The crash itself is done too: an immediate
stop (no shutdown checkpoint) with a claim not yet flushed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from asyncjobs import RunStatus
from asyncjobs.backends.base import Completion, NewRun
from asyncjobs.backends.postgres import PostgresBackend
from asyncjobs.embedded import EmbeddedPostgres
from asyncjobs.runs import RunRecord
from tests.faults import new_database

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

#: how long a read must stay waiting while the WAL is not flushed past its events
OBSERVED = 0.3


@pytest.fixture(scope="module")
def lazy_server() -> Iterator[EmbeddedPostgres]:
    with EmbeddedPostgres(settings={"wal_writer_delay": "10s", "autovacuum": "off"}) as pg:
        yield pg


@pytest.fixture
async def backend(lazy_server: EmbeddedPostgres) -> AsyncIterator[PostgresBackend]:
    opened = PostgresBackend(await new_database(lazy_server))
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


async def _wal(conn: asyncpg.Connection) -> tuple[int, int]:
    """(insert position, flush position) of the WAL, as numbers."""
    row = await conn.fetchrow(
        "SELECT pg_current_wal_insert_lsn() - '0/0' AS inserted,"
        " pg_current_wal_flush_lsn() - '0/0' AS flushed"
    )
    assert row is not None
    return int(row["inserted"]), int(row["flushed"])


async def _flush(conn: asyncpg.Connection) -> None:
    """A synchronous commit that wrote a row: flushes the WAL up to it (a transaction that
    wrote nothing commits without a flush, even with synchronous_commit on)."""
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS flush_marker (at timestamptz);"
        " INSERT INTO flush_marker VALUES (now())"
    )


async def test_a_fast_path_claim_does_not_wait_for_the_flush_a_limited_one_does(
    backend: PostgresBackend,
) -> None:
    conn = await asyncpg.connect(backend.dsn)
    try:
        await conn.execute(
            "INSERT INTO asyncjobs.jobs (name, queue, max_concurrency) VALUES ('limited', 'q', 5)"
        )
        await backend.enqueue([NewRun("free", "q", "{}"), NewRun("limited", "q", "{}")])
        await _flush(conn)

        assert await backend.claim("w1", ["q"], ["free"], 1, 30.0)
        inserted, flushed = await _wal(conn)
        assert flushed < inserted, "the fast-path claim's commit was flushed"

        await _flush(conn)
        assert await backend.claim("w1", ["q"], ["limited"], 1, 30.0)
        inserted, flushed = await _wal(conn)
        assert flushed >= inserted, "a limited claim must wait for the flush (limits count it)"
    finally:
        await conn.close()


async def test_the_feed_hands_out_no_event_before_it_is_flushed(
    backend: PostgresBackend,
) -> None:
    conn = await asyncpg.connect(backend.dsn)
    try:
        (enqueued,) = await backend.enqueue([NewRun("free", "q", "{}")])
        start = await backend.feed_position(5.0)
        await _flush(conn)

        (claimed,) = await backend.claim("w1", ["q"], ["free"], 1, 30.0)  # `running` event
        committed_at, flushed = await _wal(conn)
        assert flushed < committed_at

        reading = asyncio.ensure_future(backend.read_feed(start, None, 100, 5.0))
        await asyncio.sleep(OBSERVED)  # a window in which the read must not complete
        _, flushed = await _wal(conn)
        assert flushed < committed_at, "something flushed the WAL meanwhile: nothing shown"
        assert not reading.done(), "the feed handed out an event that is not durable"

        await _flush(conn)
        page = await asyncio.wait_for(reading, 10)
        assert [(e.run_id, e.kind) for e in page.events] == [(claimed.id, "running")]
        assert claimed.id == enqueued.run_id
        _, flushed = await _wal(conn)
        assert flushed >= committed_at

        # a new reader's starting position waits for the flush too
        await backend.claim("w1", ["q"], ["free"], 1, 30.0)  # nothing left: no event
        (second,) = await backend.enqueue([NewRun("free", "q", "{}")])
        await _flush(conn)
        await backend.claim("w1", ["q"], ["free"], 1, 30.0)
        positioning = asyncio.ensure_future(backend.feed_position(5.0))
        await asyncio.sleep(OBSERVED)
        assert not positioning.done(), "a position past an event that is not durable"
        await _flush(conn)
        position = await asyncio.wait_for(positioning, 10)
        events = await backend.get_events(second.run_id, 0, 100)
        assert position.id == events[-1].id
    finally:
        await conn.close()


async def test_a_claim_lost_in_a_server_crash_leaves_its_run_pending(
    lazy_server: EmbeddedPostgres, backend: PostgresBackend
) -> None:
    (run,) = await backend.enqueue([NewRun("free", "q", "{}")])
    conn = await asyncpg.connect(backend.dsn)
    try:
        await _flush(conn)
        (claimed,) = await backend.claim("w1", ["q"], ["free"], 1, 30.0)
        assert claimed.attempt == 1
        inserted, flushed = await _wal(conn)
        assert flushed < inserted
    finally:
        await conn.close()

    await lazy_server.arestart(immediate=True)  # a crash: what was not flushed is gone

    record = await backend.get_run(run.run_id)
    assert record is not None and record.status is RunStatus.PENDING and record.attempt == 0
    # claimed again (the same attempt number, by whoever claims): at-least-once; the lost
    # attempt's completion is fenced off, as it names a worker the row no longer has
    (again,) = await backend.claim("w2", ["q"], ["free"], 1, 30.0)
    assert (again.id, again.attempt) == (run.run_id, 1)
    assert await backend.complete("w1", [_done(claimed)]) == set()
    assert await backend.complete("w2", [_done(again)]) == {run.run_id}


def _done(record: RunRecord) -> Completion:
    return Completion(record.id, record.attempt, RunStatus.SUCCEEDED, result_json="null")
