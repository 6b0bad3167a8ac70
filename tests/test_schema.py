"""The schema, its migrations, the claim query's plan and the asyncpg → asyncjobs error seam."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from asyncjobs import App, DatabaseError, DatabaseUnavailable, InvalidArguments, SchemaMismatch, sql
from asyncjobs.backends.postgres import (
    _INPUT_CONSTRAINTS,
    _INVARIANT_CONSTRAINTS,
    PostgresBackend,
    translate_errors,
)
from tests.plan_support import plan_nodes

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------------- catalog

#: One query per kind of object in the asyncjobs schema; each returns comparable rows.
CATALOG_QUERIES = {
    "relations": """
        SELECT relname, relkind, relpersistence, reloptions FROM pg_class
         WHERE relnamespace = 'asyncjobs'::regnamespace""",
    # position among live columns (not attnum, which keeps gaps of dropped columns); a new
    # column must be appended to schema.sql with ALTER TABLE, as the migration does
    "columns": """
        SELECT c.relname, a.attname,
               row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum) AS position,
               format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull,
               pg_get_expr(d.adbin, d.adrelid) AS default, a.attidentity, a.attgenerated,
               a.attcollation::regcollation::text AS collation
          FROM pg_attribute a
          JOIN pg_class c ON c.oid = a.attrelid
          LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE c.relnamespace = 'asyncjobs'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm')
           AND a.attnum > 0 AND NOT a.attisdropped""",
    "indexes": """
        SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'asyncjobs'""",
    "constraints": """
        SELECT conrelid::regclass::text AS relation, conname, contype,
               pg_get_constraintdef(oid) AS definition
          FROM pg_constraint WHERE connamespace = 'asyncjobs'::regnamespace""",
    "functions": """
        SELECT proname, pg_get_function_identity_arguments(oid) AS arguments, prokind,
               CASE WHEN prokind IN ('f', 'p') THEN pg_get_functiondef(oid) END AS definition
          FROM pg_proc WHERE pronamespace = 'asyncjobs'::regnamespace""",
    "types": """
        SELECT t.typname, t.typtype,
               array(SELECT enumlabel FROM pg_enum e WHERE e.enumtypid = t.oid
                      ORDER BY e.enumsortorder) AS labels
          FROM pg_type t WHERE t.typnamespace = 'asyncjobs'::regnamespace""",
    "sequences": """
        SELECT sequencename, data_type::text, start_value, min_value, max_value,
               increment_by, cycle, cache_size
          FROM pg_sequences WHERE schemaname = 'asyncjobs'""",
    "sequence_owners": """
        SELECT s.relname, t.relname AS owned_by_table, a.attname AS owned_by_column
          FROM pg_depend d
          JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
          JOIN pg_class t ON t.oid = d.refobjid
          JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
         WHERE s.relnamespace = 'asyncjobs'::regnamespace AND d.deptype IN ('a', 'i')""",
    "triggers": """
        SELECT tgname, pg_get_triggerdef(t.oid) AS definition
          FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
         WHERE c.relnamespace = 'asyncjobs'::regnamespace AND NOT t.tgisinternal""",
    "views": """
        SELECT viewname, definition FROM pg_views WHERE schemaname = 'asyncjobs'""",
    "comments": """
        SELECT c.relname, d.objsubid, d.description
          FROM pg_description d JOIN pg_class c ON c.oid = d.objoid
         WHERE d.classoid = 'pg_class'::regclass
           AND c.relnamespace = 'asyncjobs'::regnamespace""",
    "schema_version": "SELECT version, name FROM asyncjobs.schema_version",
}


async def catalog(dsn: str) -> dict[str, list[tuple[Any, ...]]]:
    """Everything the asyncjobs schema defines, as sorted rows per kind of object."""
    conn = await asyncpg.connect(dsn)
    try:
        result = {}
        for kind, query in CATALOG_QUERIES.items():
            rows = await conn.fetch(query)
            result[kind] = sorted((tuple(row.values()) for row in rows), key=repr)
        return result
    finally:
        await conn.close()


async def _execute(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            async with conn.transaction():
                await conn.execute(statement)
    finally:
        await conn.close()


async def _migrate(dsn: str) -> int:
    backend = PostgresBackend(dsn, migrate=True)
    await backend.open()
    try:
        return await backend.migrate()
    finally:
        await backend.close()


async def test_catalog_sees_every_kind_of_object(module_dsn: str) -> None:
    # guard against a query that silently matches nothing (a typo would compare [] == [])
    found = await catalog(module_dsn)
    for kind in ("relations", "columns", "indexes", "constraints", "functions", "types",
                 "sequences", "sequence_owners", "schema_version"):  # fmt: skip
        assert found[kind], kind


async def test_fresh_install_equals_all_migrations_applied(dsn: str, empty_dsn: str) -> None:
    # `dsn` was installed fresh (schema.sql); here every migration runs in order instead:
    # the first by hand, the rest by the upgrade path of `migrate`
    await _execute(empty_dsn, sql.MIGRATIONS[0].text)
    assert await _migrate(empty_dsn) == sql.SCHEMA_VERSION
    fresh, migrated = await catalog(dsn), await catalog(empty_dsn)
    for kind in CATALOG_QUERIES:
        assert migrated[kind] == fresh[kind], f"{kind} differ between schema.sql and migrations/"


async def test_each_migration_records_its_version(empty_dsn: str) -> None:
    conn = await asyncpg.connect(empty_dsn)
    try:
        for migration in sql.MIGRATIONS:
            async with conn.transaction():
                await conn.execute(migration.text)
            version = await conn.fetchval("SELECT max(version) FROM asyncjobs.schema_version")
            name = await conn.fetchval(
                "SELECT name FROM asyncjobs.schema_version WHERE version = $1", migration.version
            )
            assert (version, name) == (migration.version, migration.name)
    finally:
        await conn.close()


# ---------------------------------------------------------------------- migration files


def test_migration_files_are_numbered_without_gaps() -> None:
    folder = ROOT / "asyncjobs" / "sql" / "migrations"
    files = sorted(p.name for p in folder.iterdir() if p.suffix == ".sql")
    assert files == [f"{m.version:04d}_{m.name}.sql" for m in sql.load_migrations()]
    assert [m.version for m in sql.MIGRATIONS] == list(range(1, len(files) + 1))
    assert len(files) == sql.SCHEMA_VERSION
    # schema.sql records every version under its migration's name, and says which it is
    for migration in sql.MIGRATIONS:
        assert (
            f"INSERT INTO asyncjobs.schema_version (version, name) VALUES ({migration.version}, "
            f"'{migration.name}');" in sql.SCHEMA
        )
    assert sql.SCHEMA.startswith(f"-- asyncjobs schema, version {sql.SCHEMA_VERSION}:")


class _FakePackage:
    """Stands in for ``importlib.resources.files(...)`` with a folder of our own."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def files(self, _package: str | None) -> Path:
        return self.root


@pytest.fixture
def migrations_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    folder = tmp_path / "migrations"
    folder.mkdir()
    monkeypatch.setattr(sql, "resources", _FakePackage(tmp_path))
    yield folder


@pytest.mark.parametrize(
    ("names", "problem"),
    [
        (["0001_initial.sql", "0003_later.sql"], "without gaps"),
        (["0002_second.sql"], "without gaps"),
        (["0001_initial.sql", "0001_again.sql"], "without gaps"),
        (["0001_initial.sql", "2_bad.sql"], "NNNN_name.sql"),
        (["0001_Initial.sql"], "NNNN_name.sql"),
    ],
)
def test_load_migrations_refuses_bad_names_and_gaps(
    migrations_dir: Path, names: list[str], problem: str
) -> None:
    for name in names:
        (migrations_dir / name).write_text("SELECT 1;")
    with pytest.raises(ValueError, match=problem):
        sql.load_migrations()


def test_load_migrations_orders_by_version(migrations_dir: Path) -> None:
    names = ["0002_b.sql", "0010_j.sql", "0001_a.sql", *(f"{n:04d}_x.sql" for n in range(3, 10))]
    for name in names:
        (migrations_dir / name).write_text(f"-- {name}")
    (migrations_dir / "README.txt").write_text("not a migration")
    loaded = sql.load_migrations()
    assert [m.version for m in loaded] == list(range(1, 11))
    assert (loaded[0].name, loaded[0].text) == ("a", "-- 0001_a.sql")


# ---------------------------------------------------------------------- migrate


async def test_second_migrate_is_a_no_op(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        versions = "SELECT version, name, applied_at FROM asyncjobs.schema_version ORDER BY 1"
        before_rows, before = await conn.fetch(versions), await catalog(dsn)
        assert await _migrate(dsn) == sql.SCHEMA_VERSION
        assert await _migrate(dsn) == sql.SCHEMA_VERSION
        assert await conn.fetch(versions) == before_rows  # applied_at untouched
        assert await catalog(dsn) == before
    finally:
        await conn.close()


async def test_concurrent_migrations_install_once(empty_dsn: str) -> None:
    results = await asyncio.gather(*(_migrate(empty_dsn) for _ in range(3)))
    assert results == [sql.SCHEMA_VERSION] * 3
    conn = await asyncpg.connect(empty_dsn)
    try:
        rows = await conn.fetch("SELECT version FROM asyncjobs.schema_version ORDER BY 1")
    finally:
        await conn.close()
    assert [r["version"] for r in rows] == [m.version for m in sql.MIGRATIONS]


async def test_migrate_command_twice(dsn: str) -> None:
    for _ in range(2):
        with anyio.fail_after(60):
            done = await anyio.run_process(
                [sys.executable, "-m", "asyncjobs", "migrate", "--dsn", dsn], cwd=ROOT, check=False
            )
        assert done.returncode == 0, done.stderr.decode()
        assert b"up to date" in done.stdout


# ---------------------------------------------------------------------- schema mismatch

_app = App("schema")


@_app.job
async def noop() -> None:
    return None


async def _open_client_and_worker(dsn: str, fix: str = "asyncjobs migrate") -> None:
    for opener in (_app.client(dsn), _app.worker(dsn)):
        with pytest.raises(SchemaMismatch) as caught:
            async with opener:
                pass
        assert fix in str(caught.value)


async def test_missing_schema_is_a_schema_mismatch(empty_dsn: str) -> None:
    await _open_client_and_worker(empty_dsn)


@pytest.mark.parametrize(
    ("tamper", "fix"),
    [
        ("DELETE FROM asyncjobs.schema_version WHERE version = {v}", "asyncjobs migrate"),
        # a newer version that does not declare compatibility with this code: no migration
        # helps, this process needs the newer code
        (
            "INSERT INTO asyncjobs.schema_version (version, name) VALUES ({v} + 1, 'future')",
            "deploy a newer asyncjobs",
        ),
        ("DELETE FROM asyncjobs.schema_version", "asyncjobs migrate"),
    ],
    ids=["older", "newer", "no-version"],
)
async def test_other_schema_version_is_a_schema_mismatch(
    dsn: str, tamper: str, fix: str
) -> None:
    await _execute(dsn, tamper.format(v=sql.SCHEMA_VERSION))
    await _open_client_and_worker(dsn, fix)


async def test_worker_command_reports_a_schema_mismatch(empty_dsn: str) -> None:
    command = [sys.executable, "-m", "asyncjobs", "worker", "tests.test_schema:_app",
               "--dsn", empty_dsn]  # fmt: skip
    with anyio.fail_after(60):
        done = await anyio.run_process(command, cwd=ROOT, check=False)
    stderr = done.stderr.decode()
    assert done.returncode == 1, stderr
    assert "error: the asyncjobs schema is not installed" in stderr
    assert "Traceback" not in stderr


# ---------------------------------------------------------------------- claim plan

PENDING_RUNS = 20_000


async def _seed(conn: asyncpg.Connection, limited: bool) -> None:
    """20k pending runs over 3 queues (when `limited`, one limited and one with a limited
    job: the claim's full path; else none: its fast path), a few running."""
    queue_limit, job_limit = ("50", "30") if limited else ("NULL", "NULL")
    await conn.execute("""
        INSERT INTO asyncjobs.queues (name, max_concurrency)
        VALUES ('q0', $Q::integer), ('q1', NULL), ('q2', NULL);
        INSERT INTO asyncjobs.jobs (name, queue, max_concurrency)
        VALUES ('j0', 'q0', NULL), ('j1', 'q1', $J::integer), ('j2', 'q2', NULL);
        INSERT INTO asyncjobs.runs (job, queue, args, priority, root_run_id)
        SELECT 'j' || g % 3, 'q' || g % 3, '{}', g % 5, g FROM generate_series(1, $N) g;
        UPDATE asyncjobs.runs SET status = 'running', attempt = 1, started_at = now(),
                                  worker_id = 'w0', lease_expires_at = now() + interval '1 min'
         WHERE id % 1000 = 0;
        ANALYZE asyncjobs.runs;
    """.replace("$N", str(PENDING_RUNS)).replace("$Q", queue_limit).replace("$J", job_limit))



async def _claim_plans(conn: asyncpg.Connection, calls: int) -> list[dict[str, Any]]:
    """Plans of every statement inside ``asyncjobs.claim_runs`` as it really executes them:
    auto_explain logs nested statements, at NOTICE level so that they reach this client."""
    notices: list[str] = []
    conn.add_log_listener(lambda _conn, message: notices.append(message.message))
    await conn.execute("""
        LOAD 'auto_explain';
        SET auto_explain.log_min_duration = 0;
        SET auto_explain.log_nested_statements = on;
        SET auto_explain.log_format = json;
        SET auto_explain.log_level = notice;
    """)  # fmt: skip
    for _ in range(calls):
        claimed = await conn.fetch(
            "SELECT * FROM asyncjobs.claim_runs('w1', '{q0,q1,q2}', '{j0,j1,j2}', 10, '30 s')"
        )
        assert len(claimed) == 10
    await conn.execute("RESET auto_explain.log_min_duration")
    plans = []
    for message in notices:
        _, _, document = message.partition("plan:")
        if "claim_runs" not in message and "asyncjobs.runs" in document:
            plans.append(json.loads(document))
    return plans


@pytest.mark.parametrize("limited", [True, False], ids=["full_path", "fast_path"])
@pytest.mark.parametrize("plan_cache_mode", ["force_custom_plan", "force_generic_plan"])
async def test_claim_uses_the_pending_index(dsn: str, plan_cache_mode: str, limited: bool) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await _seed(conn, limited)
        # plpgsql switches to a generic plan after a few calls: check both kinds
        await conn.execute(f"SET plan_cache_mode = {plan_cache_mode}")
        plans = await _claim_plans(conn, calls=6)
    finally:
        await conn.close()

    claims = [p for p in plans if "candidates AS MATERIALIZED" in p["Query Text"]]
    assert len(claims) == 6
    if not limited:  # the fast path: the claim query is the only statement that reads runs
        assert len(plans) == 6, [p["Query Text"] for p in plans]
    for plan in plans:
        seq_scans = [
            n for n in plan_nodes(plan["Plan"])
            if n["Node Type"] == "Seq Scan" and n.get("Relation Name") in ("runs", "run_events")
        ]  # fmt: skip
        assert not seq_scans, plan["Query Text"]
    for plan in claims:
        (candidates,) = [
            n for n in plan_nodes(plan["Plan"]) if n.get("Subplan Name") == "CTE candidates"
        ]
        locked = [n for n in plan_nodes(candidates) if n["Node Type"] == "LockRows"]
        assert locked, "the candidate scan must lock rows (FOR UPDATE SKIP LOCKED)"
        (scan,) = [n for n in plan_nodes(locked[0]) if n.get("Relation Name") == "runs"]
        # an ordered index scan: the LIMIT stops after the first rows, with no sort
        assert (scan["Node Type"], scan["Index Name"]) == ("Index Scan", "runs_pending_idx")
        # the chosen runs are updated by primary-key lookups, never by a join that walks
        # runs_pkey from its start (the generic plan's merge join before migration 0013:
        # every claim read the index up to the ids it claimed)
        (claimed,) = [n for n in plan_nodes(plan["Plan"]) if n.get("Subplan Name") == "CTE claimed"]
        (update,) = [n for n in plan_nodes(claimed) if n["Node Type"] == "ModifyTable"]
        (target,) = [n for n in plan_nodes(update) if n.get("Alias") == update["Alias"]
                     and n is not update]
        assert (target["Node Type"], target["Index Name"]) == ("Index Scan", "runs_pkey")
        assert "Index Cond" in target, "the chosen runs must be looked up by id"


# ---------------------------------------------------------------------- error seam

#: statements violating each constraint, keyed by constraint (or unique index) name
_RUN = (
    "INSERT INTO asyncjobs.runs (job, queue, args, root_run_id{cols})"
    " VALUES ('j', 'q', '{{}}', 1{vals})"
)
VIOLATIONS = {
    "runs_job_check": "INSERT INTO asyncjobs.runs (job, queue, args, root_run_id)"
    " VALUES ('', 'q', '{}', 1)",
    "runs_queue_check": "INSERT INTO asyncjobs.runs (job, queue, args, root_run_id)"
    " VALUES ('j', '', '{}', 1)",
    "runs_dedup_id_check": _RUN.format(cols=", dedup_id", vals=", ''"),
    "queues_name_check": "INSERT INTO asyncjobs.queues (name) VALUES ('')",
    "jobs_name_check": "INSERT INTO asyncjobs.jobs (name, queue) VALUES ('', 'q')",
    "runs_running_has_lease": _RUN.format(cols=", status", vals=", 'running'"),
    "runs_terminal_has_finish": _RUN.format(cols=", status", vals=", 'succeeded'"),
    "runs_attempt_check": _RUN.format(cols=", attempt", vals=", -1"),
    "runs_max_attempts_check": _RUN.format(cols=", max_attempts", vals=", 0"),
    "runs_progress_check": _RUN.format(cols=", progress", vals=", 2"),
    "queues_max_concurrency_check": "INSERT INTO asyncjobs.queues VALUES ('q', 0)",
    "jobs_max_concurrency_check": "INSERT INTO asyncjobs.jobs (name, queue, max_concurrency)"
    " VALUES ('j', 'q', 0)",
    "runs_dedup_idx": _RUN.format(cols=", dedup_id", vals=", 'd'") + ", "
    + "('j', 'q', '{}', 1, 'd')",
}  # fmt: skip


async def test_every_constraint_is_classified(module_dsn: str) -> None:
    conn = await asyncpg.connect(module_dsn)
    try:
        rows = await conn.fetch("""
            SELECT conname AS name FROM pg_constraint
             WHERE connamespace = 'asyncjobs'::regnamespace AND contype IN ('c', 'u', 'x')
            UNION
            SELECT i.indexrelid::regclass::text FROM pg_index i JOIN pg_class c
                ON c.oid = i.indrelid
             WHERE c.relnamespace = 'asyncjobs'::regnamespace
               AND i.indisunique AND NOT i.indisprimary
        """)  # fmt: skip
    finally:
        await conn.close()
    in_schema = {row["name"].removeprefix("asyncjobs.") for row in rows}
    assert not set(_INPUT_CONSTRAINTS) & _INVARIANT_CONSTRAINTS
    classified = set(_INPUT_CONSTRAINTS) | _INVARIANT_CONSTRAINTS
    unclassified, gone = sorted(in_schema - classified), sorted(classified - in_schema)
    assert not unclassified, (
        f"add to _INPUT_CONSTRAINTS or _INVARIANT_CONSTRAINTS in backends/postgres.py: "
        f"{unclassified}"
    )
    assert not gone, f"no longer in the schema: {gone}"
    assert set(VIOLATIONS) <= in_schema, "these violations name constraints that are gone"
    # each input constraint's user-facing message is checked with a real violation
    assert set(_INPUT_CONSTRAINTS) <= set(VIOLATIONS), "add a violating statement to VIOLATIONS"


@pytest.mark.parametrize("constraint", sorted(VIOLATIONS))
async def test_constraint_violation_is_translated(module_dsn: str, constraint: str) -> None:
    # each statement fails as a whole, so they can share one database
    expected = InvalidArguments if constraint in _INPUT_CONSTRAINTS else DatabaseError
    conn = await asyncpg.connect(module_dsn)
    try:
        with pytest.raises(expected) as caught, translate_errors():
            await conn.execute(VIOLATIONS[constraint])
    finally:
        await conn.close()
    error = caught.value
    assert type(error) is expected
    assert isinstance(error.__cause__, asyncpg.IntegrityConstraintViolationError)
    assert error.__cause__.constraint_name == constraint
    if constraint in _INPUT_CONSTRAINTS:
        assert str(error) == _INPUT_CONSTRAINTS[constraint]


async def test_refused_connection_is_database_unavailable() -> None:
    with pytest.raises(DatabaseUnavailable) as caught, translate_errors():
        await asyncpg.connect("postgresql://nobody@127.0.0.1:1/none", timeout=5)
    assert isinstance(caught.value.__cause__, OSError)


async def test_killed_session_is_database_unavailable(module_dsn: str) -> None:
    """The server ends a pooled session (restart, pg_terminate_backend): whatever asyncpg
    raises next, depending on how far its read of the FATAL message got, must come out as
    DatabaseUnavailable, and the call after it must work again."""
    backend = PostgresBackend(module_dsn, min_pool_size=1, max_pool_size=1)
    await backend.open()
    killer = await asyncpg.connect(module_dsn)
    causes = []
    try:
        for delay in [0.0, 0.0005, 0.001, 0.002] * 3:
            pid = await backend.pool.fetchval("SELECT pg_backend_pid()")
            await killer.execute("SELECT pg_terminate_backend($1)", pid)
            await anyio.sleep(delay)  # land at different points of the shutdown
            try:
                await backend.get_run(1)
            except DatabaseUnavailable as exc:
                causes.append(exc.__cause__)
            assert await backend.get_run(1) is None
    finally:
        await killer.close()
        await backend.close()
    assert causes
    assert all(type(c).__module__.startswith("asyncpg") for c in causes), causes


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.CannotConnectNowError("the database system is starting up"),
        asyncpg.InterfaceError("connection is closed"),
        asyncpg.InternalClientError("cannot switch to state 15; another operation is in progress"),
        ConnectionResetError("reset by peer"),
    ],
    ids=type,
)
def test_connection_errors_are_database_unavailable(error: Exception) -> None:
    with pytest.raises(DatabaseUnavailable) as caught, translate_errors():
        raise error
    assert caught.value.__cause__ is error


async def test_other_database_errors_are_database_error(module_dsn: str) -> None:
    conn = await asyncpg.connect(module_dsn)
    try:
        with pytest.raises(DatabaseError) as caught, translate_errors():
            await conn.execute("SELECT 1 / 0")
        assert type(caught.value) is DatabaseError
        assert isinstance(caught.value.__cause__, asyncpg.DivisionByZeroError)
        with pytest.raises(SchemaMismatch) as missing, translate_errors():
            await conn.execute("SELECT * FROM asyncjobs.no_such_table")
        assert isinstance(missing.value.__cause__, asyncpg.UndefinedTableError)
    finally:
        await conn.close()


def test_migration_header_declares_compatibility(migrations_dir: Path) -> None:
    (migrations_dir / "0001_a.sql").write_text("SELECT 1;")
    (migrations_dir / "0002_b.sql").write_text("-- compatible-with-code: 1\nSELECT 1;")
    (migrations_dir / "0003_c.sql").write_text("-- compatible-with-code: 2 (no: not a header)")
    loaded = sql.load_migrations()
    # without the line a migration is compatible only with code of its own version
    assert [m.compatible_from for m in loaded] == [1, 1, 3]


@pytest.mark.parametrize(
    "header",
    ["-- compatible-with-code: 3", "-- compatible-with-code: 0",
     "-- compatible-with-code: 1\n-- compatible-with-code: 1"],
)  # fmt: skip
def test_a_bad_compatibility_header_is_refused(migrations_dir: Path, header: str) -> None:
    (migrations_dir / "0001_a.sql").write_text("SELECT 1;")
    (migrations_dir / "0002_b.sql").write_text(f"{header}\nSELECT 1;")
    with pytest.raises(ValueError, match="compatible-with-code"):
        sql.load_migrations()


async def test_migrate_records_each_versions_compatibility(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT version, compatible_from FROM asyncjobs.schema_version ORDER BY 1"
        )
    finally:
        await conn.close()
    assert [tuple(r) for r in rows] == [(m.version, m.compatible_from) for m in sql.MIGRATIONS]
