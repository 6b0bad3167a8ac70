"""Rolling deploys: code keeps working on a database a newer deploy migrated, as long as every
newer migration declares compatibility with it; two ``asyncjobs migrate`` at once are safe.

"Newer code" is simulated by test-only migrations past ours (``SCHEMA_VERSION + 1``, ...),
applied with ``apply_migrations``; the code under test plays the older deploy. The workers
are real ``asyncjobs worker`` processes.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import asyncpg
import pytest

from asyncjobs import SchemaMismatch, sql
from asyncjobs.backends.postgres import apply_migrations
from tests.fault_apps import proc_app, stall
from tests.faults import eventually, start_worker

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
N = sql.SCHEMA_VERSION
FAST = ("--lease", "2", "--heartbeat-interval", "0.3", "--sweep-interval", "0.3",
        "--poll-interval", "0.1")  # fmt: skip

#: what a later release might add: a column with a default, a table, an index
ADDITIVE = sql.Migration(
    N + 1,
    "notes",
    f"""
    ALTER TABLE asyncjobs.runs ADD COLUMN note text NOT NULL DEFAULT '';
    CREATE TABLE asyncjobs.notes (run_id bigint PRIMARY KEY, body text NOT NULL);
    CREATE INDEX runs_note_idx ON asyncjobs.runs (note) WHERE note <> '';
    INSERT INTO asyncjobs.schema_version (version, name) VALUES ({N + 1}, 'notes');
    """,
    compatible_from=N,
)
#: and one that older code cannot live with (no compatibility declared)
BREAKING = sql.Migration(
    N + 2,
    "rename",
    f"""
    ALTER TABLE asyncjobs.runs RENAME COLUMN status_message TO message;
    INSERT INTO asyncjobs.schema_version (version, name) VALUES ({N + 2}, 'rename');
    """,
    compatible_from=N + 2,
)


async def _migrate(dsn: str, *extra: sql.Migration) -> int:
    """The schema version after applying our migrations and ``extra``."""
    conn = await asyncpg.connect(dsn)
    try:
        _, after = await apply_migrations(conn, (*sql.MIGRATIONS, *extra))
        return after
    finally:
        await conn.close()


async def test_an_older_worker_keeps_running_and_restarts_after_an_additive_migration(
    dsn: str, tmp_path: Path
) -> None:
    conn = await asyncpg.connect(dsn)
    old = start_worker("tests.fault_apps:proc_app", dsn, "old", tmp_path, *FAST)
    again = None
    try:
        async with proc_app.client(dsn) as client:
            run = await client.trigger_async(stall, first_ms=1, later_ms=1)
            assert (await run.result(timeout=20)).startswith("attempt 1")
            # the newer deploy migrates while the old worker runs
            assert await _migrate(dsn, ADDITIVE) == N + 1
            row = await conn.fetchrow(
                "SELECT compatible_from FROM asyncjobs.schema_version WHERE version = $1", N + 1
            )
            assert row is not None and row["compatible_from"] == N
            run = await client.trigger_async(stall, first_ms=60_000, later_ms=1)

            async def claimed_by_old() -> bool:
                return (await client.get_run(run.id)).worker_id == "old"

            await eventually(claimed_by_old, what="claimed by the old worker")
            # the old worker's process dies; a new process of the same old code starts on
            # the newer schema, rescues the run (a restart) and runs it again
            await old.kill9(conn)
            again = start_worker("tests.fault_apps:proc_app", dsn, "again", tmp_path, *FAST)
            assert (await run.result(timeout=30)).startswith("attempt 2")
            record = await run.get()
            assert (record.restarts, record.retries, record.worker_id) == (1, 0, None)
            assert await conn.fetchval(
                "SELECT note FROM asyncjobs.runs WHERE id = $1", run.id
            ) == ""
        assert again.alive, again.output()
    finally:
        old.stop_now()
        if again is not None:
            again.stop_now()
        await conn.close()


async def test_a_non_additive_migration_is_refused_with_the_fix(
    dsn: str, tmp_path: Path
) -> None:
    await _migrate(dsn, ADDITIVE, BREAKING)
    with pytest.raises(SchemaMismatch) as caught:
        async with proc_app.client(dsn):
            pass
    message = str(caught.value)
    assert f"migration {N + 2} is not compatible with this code (version {N})" in message
    assert "deploy a newer asyncjobs" in message
    worker = start_worker("tests.fault_apps:proc_app", dsn, "refused", tmp_path)
    try:
        assert await worker.exited(30) != 0
        assert "deploy a newer asyncjobs" in worker.output()
    finally:
        worker.stop_now()
    # the old code's migrate leaves a newer database alone
    assert await _migrate(dsn) == N + 2


async def test_two_migrate_processes_on_an_empty_database(empty_dsn: str) -> None:
    """Both processes are made to wait at the migration lock together (the test holds it
    until both wait), then race: one installs, the other finds the schema in place."""
    holder = await asyncpg.connect(empty_dsn)
    try:
        lock = holder.transaction()
        await lock.start()
        await holder.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('asyncjobs:migrate', 0))"
        )
        command = [sys.executable, "-m", "asyncjobs", "migrate", "--dsn", empty_dsn]
        processes = [
            await asyncio.create_subprocess_exec(
                *command, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
            )
            for _ in range(2)
        ]

        async def both_wait() -> bool:
            waiting = await holder.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
            return bool(waiting == 2)

        await eventually(both_wait, timeout=30, what="both migrators at the lock")
        await lock.rollback()
        outputs = [await asyncio.wait_for(p.communicate(), 60) for p in processes]
        for process, (output, _) in zip(processes, outputs, strict=True):
            assert process.returncode == 0, output.decode()
        rows = await holder.fetch("SELECT version, name FROM asyncjobs.schema_version")
        assert sorted(r["version"] for r in rows) == list(range(1, N + 1))
    finally:
        await holder.close()


@pytest.mark.parametrize(
    ("applied", "accepted"),
    [
        ([(1, 1), (2, 2)], True),  # our version
        ([(1, 1)], False),  # older: migrate
        ([(1, 1), (2, 2), (3, 2)], True),  # one additive migration past ours
        ([(1, 1), (2, 2), (3, 2), (4, 1)], True),
        ([(1, 1), (2, 2), (3, 2), (4, 4)], False),  # the last one breaks us
        ([(1, 1), (2, 2), (3, 3), (4, 2)], False),  # an earlier one already did
        ([(1, 1), (2, 2), (3, None)], False),  # nothing declared: incompatible
        ([], False),
    ],
)
def test_compatibility_rule(applied: list[tuple[int, int | None]], accepted: bool) -> None:
    assert (sql.incompatibility(2, applied) is None) is accepted

