"""PostgreSQL backend on asyncpg: one pool for queries plus one dedicated LISTEN connection.

Works behind PgBouncer in transaction mode when ``pgbouncer=True`` (no prepared statement
cache; only transaction-scoped advisory locks are used anywhere) as long as ``listen_dsn``
points at the server directly, since LISTEN needs a session of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import operator
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio
import asyncpg
import orjson

from asyncjobs import sql
from asyncjobs.activity import MAX_LISTED_RUNS, Activity, FinishedCount, WorkerState
from asyncjobs.backends.base import (
    ClaimBatch,
    Clock,
    Completion,
    Enqueued,
    FeedPage,
    FireResult,
    Heartbeat,
    JobDefinition,
    JobState,
    Listener,
    NewRun,
    Notification,
    PruneResult,
    QueueDefinition,
    QueueState,
    RunFilter,
    ScheduleFire,
    StoredJobRow,
    SweepResult,
    SwitchKind,
    WorkerInfo,
)
from asyncjobs.backends.held import HeldConnection
from asyncjobs.backends.listener import LOCAL_PEERS, PostgresListener
from asyncjobs.codec import dumps
from asyncjobs.errors import (
    ConcurrencyKeyError,
    DatabaseBusy,
    DatabaseError,
    DatabaseUnavailable,
    DuplicateRun,
    InvalidArguments,
    SchemaMismatch,
)
from asyncjobs.explain import DEFAULT_WORKER_TTL, RunFacts, SlotHolder
from asyncjobs.gauges import ClusterGauges, Load
from asyncjobs.groupcommit import GroupCommit
from asyncjobs.runs import EventCursor, RunEvent, RunRecord, RunStatus, Trigger
from asyncjobs.schedules import ScheduleDefinition, ScheduleState
from asyncjobs.summary import JobSummary, LastSuccess

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    _Connection = asyncpg.Connection | PoolConnectionProxy[asyncpg.Record]

Q = sql.QUERIES
#: runs rescued (and, separately, expired) per sweep statement; a full batch sweeps again
SWEEP_BATCH = 500

# Check constraints whose violation means the caller passed something wrong.
_INPUT_CONSTRAINTS = {
    "runs_job_check": "job name must be 1 to 200 characters",
    "runs_queue_check": "queue name must be 1 to 200 characters",
    "runs_dedup_id_check": "dedup_id must be 1 to 200 characters",
    "queues_name_check": "queue name must be 1 to 200 characters",
    "jobs_name_check": "job name must be 1 to 200 characters",
}
# Invariants the code itself must keep; a violation is a bug, reported as DatabaseError.
_INVARIANT_CONSTRAINTS = frozenset(
    {
        "runs_running_has_lease",
        "runs_terminal_has_finish",
        "runs_attempt_check",
        "runs_max_attempts_check",
        "runs_retries_check",
        "runs_restarts_check",
        # max_restarts is checked when the job is declared (asyncjobs.jobs.Job)
        "runs_max_restarts_check",
        # compatible_from is written by migrate() from the migration files' header lines
        "schema_version_check",
        "runs_progress_check",
        "queues_max_concurrency_check",
        "jobs_max_concurrency_check",
        # enqueue_runs inserts with ON CONFLICT on this unique index and reports the holder
        # as DuplicateRun; a violation that still reaches translate_errors is a bug
        "runs_dedup_idx",
        # schedules are checked when declared (asyncjobs.schedules.define_schedule), and
        # fire_schedule inserts with ON CONFLICT on runs_schedule_fire_idx (a tick fired twice
        # is skipped, not an error)
        "runs_schedule_check",
        "runs_schedule_fire_idx",
        # asyncjobs.telemetry.encode_context stores only objects under MAX_CONTEXT_BYTES
        "runs_trace_context_check",
        # step keys and key limits are checked where declared (asyncjobs.jobs.Job,
        # asyncjobs.steps); enqueue_runs inserts with ON CONFLICT on runs_step_idx and returns
        # the step's existing child; the key itself is cut to 200 characters by its trigger
        "runs_step_key_check",
        "runs_step_has_parent",
        "runs_step_idx",
        "runs_concurrency_key_check",
        "jobs_key_field_check",
        "jobs_key_concurrency_check",
        "jobs_key_limit_check",
        # rate limits are parsed where declared (asyncjobs.rates)
        "jobs_rate_limit_check",
        "jobs_rate_period_check",
        "jobs_rate_check",
        "jobs_key_rate_limit_check",
        "jobs_key_rate_period_check",
        "jobs_key_rate_check",
        "queues_rate_limit_check",
        "queues_rate_period_check",
        "queues_rate_check",
        "schedules_name_check",
        "schedules_job_check",
        "schedules_cron_check",
        "schedules_every_check",
        "schedules_initial_delay_check",
        "schedules_misfire_check",
        "schedules_timing_check",
    }
)
# Raised by the runs_concurrency_key trigger (not a constraint of the catalog): a run of a job
# whose key a function of its code computes came without a key.
_KEY_REQUIRED = "runs_concurrency_key_required"
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.InterfaceError,
    # When the server ends a session (restart, pg_terminate_backend), its FATAL message can
    # reach an idle pooled connection before the socket closes; the next query then fails
    # with "cannot switch to state ...; another operation is in progress". The pool replaces
    # the connection, so it is an outage to retry, not a bug to report.
    asyncpg.InternalClientError,
    ConnectionError,
    OSError,
)

# Refusals of the moment, not of the statement's data: trying the same statement again may work.
_TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.TransactionRollbackError,  # deadlock, serialization failure
    asyncpg.LockNotAvailableError,  # lock_timeout
    asyncpg.QueryCanceledError,  # statement_timeout, pg_cancel_backend
)


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """The one place where asyncpg exceptions become asyncjobs exceptions."""
    try:
        yield
    except asyncpg.CheckViolationError as exc:
        if exc.constraint_name == _KEY_REQUIRED:
            raise ConcurrencyKeyError(exc.message) from exc
        message = _INPUT_CONSTRAINTS.get(exc.constraint_name or "")
        if message is not None:
            raise InvalidArguments(message) from exc
        raise DatabaseError(f"constraint {exc.constraint_name} violated: {exc}") from exc
    except _TRANSIENT_ERRORS as exc:
        raise DatabaseBusy(f"{type(exc).__name__}: {exc}") from exc
    except (asyncpg.UndefinedTableError, asyncpg.UndefinedFunctionError) as exc:
        raise SchemaMismatch(
            f"the asyncjobs schema is missing or outdated ({exc}); run `asyncjobs migrate`"
        ) from exc
    except asyncpg.PostgresError as exc:
        if isinstance(exc, _CONNECTION_ERRORS):
            raise DatabaseUnavailable(f"database connection lost: {exc}") from exc
        raise DatabaseError(f"{type(exc).__name__}: {exc}") from exc
    except _CONNECTION_ERRORS as exc:
        raise DatabaseUnavailable(f"database unavailable: {exc}") from exc


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        encoder=lambda value: value if isinstance(value, str) else dumps(value),
        decoder=orjson.loads,
        format="text",
    )


#: Key of the migration lock, a transaction-scoped advisory lock (safe behind PgBouncer).
_MIGRATE_LOCK = "asyncjobs:migrate"


async def apply_migrations(
    conn: _Connection, migrations: Sequence[sql.Migration]
) -> tuple[int, int]:
    """Bring the database up to the last of ``migrations`` in one transaction; returns its
    schema version before (0: not installed) and after (higher than the last of
    ``migrations`` when a newer deploy migrated it already).

    The advisory lock is taken before anything is read, so concurrent migrators (several
    processes starting at once, fresh database included: the lock needs no schema) run one
    after the other, and the later ones find nothing left to do.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", _MIGRATE_LOCK)
        installed = await conn.fetchval(Q["schema_installed"].text)
        before: int = (await conn.fetchval(Q["schema_version"].text) or 0) if installed else 0
        current = before
        if not installed and migrations[-1].version >= sql.SCHEMA_VERSION:
            logger.info("installing the asyncjobs schema (version %d)", migrations[-1].version)
            await conn.execute(sql.SCHEMA)
            current = sql.SCHEMA_VERSION
        # otherwise from `before`; with a list older than schema.sql on an empty database
        # (tests of upgrades), every migration from the first
        pending = [m for m in migrations if m.version > current]
        for migration in pending:
            logger.info("applying migration %04d_%s", migration.version, migration.name)
            await conn.execute(migration.text)
        # the header lines are the source of the compatibility of each version; older
        # migrations recorded before the column existed (version 4) are filled in too
        if await conn.fetchval(Q["records_compatibility"].text):
            await conn.execute(
                Q["record_compatibility"].text,
                *Q["record_compatibility"].arguments((), {
                    "versions": [m.version for m in migrations],
                    "compatible_from": [m.compatible_from for m in migrations],
                }),
            )  # fmt: skip
        after: int = await conn.fetchval(Q["schema_version"].text)
        return before, after


async def _applied_migrations(conn: _Connection) -> list[tuple[int, int | None]]:
    if not await conn.fetchval(Q["schema_installed"].text):
        return []
    rows = await conn.fetch(Q["applied_migrations"].text)
    return [(row["version"], row["compatible_from"]) for row in rows]


#: the ``NewRun`` fields of a run in ``enqueue_runs``' :runs document, in its ``r ->> n`` order
#: (``args_json`` and ``trace_context`` go as JSON text; ``trigger`` is a ``StrEnum``)
_ENQUEUE_FIELDS = (
    "job", "queue", "args_json", "priority", "not_before", "not_after", "dedup_id",
    "max_attempts", "parent_run_id", "root_run_id", "trigger", "max_restarts", "trace_context",
    "step_key", "key_field", "concurrency_key",
)  # fmt: skip
_ENQUEUE_ROW = operator.attrgetter(*_ENQUEUE_FIELDS)
# the hot path passes enqueue_runs' parameters by position
if Q["enqueue_runs"].params != ("runs", "now", "origin"):
    raise RuntimeError(f"enqueue_runs takes {Q['enqueue_runs'].params}, not (runs, now, origin)")
_ENQUEUE_TEXT = Q["enqueue_runs"].text


def _retry_alone(error: Exception) -> bool:
    """A coalesced insert refused by the database wrote nothing: each run is sent again on
    its own, so only the bad one fails. A lost connection may have committed it: no retry."""
    return not isinstance(error, DatabaseUnavailable)


def _raise_first_duplicate(runs: Sequence[NewRun], results: Sequence[Enqueued]) -> None:
    for run, result in zip(runs, results, strict=True):
        # a child found at its step is the step's result, not a duplicate
        if not result.created and result.step_job is None and run.dedup_id is not None:
            raise DuplicateRun(run.job, run.dedup_id, result.run_id)


async def _reset_connection(conn: asyncpg.Connection) -> None:
    """Returned to the pool: asyncpg's default reset runs four statements (advisory unlock,
    CLOSE ALL, UNLISTEN, RESET ALL) on every release, three commits per query. We keep no
    session state on pooled connections, so only an open transaction needs undoing."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


#: seconds between checks of the WAL flush a feed read waits for (``_until_durable``): any
#: synchronous commit flushes it, the WAL writer at the latest after 3 x wal_writer_delay
FLUSH_POLL_MIN = 0.001
FLUSH_POLL_MAX = 0.05


def _lsn(text: str) -> int:
    """A WAL position (``pg_lsn`` as text, ``"16/B374D848"``) as a number, for comparing."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def _event(row: asyncpg.Record) -> RunEvent:
    return RunEvent(
        row["id"], row["run_id"], row["root_run_id"], row["at"], row["kind"], row["data"],
        row["xid"],
    )


#: Columns of ``runs`` this code knows, in RunRecord's order; a column added by a newer,
#: compatible migration (a rolling deploy) is ignored rather than breaking every read.
_RUN_FIELD_ORDER = tuple(f.name for f in dataclasses.fields(RunRecord))


def _record(row: asyncpg.Record) -> RunRecord:
    return _record_builder(tuple(row.keys()))(row)


@functools.lru_cache(maxsize=64)
def _record_builder(columns: tuple[str, ...]) -> Callable[[asyncpg.Record], RunRecord]:
    """A RunRecord maker for rows of one shape, its columns picked by position, worked out
    once per shape: 4.5 us a record, where picking every column by name took 12 us, the
    largest part of the worker's Python per claimed run."""
    present = [name for name in _RUN_FIELD_ORDER if name in columns]
    pick = operator.itemgetter(*(columns.index(name) for name in present))
    status_at, trigger_at = present.index("status"), present.index("trigger")
    # positional while the row's fields are the dataclass's first ones (a whole runs row)
    positional = present == list(_RUN_FIELD_ORDER[: len(present)])

    def build(row: asyncpg.Record) -> RunRecord:
        values = list(pick(row))
        values[status_at] = RunStatus(values[status_at])
        values[trigger_at] = Trigger(values[trigger_at])
        if positional:
            return RunRecord(*values)
        return RunRecord(**dict(zip(present, values, strict=True)))

    return build


class PostgresBackend:
    """Backend over a PostgreSQL database (see the module docstring for PgBouncer)."""

    def __init__(
        self,
        dsn: str,
        *,
        listen_dsn: str | None = None,
        # 0: with a floor, asyncpg's pool reconnects on its own while the server is down and
        # logs a warning with a traceback on every try; on demand, outages are reported once
        min_pool_size: int = 0,
        max_pool_size: int = 10,
        pgbouncer: bool = False,
        migrate: bool = False,
        clock: Clock | None = None,
    ) -> None:
        self.dsn = dsn
        self.listen_dsn = listen_dsn or dsn
        self._pool_sizes = (min_pool_size, max_pool_size)
        self._pgbouncer = pgbouncer
        self._migrate_on_open = migrate
        self._pool: asyncpg.Pool | None = None
        self._listener = PostgresListener(self.listen_dsn, "asyncjobs")
        self._users = 0  # open() calls not yet matched by close()
        #: the schema version the last ``migrate()`` found (0: none installed), for the CLI
        self.migrated_from: int | None = None
        self._lifecycle = asyncio.Lock()
        self.clock = clock
        self._unsubscribe: Callable[[], None] | None = None
        # single runs triggered at once share one statement (asyncjobs.groupcommit), sent on
        # a connection kept between statements (asyncjobs.backends.held)
        self._held = HeldConnection(translate_errors)
        self._group: GroupCommit[NewRun, Enqueued] = GroupCommit(
            self._send_group, _retry_alone
        )

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Connect, then check (or, when asked, migrate) the schema.

        Reference counted, because a client and a worker may share one backend
        (``app.client(backend)``, ``app.worker(backend)``): every ``open`` needs a ``close``,
        and only the last ``close`` disconnects.
        """
        async with self._lifecycle:
            if self._users == 0:
                await self._connect()
                if self.clock is not None:
                    self._unsubscribe = self.clock.on_move(self._clock_moved)
            self._users += 1

    async def _connect(self) -> None:
        with translate_errors():
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=self._pool_sizes[0],
                max_size=self._pool_sizes[1],
                init=_init_connection,
                reset=_reset_connection,
                statement_cache_size=0 if self._pgbouncer else 100,
            )
        self._held.open(self._pool)
        try:
            if self._migrate_on_open:
                await self.migrate()
            await self._check_schema()
        except BaseException:
            await self._disconnect()
            raise
        LOCAL_PEERS.join(self.dsn, self._listener)

    async def close(self) -> None:
        """Undo one ``open``; the last one disconnects (extra calls only make sure of it)."""
        async with self._lifecycle:
            self._users = max(0, self._users - 1)
            if self._users == 0:
                await self._disconnect()

    async def _disconnect(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        LOCAL_PEERS.leave(self.dsn, self._listener)
        await self._listener.stop()
        await self._group.wait_idle()
        await self._held.close()
        pool, self._pool = self._pool, None
        if pool is not None:
            with anyio.CancelScope(shield=True):
                await pool.close()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("the backend is not open; use `async with` on the client/worker")
        return self._pool

    async def migrate(self) -> int:
        """Install the schema (fresh database) or apply the missing migrations; returns the
        database's schema version afterwards (see ``apply_migrations``)."""
        with translate_errors():
            async with self.pool.acquire() as conn:
                self.migrated_from, version = await apply_migrations(conn, sql.MIGRATIONS)
        return version

    async def _check_schema(self) -> None:
        """Refuse a database this code cannot work with: not installed, older than the code,
        or migrated past it by a migration that does not declare compatibility with it."""
        with translate_errors():
            async with self.pool.acquire() as conn:
                applied = await _applied_migrations(conn)
        problem = sql.incompatibility(sql.SCHEMA_VERSION, applied)
        if problem is None:
            return
        current = max((version for version, _ in applied), default=0)
        fix = (
            "run `asyncjobs migrate` (or open with migrate=True)"
            if current < sql.SCHEMA_VERSION
            else "deploy a newer asyncjobs to this process"
        )
        raise SchemaMismatch(
            f"the asyncjobs schema is {problem}; this code needs schema version "
            f"{sql.SCHEMA_VERSION} or a newer one compatible with it: {fix}"
        )

    # ------------------------------------------------------------------ time

    def clock_now(self) -> datetime | None:
        return None if self.clock is None else self.clock.now()

    def _clock_moved(self) -> None:
        # as after a lost LISTEN connection: claimers look for work (a delayed run may be due
        # now), waiters and schedulers look again, workers heartbeat at the new time
        self._listener.dispatch(Notification(all_queues=True, reconnected=True))

    def _args(self, query: sql.Query, named: dict[str, Any]) -> list[Any]:
        """The statement's arguments, by name (``:now``: the clock's time)."""
        if query.takes_now:
            named = {**named, "now": self.clock_now()}
        return query.arguments((), named)

    # ------------------------------------------------------------------ helpers

    async def _fetch(self, name: str, /, **named: Any) -> list[asyncpg.Record]:
        with translate_errors():
            return await self.pool.fetch(Q[name].text, *self._args(Q[name], named))

    async def _fetchrow(self, name: str, /, **named: Any) -> asyncpg.Record | None:
        with translate_errors():
            return await self.pool.fetchrow(Q[name].text, *self._args(Q[name], named))

    async def _fetchval(self, name: str, /, **named: Any) -> Any:
        with translate_errors():
            return await self.pool.fetchval(Q[name].text, *self._args(Q[name], named))

    async def _execute(self, name: str, /, **named: Any) -> None:
        with translate_errors():
            await self.pool.execute(Q[name].text, *self._args(Q[name], named))

    # ------------------------------------------------------------------ definitions

    async def register_definitions(
        self, queues: Sequence[QueueDefinition], jobs: Sequence[JobDefinition]
    ) -> None:
        await self._execute(
            "register_definitions",
            queue_names=[q.name for q in queues],
            queue_max_concurrency=[q.max_concurrency for q in queues],
            queue_rate_limits=[q.rate_limit.count if q.rate_limit else None for q in queues],
            queue_rate_periods=[q.rate_limit.period if q.rate_limit else None for q in queues],
            job_names=[j.name for j in jobs],
            job_queues=[j.queue for j in jobs],
            job_max_concurrency=[j.max_concurrency for j in jobs],
            job_args_schemas=[dumps(j.args_schema) for j in jobs],
            job_key_fields=[j.key_field for j in jobs],
            job_key_concurrency=[j.key_concurrency for j in jobs],
            job_rate_limits=[j.rate_limit.count if j.rate_limit else None for j in jobs],
            job_rate_periods=[j.rate_limit.period if j.rate_limit else None for j in jobs],
            job_key_rate_limits=[j.key_rate_limit.count if j.key_rate_limit else None
                                 for j in jobs],
            job_key_rate_periods=[j.key_rate_limit.period if j.key_rate_limit else None
                                  for j in jobs],
        )

    async def set_enabled(self, kind: SwitchKind, name: str, enabled: bool) -> bool:
        query = {
            "job": "set_job_enabled",
            "queue": "set_queue_enabled",
            "schedule": "set_schedule_enabled",
        }[kind]
        return await self._fetchval(query, name=name, enabled=enabled) is not None

    # ------------------------------------------------------------------ runs

    async def enqueue(
        self, runs: Sequence[NewRun], *, reject_duplicates: bool = False
    ) -> list[Enqueued]:
        if not runs:
            return []
        if len(runs) == 1 and runs[0].parent_run_id is None:
            # a lone run joins the statement of runs triggered at the same moment; children
            # do not (their steps are matched one call at a time, see _reuse_steps)
            result = await self._group.submit(runs[0])
            if reject_duplicates:
                _raise_first_duplicate(runs, [result])
            return [result]
        # One statement is atomic on its own; only a batch that may be partly written before a
        # duplicate is found needs a transaction to roll back.
        if not (reject_duplicates and len(runs) > 1 and any(r.dedup_id for r in runs)):
            results = await self._waking(runs, self._enqueue_on(self.pool, runs))
        else:
            results = await self._waking(runs, self._enqueue_all_or_nothing(runs))
        if reject_duplicates:
            _raise_first_duplicate(runs, results)
        return results

    def _wake_local(self, runs: Sequence[NewRun], results: Sequence[Enqueued] | None) -> None:
        """Wake this process's claimers of the queues that just got runs (committed;
        ``results`` None: maybe): one claim round trip to the start, where the NOTIFY would add
        a trip to the server and back. That NOTIFY skips them (``LocalPeers``), so every queue
        is woken, delayed runs' too: which runs are due is the database clock's call, and a
        claim too early only comes back empty."""
        if results is None or any(e.created for e in results):
            LOCAL_PEERS.dispatch(self.dsn, Notification(queues=frozenset(r.queue for r in runs)))

    async def _enqueue_all_or_nothing(self, runs: Sequence[NewRun]) -> list[Enqueued]:
        with translate_errors():
            async with self.pool.acquire() as conn, conn.transaction():
                results = await self._enqueue_on(conn, runs)
                _raise_first_duplicate(runs, results)  # rolls the whole batch back
                return results

    async def _waking(
        self, runs: Sequence[NewRun], insert: Awaitable[list[Enqueued]]
    ) -> list[Enqueued]:
        """Await ``insert``, then wake this process's claimers of its queues. Also when it
        failed or was cancelled: it may have committed (cancelled while the reply was on its
        way), and its NOTIFY skips them, so they are woken (at worst one empty claim)."""
        try:
            results = await insert
        except BaseException:
            self._wake_local(runs, None)
            raise
        self._wake_local(runs, results)
        return results

    async def _send_group(self, runs: list[NewRun]) -> list[Enqueued]:
        return await self._waking(runs, self._held.use(self._enqueue_on, runs))

    async def _insert(
        self, conn: asyncpg.Pool | _Connection, runs: Sequence[NewRun]
    ) -> list[asyncpg.Record]:
        try:
            # one C call for the whole batch: the runs as arrays of their fields
            document = orjson.dumps(list(map(_ENQUEUE_ROW, runs))).decode()
        except orjson.JSONEncodeError as exc:  # e.g. a lone surrogate in a name
            raise InvalidArguments(f"a run cannot be stored: {exc}") from None
        with translate_errors():
            origin = LOCAL_PEERS.origin(self.dsn, asyncio.get_running_loop())
            return await conn.fetch(_ENQUEUE_TEXT, document, self.clock_now(), origin)

    async def _enqueue_on(
        self, conn: asyncpg.Pool | _Connection, runs: Sequence[NewRun]
    ) -> list[Enqueued]:
        """Insert, then pair inputs with new ids (in order); a skipped run gets the id of the
        child already at its step, else of the active run holding its dedup id."""
        rows = await self._insert(conn, runs)
        if len(rows) == len(runs):
            return [Enqueued(row["id"], True) for row in rows]
        by_step = {
            (row["parent_run_id"], row["step_key"]): row["id"] for row in rows if row["step_key"]
        }
        created = {
            (row["job"], row["dedup_id"]): row["id"]
            for row in rows
            if row["dedup_id"] and not row["step_key"]
        }
        plain = iter(row["id"] for row in rows if not row["dedup_id"] and not row["step_key"])
        steps = await self._existing_steps(conn, runs, by_step)
        holders = await self._dedup_holders(conn, runs, created, steps)
        results = []
        for run in runs:
            step = (run.parent_run_id, run.step_key)
            if run.step_key and step in by_step:
                results.append(Enqueued(by_step.pop(step), True))
            elif run.step_key and step in steps:
                child_id, child_job = steps[step]
                results.append(Enqueued(child_id, False, step_job=child_job))
            elif not run.dedup_id:
                results.append(Enqueued(next(plain), True))
            elif (key := (run.job, run.dedup_id)) in created:
                results.append(Enqueued(created.pop(key), True))
            elif key in holders:
                results.append(Enqueued(holders[key], False))
            else:
                # The holder finished between our insert and the lookup: the id is free now.
                results.extend(await self._enqueue_on(conn, [run]))
        return results

    @staticmethod
    async def _existing_steps(
        conn: asyncpg.Pool | _Connection,
        runs: Sequence[NewRun],
        by_step: dict[tuple[int | None, str | None], int],
    ) -> dict[tuple[int | None, str | None], tuple[int, str]]:
        """The children already at the steps of runs that were not inserted. A child is never
        deleted while its parent lives, so a step skipped by the insert is found here."""
        missing = [
            r for r in runs if r.step_key and (r.parent_run_id, r.step_key) not in by_step
        ]
        if not missing:
            return {}
        with translate_errors():
            found = await conn.fetch(
                Q["runs_by_step"].text,
                *Q["runs_by_step"].arguments((), {
                    "parent_run_ids": [r.parent_run_id for r in missing],
                    "step_keys": [r.step_key for r in missing],
                }),
            )  # fmt: skip
        return {(row["parent_run_id"], row["step_key"]): (row["id"], row["job"]) for row in found}

    @staticmethod
    async def _dedup_holders(
        conn: asyncpg.Pool | _Connection,
        runs: Sequence[NewRun],
        created: dict[tuple[str, str | None], int],
        steps: dict[tuple[int | None, str | None], tuple[int, str]],
    ) -> dict[tuple[str, str], int]:
        missing = [
            (r.job, r.dedup_id)
            for r in runs
            if r.dedup_id
            and (r.job, r.dedup_id) not in created
            and (r.parent_run_id, r.step_key) not in steps
        ]
        if not missing:
            return {}
        with translate_errors():
            found = await conn.fetch(
                Q["active_run_ids_by_dedup"].text,
                *Q["active_run_ids_by_dedup"].arguments((), {
                    "jobs": [m[0] for m in missing],
                    "dedup_ids": [m[1] for m in missing],
                }),
            )  # fmt: skip
        return {(row["job"], row["dedup_id"]): row["id"] for row in found}

    async def release_step(self, parent_run_id: int, step_key: str) -> bool:
        """Free a step whose child did not succeed (see ``release_step`` in sql/queue.sql)."""
        return await self._fetchval(
            "release_step", parent_run_id=parent_run_id, step_key=step_key
        ) is not None

    async def claim(
        self,
        worker_id: str,
        queues: Sequence[str],
        jobs: Sequence[str],
        capacity: int,
        lease_seconds: float,
    ) -> list[RunRecord]:
        rows = await self._fetch(
            "claim_runs",
            worker=worker_id,
            queues=list(queues),
            jobs=list(jobs),
            capacity=capacity,
            lease=timedelta(seconds=lease_seconds),
        )
        build = _record_builder(tuple(rows[0].keys())) if rows else _record
        batch = ClaimBatch(build(row) for row in rows if row["id"] is not None)
        for row in rows:
            if row["id"] is None:  # the wake row: when a full rate limit allows a start
                batch.wake_in = max(0.0, (row["not_before"] - row["created_at"]).total_seconds())
        return batch

    async def complete(self, worker_id: str, completions: Sequence[Completion]) -> set[int]:
        if not completions:
            return set()
        rows = await self._fetch(
            "complete_runs",
            worker=worker_id,
            ids=[c.run_id for c in completions],
            attempts=[c.attempt for c in completions],
            statuses=[c.status.value for c in completions],
            results=[c.result_json for c in completions],
            errors=[None if c.error is None else dumps(c.error) for c in completions],
            retry_in=[c.retry_in for c in completions],
            handback=[c.handback for c in completions],
        )
        return {row["id"] for row in rows}

    async def heartbeat(
        self, worker_id: str, runs: Sequence[tuple[int, int]], lease_seconds: float
    ) -> Heartbeat:
        row = await self._fetchrow(
            "heartbeat",
            worker=worker_id,
            ids=[r[0] for r in runs],
            attempts=[r[1] for r in runs],
            lease=timedelta(seconds=lease_seconds),
        )
        assert row is not None  # an aggregate always returns one row
        return Heartbeat(
            row["registered"], frozenset(row["kept"]), frozenset(row["cancel_requested"])
        )

    async def sweep(self, worker_ttl_seconds: float) -> SweepResult:
        row = await self._fetchrow(
            "sweep", worker_ttl=timedelta(seconds=worker_ttl_seconds), batch=SWEEP_BATCH
        )
        assert row is not None
        return SweepResult(
            row["restarted"], row["failed"], row["expired"], row["workers_removed"], row["full"]
        )

    async def cancel(self, run_id: int, cascade: bool) -> list[tuple[int, RunStatus]]:
        rows = await self._fetch("cancel_runs", run_id=run_id, cascade=cascade)
        return [(row["id"], RunStatus(row["status"])) for row in rows]

    async def add_events(
        self, worker_id: str, events: Sequence[tuple[int, int, str, dict[str, Any]]]
    ) -> int:
        if not events:
            return 0
        rows = await self._fetch(
            "add_events",
            worker=worker_id,
            run_ids=[e[0] for e in events],
            attempts=[e[1] for e in events],
            kinds=[e[2] for e in events],
            data=[dumps(e[3]) for e in events],
        )
        return len(rows)

    # ------------------------------------------------------------------ workers

    async def register_worker(self, info: WorkerInfo) -> None:
        await self._execute(
            "register_worker",
            id=info.id,
            host=info.host,
            pid=info.pid,
            queues=list(info.queues),
            jobs=list(info.jobs),
            concurrency=info.concurrency,
        )

    async def unregister_worker(self, worker_id: str) -> None:
        await self._execute("unregister_worker", id=worker_id)

    # ------------------------------------------------------------------ reads

    async def get_run(self, run_id: int) -> RunRecord | None:
        row = await self._fetchrow("get_run", id=run_id)
        return None if row is None else _record(row)

    async def get_runs(self, where: RunFilter) -> list[RunRecord]:
        rows = await self._fetch(
            "get_runs" if where.parent_run_id is None else "get_runs_of_parent",
            job=where.job,
            status=where.status,
            parent_run_id=where.parent_run_id,
            root_run_id=where.root_run_id,
            trigger=where.trigger,
            before_id=where.before_id,
            limit=where.limit,
            created_after=where.created_after,
            created_before=where.created_before,
            roots_only=where.roots_only,
        )
        return [_record(row) for row in rows]

    async def terminal_runs(self, run_ids: Sequence[int]) -> list[RunRecord]:
        rows = await self._fetch("terminal_runs", ids=list(run_ids))
        return [_record(row) for row in rows]

    async def get_events(self, run_id: int, after_id: int, limit: int) -> list[RunEvent]:
        rows = await self._fetch("get_events", run_id=run_id, after_id=after_id, limit=limit)
        return [
            RunEvent(
                row["id"], row["run_id"], row["root_run_id"], row["at"], row["kind"], row["data"]
            )
            for row in rows
        ]

    # ------------------------------------------------------------------ schedules

    async def register_schedules(
        self, schedules: Sequence[ScheduleDefinition], jobs: Sequence[str]
    ) -> None:
        ordered = sorted(schedules, key=lambda d: d.name)
        renames = [(old, d.name) for d in ordered for old in d.previous_names]
        with translate_errors():
            async with self.pool.acquire() as conn, conn.transaction():
                if renames:
                    rename = Q["rename_schedules"]
                    await conn.execute(rename.text, *rename.arguments((), {
                        "old_names": [r[0] for r in renames],
                        "new_names": [r[1] for r in renames],
                    }))  # fmt: skip
                if ordered:
                    upsert = Q["upsert_schedules"]
                    columns = {
                        "names": [d.name for d in ordered],
                        "jobs": [d.job for d in ordered],
                        "crons": [d.cron for d in ordered],
                        "intervals": [d.every for d in ordered],
                        "initial_delays": [d.initial_delay for d in ordered],
                        "timezones": [d.timezone for d in ordered],
                        "args": [d.args_json for d in ordered],
                        "misfires": [d.misfire for d in ordered],
                        "all_nodes": [d.all_nodes for d in ordered],
                    }
                    await conn.execute(upsert.text, *self._args(upsert, columns))
                stale = Q["delete_stale_schedules"]
                await conn.execute(stale.text, *stale.arguments((), {
                    "jobs": list(jobs), "names": [d.name for d in ordered],
                }))  # fmt: skip

    async def get_schedules(
        self, jobs: Sequence[str] | None
    ) -> tuple[datetime, list[ScheduleState]]:
        rows = await self._fetch("get_schedules", jobs=None if jobs is None else list(jobs))
        states = [
            ScheduleState(**{k: v for k, v in row.items() if k != "now"})
            for row in rows
            if row["name"] is not None
        ]
        return rows[0]["now"], states

    async def fire_schedule(self, fire: ScheduleFire) -> FireResult:
        expected_next, expected_anchor = fire.expected or (None, None)
        row = await self._fetchrow(
            "fire_schedule",
            schedule=fire.schedule,
            compare=fire.expected is not None,
            expected_next=expected_next,
            expected_anchor=expected_anchor,
            next_fire_at=fire.next_fire_at,
            last_fire_at=max(fire.fires, default=None),
            job=fire.job,
            queue=fire.queue,
            args=fire.args_json,
            priority=fire.priority,
            target_worker=fire.target_worker,
            expires=fire.expires,
            fires=list(fire.fires),
            max_attempts=fire.max_attempts,
            max_restarts=fire.max_restarts,
            concurrency_key=fire.concurrency_key,
        )
        assert row is not None  # the statement always returns one row
        return FireResult(row["advanced"], tuple(row["run_ids"]))

    # ------------------------------------------------------------------ insight

    async def run_facts(self, run_id: int, worker_ttl_seconds: float) -> RunFacts | None:
        run = await self.get_run(run_id)
        if run is None:
            return None
        row = await self._fetchrow(
            "run_facts", run_id=run_id, worker_ttl=timedelta(seconds=worker_ttl_seconds)
        )
        if row is None:  # deleted in between
            return None
        facts = dict(row)
        facts["active_children"] = tuple(facts["active_children"])
        facts["reused_children"] = tuple(facts["reused_children"])
        job_full = row["job_limit"] is not None and row["job_running"] >= row["job_limit"]
        queue_full = row["queue_limit"] is not None and row["queue_running"] >= row["queue_limit"]
        key_full = row["key_limit"] is not None and row["key_running"] >= row["key_limit"]
        if run.status is RunStatus.PENDING and (job_full or queue_full or key_full):
            holders = await self._fetch(
                "slot_holders", job=run.job, queue=run.queue, job_full=job_full,
                queue_full=queue_full, key=run.concurrency_key, key_full=key_full,
            )  # fmt: skip
            found = [
                SlotHolder(
                    h["id"], h["job"], h["queue"], h["worker_id"], h["started_at"],
                    tuple(h["waiting_on"]), h["concurrency_key"],
                )
                for h in holders
            ]
            facts["job_holders"] = tuple(h for h in found if job_full and h.job == run.job)
            facts["queue_holders"] = tuple(h for h in found if queue_full and h.queue == run.queue)
            facts["key_holders"] = tuple(
                h for h in found
                if key_full and h.job == run.job and h.concurrency_key == run.concurrency_key
            )
        return RunFacts(run=run, **facts)

    async def job_summary(self, jobs: Sequence[str], window_seconds: float) -> JobSummary:
        window = timedelta(seconds=window_seconds)
        row = await self._fetchrow("job_summary", jobs=list(jobs), window=window)
        assert row is not None
        counts = dict.fromkeys(RunStatus, 0)
        counts.update({RunStatus(k): v for k, v in row["counts"].items()})
        p50, p95 = row["percentiles"] or (None, None)
        last = None
        if row["last_success_id"] is not None:
            last = LastSuccess(
                row["last_success_id"], row["last_success_at"], row["last_success_duration"]
            )
        return JobSummary(jobs[0], window, row["now"], counts, p50, p95, last)

    async def cluster_gauges(self, worker_ttl_seconds: float) -> ClusterGauges:
        rows = await self._fetch(
            "cluster_gauges", worker_ttl=timedelta(seconds=worker_ttl_seconds)
        )
        loads: dict[str, list[Load]] = {"queue": [], "job": []}
        alive = slots = 0
        for row in rows:
            if row["kind"] == "workers":
                alive, slots = row["pending"], row["running"]
                continue
            loads[row["kind"]].append(
                Load(row["name"], row["pending"], row["ready"], row["oldest_age"],
                     row["running"], row["max_concurrency"], row["enabled"])
            )
        return ClusterGauges(tuple(loads["queue"]), tuple(loads["job"]), alive, slots)

    async def get_workers(self, worker_ttl_seconds: float) -> list[WorkerState]:
        rows = await self._fetch("get_workers", max_runs=MAX_LISTED_RUNS)
        workers = []
        for row in rows:
            silent = max((row["now"] - row["heartbeat_at"]).total_seconds(), 0.0)
            workers.append(
                WorkerState(
                    row["id"], row["host"], row["pid"], tuple(row["queues"]), tuple(row["jobs"]),
                    row["concurrency"], row["running"],
                    tuple(zip(row["run_ids"], row["run_jobs"], strict=True)),
                    row["started_at"], row["heartbeat_at"], silent, silent <= worker_ttl_seconds,
                )
            )
        return workers

    async def activity(self, window_seconds: float) -> Activity:
        gauges = await self.cluster_gauges(DEFAULT_WORKER_TTL)
        rows = await self._fetch(
            "finished_per_minute", window=timedelta(seconds=window_seconds)
        )
        counts = [_finished_count(r) for r in rows if r["job"] is not None]
        return Activity(
            rows[0]["now"],
            timedelta(seconds=window_seconds),
            gauges.queues,
            gauges.jobs,
            tuple(c for c in counts if c.minute is not None),
            tuple(c for c in counts if c.minute is None),
        )

    # ------------------------------------------------------------------ event feed, dashboard

    async def read_feed(
        self, after: EventCursor, root_run_id: int | None, limit: int, grace_seconds: float
    ) -> FeedPage:
        grace = timedelta(seconds=grace_seconds)
        position = {"after_xid": after.xid, "after_id": after.id, "limit": limit, "grace": grace}
        if root_run_id is None:
            rows = await self._fetch("read_feed", **position)
        else:
            rows = await self._fetch("read_tree_feed", **position, root_run_id=root_run_id)
        await self._until_durable(rows)
        events: list[RunEvent] = []
        for row in rows:
            if not row["ready"]:
                return FeedPage(events, held_back=True)
            events.append(_event(row))
        return FeedPage(events, held_back=False)

    async def feed_position(self, grace_seconds: float) -> EventCursor:
        row = await self._fetchrow("feed_position", grace=timedelta(seconds=grace_seconds))
        if row is None:
            return EventCursor()
        await self._until_durable([row])
        return EventCursor(row["xid"], row["id"])

    async def _until_durable(self, rows: Sequence[asyncpg.Record]) -> None:
        """Wait until the WAL is flushed past what these feed rows were read at (see
        sql/feed.sql): a claim commits without waiting for the flush, and an event of a
        transaction that a server crash loses must never have been handed out."""
        if not rows or all(row["flushed"] for row in rows):
            return
        wal = max((row["wal"] for row in rows), key=_lsn)
        delay = FLUSH_POLL_MIN
        while not await self._fetchval("wal_flushed", wal=wal):
            await asyncio.sleep(delay)  # the next commit or the WAL writer flushes it
            delay = min(delay * 2, FLUSH_POLL_MAX)

    async def get_runs_by_ids(self, run_ids: Sequence[int]) -> list[RunRecord]:
        if not run_ids:
            return []
        rows = await self._fetch("get_runs_by_ids_versioned", ids=list(run_ids))
        return [_record(row) for row in rows]

    async def get_tree(self, root_run_id: int, limit: int) -> list[RunRecord]:
        rows = await self._fetch("get_tree", root_run_id=root_run_id, limit=limit)
        return [_record(row) for row in rows]

    async def list_definitions(self) -> tuple[list[QueueState], list[JobState]]:
        queues = await self._fetch("list_queues")
        jobs = await self._fetch("list_jobs")
        return (
            [QueueState(r["name"], r["max_concurrency"], r["enabled"]) for r in queues],
            [JobState(r["name"], r["queue"], r["max_concurrency"], r["enabled"]) for r in jobs],
        )

    async def get_job_definition(
        self, name: str, known_version: datetime | None
    ) -> StoredJobRow | None:
        row = await self._fetchrow(
            "get_job_definition", name=name, known_version=known_version
        )
        if row is None:
            return None
        return StoredJobRow(row["name"], row["queue"], row["updated_at"], row["args_schema"])

    async def prune(self, finished_before: datetime, max_trees: int) -> PruneResult:
        row = await self._fetchrow(
            "prune_trees", finished_before=finished_before, max_trees=max_trees
        )
        assert row is not None  # aggregates always return one row
        return PruneResult(row["trees"], row["runs"], row["events"])

    # ------------------------------------------------------------------ notifications

    def add_listener(self, listener: Listener) -> None:
        self._listener.add(listener)

    def remove_listener(self, listener: Listener) -> None:
        self._listener.remove(listener)


def _finished_count(row: asyncpg.Record) -> FinishedCount:
    p50, p95 = row["percentiles"] if row["minute"] is None and row["percentiles"] else (None, None)
    return FinishedCount(
        row["minute"], row["job"], row["queue"], row["succeeded"], row["failed"],
        row["cancelled"], p50, p95,
    )
