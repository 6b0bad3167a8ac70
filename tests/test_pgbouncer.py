"""Through a real PgBouncer in transaction mode (``tests.pgbouncer``): what must hold for
asyncjobs to work behind it, and that it does.

- No session state on pooled connections: the source uses only transaction-scoped advisory
  locks and LISTENs only on its dedicated connection (checked on the source text).
- Workers, clients, the dashboard and the scheduler work through the pooler with
  ``pgbouncer=True`` while LISTEN goes straight to the server (``listen_dsn``): a worker that
  polls only every 30 s still starts a run at once, so the wake-up came over LISTEN.
- asyncpg's unnamed statements (``statement_cache_size=0``) hold up when far more client
  connections than server connections run different statements at once.
"""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from pathlib import Path

import asyncpg
import httpx
import pytest

from asyncjobs import App
from asyncjobs.backends.postgres import PostgresBackend
from asyncjobs.web import DashboardServer
from tests.pgbouncer import POOL_SIZE, PgBouncer

pytestmark = pytest.mark.anyio

SOURCE = Path(__file__).resolve().parent.parent / "asyncjobs"
#: session-level advisory lock functions (the ``_xact_`` ones are transaction-scoped)
SESSION_LOCK = re.compile(r"pg_(?:try_)?advisory_(?:un)?lock(?:_shared|_all)?\s*\(", re.I)
XACT_LOCK = re.compile(r"pg_(?:try_)?advisory_xact_lock(?:_shared)?\s*\(", re.I)
#: other session state a transaction-mode pooler would hand to a stranger
SESSION_STATE = re.compile(
    r"\bconn\w*\.add_listener\(|^\s*LISTEN\s|\bPREPARE\s+\w+\s+AS\b|\bWITH\s+HOLD\b"
    r"|\bCREATE\s+TEMP(?:ORARY)?\s+TABLE\b|\bSET\s+SESSION\b",
    re.I | re.M,
)


def _sources() -> dict[Path, str]:
    files = [*SOURCE.rglob("*.py"), *SOURCE.rglob("*.sql")]
    return {path: path.read_text() for path in files}


def test_only_transaction_scoped_advisory_locks_in_the_source() -> None:
    sources = _sources()
    session = [
        f"{path.relative_to(SOURCE)}: {m.group(0)}"
        for path, text in sources.items()
        for m in SESSION_LOCK.finditer(text)
    ]
    assert session == []
    # the checks above look at the right text: the claim and migration locks are found
    xact = {path.name for path, text in sources.items() if XACT_LOCK.search(text)}
    assert {"schema.sql", "postgres.py", "queue.sql"} <= xact


def test_no_other_session_state_outside_the_listener() -> None:
    found = [
        f"{path.relative_to(SOURCE)}: {m.group(0)}"
        for path, text in _sources().items()
        for m in SESSION_STATE.finditer(text)
        if path.name != "listener.py"
    ]
    assert found == []
    listener = (SOURCE / "backends" / "listener.py").read_text()
    assert SESSION_STATE.search(listener)  # the pattern finds the one LISTEN there is


app = App("pooled")


@app.job
async def double(n: int) -> int:
    return 2 * n


@app.job(every=timedelta(seconds=1))
async def tick() -> None:
    pass


#: the LISTEN connection names itself after its DSN's application_name: seen on the server,
#: it shows the listener went there directly, not through the pooler
LISTEN_NAME = "direct-listen"


def _pooled(bouncer: PgBouncer, dsn: str, **options: object) -> PostgresBackend:
    listen = f"{dsn}?application_name={LISTEN_NAME}"
    return PostgresBackend(bouncer.via(dsn), pgbouncer=True, listen_dsn=listen, **options)  # type: ignore[arg-type]


async def _listeners(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name = $1", LISTEN_NAME
        )
        return count
    finally:
        await conn.close()


async def test_worker_client_and_scheduler_through_the_pooler(
    dsn: str, pgbouncer: PgBouncer
) -> None:
    worker = app.worker(_pooled(pgbouncer, dsn), concurrency=4, poll_interval=30.0)
    async with app.client(_pooled(pgbouncer, dsn)) as client, worker:
        # started by the NOTIFY, not by a poll 30 s away; the result arrives over LISTEN too
        run = await client.trigger_async(double, n=21)
        assert await run.result(timeout=15) == 42
        # one LISTEN session per process (client and worker share nothing here: two), both
        # straight to the server
        assert await _listeners(dsn) == 2
        ticks = await _wait_for_ticks(client, 2)
        assert ticks >= 2


async def _wait_for_ticks(client: object, wanted: int) -> int:
    async def count() -> int:
        page = await client.get_runs(job="tick")  # type: ignore[attr-defined]
        return sum(1 for r in page.runs if r.status.value == "succeeded")

    for _ in range(300):
        if (found := await count()) >= wanted:
            return found
        await asyncio.sleep(0.05)
    return await count()


async def test_dashboard_through_the_pooler(dsn: str, pgbouncer: PgBouncer) -> None:
    async with app.client(_pooled(pgbouncer, dsn)) as client:
        run = await client.trigger_async(double, n=1)
    board = app.asgi(_pooled(pgbouncer, dsn))
    async with (
        DashboardServer(board, "127.0.0.1", 0) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as http,
    ):
        listed = (await http.get("/api/runs")).json()
        assert [r["id"] for r in listed["runs"]] == [run.id]
        assert (await http.get(f"/api/runs/{run.id}")).json()["run"]["status"] == "pending"


async def test_unnamed_statements_hold_with_many_more_clients_than_server_connections(
    dsn: str, pgbouncer: PgBouncer
) -> None:
    # 40 client connections, POOL_SIZE server connections, three different statements
    # interleaved: a named statement would be looked up on a server connection that never
    # prepared it; asyncpg's unnamed ones travel with their Bind/Execute/Sync
    assert POOL_SIZE < 40
    async with app.client(_pooled(pgbouncer, dsn, max_pool_size=40)) as client:
        runs = await client.trigger_many(double, [{"n": n} for n in range(200)])

        async def read(k: int) -> int:
            run = runs[k]
            record = await client.get_run(run.id)
            page = await client.get_runs(job="double", limit=5)
            assert len(page.runs) == 5
            return int(record.args["n"])

        got = await asyncio.gather(*(read(k) for k in range(200)))
    assert got == list(range(200))
