"""Fencing: a worker that lost its run cannot write about it any more.

Worker A claims a run, its lease runs out and the sweeper hands the run back; worker B claims
it as attempt 2. Everything A still sends for attempt 1 (completion, heartbeat, progress, logs)
must be refused and leave the run exactly as B has it. A and B are separate backends with
their own pools, as two worker processes would be.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
import pytest

from asyncjobs.backends.base import Completion, NewRun
from asyncjobs.backends.postgres import PostgresBackend
from asyncjobs.runs import RunStatus, Trigger

pytestmark = pytest.mark.anyio

LEASE = 30.0


@dataclass
class Rescued:
    run_id: int
    a: PostgresBackend
    b: PostgresBackend
    conn: asyncpg.Connection


async def _row(conn: asyncpg.Connection, run_id: int) -> dict[str, Any]:
    row = await conn.fetchrow("SELECT * FROM asyncjobs.runs WHERE id = $1", run_id)
    assert row is not None
    return dict(row)


async def _event_kinds(conn: asyncpg.Connection, run_id: int) -> list[str]:
    rows = await conn.fetch(
        "SELECT kind FROM asyncjobs.run_events WHERE run_id = $1 ORDER BY id", run_id
    )
    return [row["kind"] for row in rows]


@pytest.fixture
async def rescued(dsn: str) -> AsyncIterator[Rescued]:
    """A run claimed by A (attempt 1), swept after its lease ran out, claimed by B (attempt 2)."""
    a, b = PostgresBackend(dsn), PostgresBackend(dsn)
    await a.open()
    await b.open()
    conn = await asyncpg.connect(dsn)
    try:
        (enqueued,) = await a.enqueue([NewRun("fenced", "default", '{"n": 1}', max_attempts=3)])
        (claimed,) = await a.claim("A", ["default"], ["fenced"], 1, LEASE)
        assert (claimed.id, claimed.attempt, claimed.worker_id) == (enqueued.run_id, 1, "A")

        # A stalls: its lease ends by the database clock, and a sweep rescues the run
        await conn.execute(
            "UPDATE asyncjobs.runs SET lease_expires_at = now() - interval '1 second'"
            " WHERE id = $1",
            claimed.id,
        )
        assert (await b.sweep(worker_ttl_seconds=60)).restarted == 1
        after_sweep = await _row(conn, claimed.id)
        assert (after_sweep["status"], after_sweep["trigger"]) == ("pending", "restart")

        (reclaimed,) = await b.claim("B", ["default"], ["fenced"], 4, LEASE)
        assert (reclaimed.id, reclaimed.attempt, reclaimed.worker_id) == (claimed.id, 2, "B")
        yield Rescued(claimed.id, a, b, conn)
    finally:
        await conn.close()
        await a.close()
        await b.close()


async def test_stale_completion_is_rejected_and_changes_nothing(rescued: Rescued) -> None:
    before = await _row(rescued.conn, rescued.run_id)
    events_before = await _event_kinds(rescued.conn, rescued.run_id)

    stale = [
        # the stale attempt, as A would send it
        Completion(rescued.run_id, 1, RunStatus.SUCCEEDED, result_json='"from A"'),
        Completion(rescued.run_id, 1, RunStatus.FAILED, error={"type": "X", "message": "A"}),
        Completion(rescued.run_id, 1, RunStatus.PENDING, handback=True),
        Completion(rescued.run_id, 1, RunStatus.FAILED, error={"type": "X"}, retry_in=0.0),
    ]
    for completion in stale:
        assert await rescued.a.complete("A", [completion]) == set()
    # the current attempt number is not enough without being its worker
    current = Completion(rescued.run_id, 2, RunStatus.SUCCEEDED, result_json='"from A"')
    assert await rescued.a.complete("A", [current]) == set()
    # nor is the right worker with the old attempt
    assert await rescued.b.complete("B", stale[:1]) == set()

    assert await _row(rescued.conn, rescued.run_id) == before
    assert await _event_kinds(rescued.conn, rescued.run_id) == events_before


async def test_stale_heartbeat_does_not_extend_the_new_lease(rescued: Rescued) -> None:
    before = await _row(rescued.conn, rescued.run_id)
    for attempt in (1, 2):
        beat = await rescued.a.heartbeat("A", [(rescued.run_id, attempt)], lease_seconds=3600)
        assert rescued.run_id not in beat.kept
    after = await _row(rescued.conn, rescued.run_id)
    assert after["lease_expires_at"] == before["lease_expires_at"]
    assert after == before

    # B's own heartbeat does extend it
    beat = await rescued.b.heartbeat("B", [(rescued.run_id, 2)], lease_seconds=3600)
    assert beat.kept == {rescued.run_id}
    extended = await _row(rescued.conn, rescued.run_id)
    assert extended["lease_expires_at"] > before["lease_expires_at"]


async def test_stale_progress_and_log_events_are_dropped(rescued: Rescued) -> None:
    before = await _row(rescued.conn, rescued.run_id)
    events_before = await _event_kinds(rescued.conn, rescued.run_id)
    stale: list[tuple[int, int, str, dict[str, Any]]] = [
        (rescued.run_id, 1, "progress", {"progress": 0.9, "message": "A thinks it is nearly done"}),
        (rescued.run_id, 1, "log", {"level": "info", "message": "from A"}),
    ]
    assert await rescued.a.add_events("A", stale) == 0
    assert await _row(rescued.conn, rescued.run_id) == before
    assert await _event_kinds(rescued.conn, rescued.run_id) == events_before

    current = [(rescued.run_id, 2, "progress", {"progress": 0.5, "message": "B halfway"})]
    assert await rescued.b.add_events("B", current) == 1
    row = await _row(rescued.conn, rescued.run_id)
    assert (row["progress"], row["status_message"]) == (0.5, "B halfway")


async def test_current_completion_is_accepted_once(rescued: Rescued) -> None:
    # A's late completion arrives first; it must not stand in B's way
    late = Completion(rescued.run_id, 1, RunStatus.FAILED, error={"type": "X", "message": "A"})
    assert await rescued.a.complete("A", [late]) == set()

    done = Completion(rescued.run_id, 2, RunStatus.SUCCEEDED, result_json='"from B"')
    assert await rescued.b.complete("B", [done]) == {rescued.run_id}
    row = await _row(rescued.conn, rescued.run_id)
    assert (row["status"], row["attempt"], orjson.loads(row["result"]), row["worker_id"]) == (
        "succeeded",
        2,
        "from B",
        None,
    )
    assert row["trigger"] == Trigger.RESTART.value
    # the lease-expiry error of attempt 1 is kept in the history, nothing of A's own
    assert [e["type"] for e in orjson.loads(row["errors"])] == ["LeaseExpired"]

    # a repeated completion (e.g. a flush retried after a lost reply) is refused
    assert await rescued.b.complete("B", [done]) == set()
    assert await rescued.a.complete("A", [late]) == set()
    assert await _row(rescued.conn, rescued.run_id) == row
