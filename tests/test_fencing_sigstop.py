"""A worker frozen with SIGSTOP past its lease, then resumed, cannot complete or extend the run
that was rescued meanwhile: the new attempt's result stands, and the stale worker says so.

Worker process A claims a run (attempt 1) and is frozen. Its lease runs out, worker process B
rescues the run and claims attempt 2. While B still runs it, A is resumed (SIGCONT):

* when A's attempt was due to end during the freeze, A's job returns at once on resume and
  A sends its completion: the database refuses it (``fenced_off``);
* when A's attempt still has long to go, A's next heartbeat is refused (its lease is not
  extended), A learns it lost the run and cancels its job (``leases_lost``), writing nothing.

Either way B's attempt 2 completes and its result is the one stored.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import orjson
import pytest

from asyncjobs.embedded import EmbeddedPostgres
from tests.fault_apps import proc_app, stall
from tests.faults import (
    WorkerProcess,
    eventually,
    new_database,
    registered,
    start_worker,
)

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

LEASE = 1.5
OPTIONS = (
    "--concurrency", "1", "--lease", str(LEASE), "--heartbeat-interval", "0.3",
    "--sweep-interval", "0.3", "--poll-interval", "0.1", "--drain-timeout", "5",
)  # fmt: skip


@dataclass
class Stale:
    conn: asyncpg.Connection
    a: WorkerProcess
    b: WorkerProcess
    run_id: int


async def _row(conn: asyncpg.Connection, run_id: int) -> asyncpg.Record:
    row = await conn.fetchrow("SELECT * FROM asyncjobs.runs WHERE id = $1", run_id)
    assert row is not None
    return row


@pytest.fixture
async def frozen_then_rescued(
    server: EmbeddedPostgres, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Stale]:
    """A claimed attempt 1 of ``stall(first_ms, 2000)`` and was frozen; B now runs attempt 2."""
    first_ms: int = request.param
    dsn = await new_database(server)
    conn = await asyncpg.connect(dsn)
    a = start_worker("tests.fault_apps:proc_app", dsn, "A", tmp_path, *OPTIONS)
    b: WorkerProcess | None = None
    try:
        await eventually(lambda: registered(conn, "A"), what="A up")
        async with proc_app.client(dsn) as client:
            run = await client.trigger_async(stall, first_ms=first_ms, later_ms=2000)

        async def running_on(worker: str, attempt: int) -> bool:
            row = await _row(conn, run.id)
            return (row["status"], row["worker_id"], row["attempt"]) == (
                "running",
                worker,
                attempt,
            )

        await eventually(lambda: running_on("A", 1), what="A runs attempt 1")
        a.proc.send_signal(signal.SIGSTOP)
        b = start_worker("tests.fault_apps:proc_app", dsn, "B", tmp_path, *OPTIONS)
        await eventually(lambda: running_on("B", 2), what="B runs attempt 2")
        a.proc.send_signal(signal.SIGCONT)
        yield Stale(conn, a, b, run.id)
    finally:
        a.proc.send_signal(signal.SIGCONT)
        for worker in (a, b):
            if worker is not None:
                worker.stop_now()
        await conn.close()


async def _stop_and_check_b_won(stale: Stale) -> None:
    async def done() -> bool:
        status: str = (await _row(stale.conn, stale.run_id))["status"]
        return status == "succeeded"

    await eventually(done, what="attempt 2 done")
    row = await _row(stale.conn, stale.run_id)
    assert row["attempt"] == 2 and row["trigger"] == "restart"
    assert orjson.loads(row["result"]) == f"attempt 2 pid {stale.b.pid}"
    assert [e["type"] for e in orjson.loads(row["errors"])] == ["LeaseExpired"]
    kinds = [
        r["kind"]
        for r in await stale.conn.fetch(
            "SELECT kind FROM asyncjobs.run_events WHERE run_id = $1 ORDER BY id", stale.run_id
        )
    ]
    assert kinds == ["pending", "running", "pending", "running", "succeeded"]
    for worker in (stale.a, stale.b):
        worker.proc.terminate()
        assert await worker.exited(20.0) == 0, worker.output()


@pytest.mark.parametrize("frozen_then_rescued", [1000], indirect=True)
async def test_resumed_worker_cannot_complete_the_rescued_run(frozen_then_rescued: Stale) -> None:
    stale = frozen_then_rescued
    await eventually(
        lambda: _says(stale.a, "completions fenced off"), what="A's completion refused"
    )
    row = await _row(stale.conn, stale.run_id)
    assert (row["status"], row["worker_id"], row["attempt"]) == ("running", "B", 2)
    await _stop_and_check_b_won(stale)
    assert "fenced_off=1" in stale.a.output()
    assert "succeeded=1" in stale.a.output()  # it believed it had, the database said no


@pytest.mark.parametrize("frozen_then_rescued", [60_000], indirect=True)
async def test_resumed_worker_cannot_extend_its_lease_and_stops_its_job(
    frozen_then_rescued: Stale,
) -> None:
    stale = frozen_then_rescued
    await eventually(lambda: _says(stale.a, "lost the lease of run"), what="A's heartbeat refused")
    row = await _row(stale.conn, stale.run_id)
    assert (row["status"], row["worker_id"], row["attempt"]) == ("running", "B", 2)
    await _stop_and_check_b_won(stale)
    output = stale.a.output()
    assert "leases_lost=1" in output and "fenced_off=0" in output
    assert "succeeded=0" in output  # the 60 s job was cancelled, not left running


async def _says(worker: WorkerProcess, text: str) -> bool:
    return text in worker.output()
