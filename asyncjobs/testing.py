"""Helpers for testing your own jobs on a real PostgreSQL: throwaway databases and a worker.

PostgreSQL is the one definition of how the queue behaves, so tests run on it too. Each test
gets a database of its own, cloned from a migrated template (``CREATE DATABASE ... TEMPLATE``,
tens of milliseconds), on one server per test session:

* ``ASYNCJOBS_TEST_DSN`` (any database on it; the user must be allowed to create databases),
* or, when that is unset or not reachable, a private embedded server started once
  (``asyncjobs.embedded``; ``pip install 'asyncjobs[embedded]'``, or PostgreSQL's own binaries).

With pytest, the plugin (``asyncjobs.pytest_plugin``, registered by installing asyncjobs) gives
the fixture ``asyncjobs_dsn``; see the README's "Testing your jobs". Without pytest::

    with testing.ThrowawayDatabases.start() as databases, databases.database() as dsn:
        async with testing.run_app(app, dsn) as client:  # in your event loop
            assert await client.run_async(invoice, customer_id=1, cents=500) == "INV-1-500"
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import asyncpg
from anyio.from_thread import start_blocking_portal

from asyncjobs.app import App
from asyncjobs.backends.base import Backend
from asyncjobs.backends.postgres import PostgresBackend, translate_errors
from asyncjobs.client import Client
from asyncjobs.embedded import EmbeddedPostgres
from asyncjobs.errors import (
    ConfigurationError,
    DatabaseError,
    DatabaseUnavailable,
    EmbeddedPostgresError,
    InvalidArguments,
)

__all__ = ("ENV_DSN", "TestClock", "ThrowawayDatabases", "run_app")

logger = logging.getLogger(__name__)

#: the environment variable naming the test server; the value ``embedded`` forces a private one
ENV_DSN = "ASYNCJOBS_TEST_DSN"
EMBEDDED = "embedded"
_PREFIX = "asyncjobs_test_"
# Long enough for a server under load, short enough that a firewalled host fails fast.
_PROBE_TIMEOUT = 5.0
_ADMIN_TIMEOUT = 120.0

T = TypeVar("T")


def _with_database(server_dsn: str, name: str) -> str:
    """``server_dsn`` pointing at database ``name`` (user, host, port and options kept)."""
    parts = urlsplit(server_dsn)
    return urlunsplit(parts._replace(path="/" + quote(name, safe="")))


def _database_of(dsn: str) -> str:
    return unquote(urlsplit(dsn).path.lstrip("/"))


def _redacted(dsn: str) -> str:
    """The DSN without its password, for messages."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _check_url(dsn: str) -> str:
    if urlsplit(dsn).scheme not in ("postgresql", "postgres"):
        raise ConfigurationError(
            f"{ENV_DSN} must be a postgresql:// URL or {EMBEDDED!r}, not {_redacted(dsn)!r}"
        )
    return dsn


class _LoopThread:
    """An event loop in a daemon thread (anyio's blocking portal): the admin connection lives
    there, so the public methods are plain functions that work from sync fixtures and from
    inside a running loop."""

    def __init__(self) -> None:
        self._portal_cm = start_blocking_portal()
        self._portal = self._portal_cm.__enter__()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        future: Future[T] = self._portal.start_task_soon(_awaited, coro)
        return future.result(_ADMIN_TIMEOUT)

    def close(self) -> None:
        self._portal_cm.__exit__(None, None, None)


async def _awaited(coro: Coroutine[Any, Any, T]) -> T:
    return await coro


class _Admin:
    """One connection to the server's maintenance database; statements run one at a time."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()

    @classmethod
    async def connect(cls, dsn: str) -> _Admin:
        with translate_errors():
            return cls(await asyncpg.connect(dsn, timeout=_PROBE_TIMEOUT))

    async def execute(self, *statements: str) -> None:
        async with self._lock:
            with translate_errors():
                for statement in statements:
                    await self._conn.execute(statement)

    async def close(self) -> None:
        with contextlib.suppress(DatabaseError), translate_errors():
            await self._conn.close()


class ThrowawayDatabases:
    """A PostgreSQL server that hands out fresh databases cloned from a migrated template.

    ``start()`` picks the server (see the module docstring), creates the template and migrates
    it once; ``create()`` clones it, ``drop()`` drops a clone, ``close()`` removes what is left,
    the template and, if it started one, the embedded server. Thread-safe.

    Both run while no test does, never in the background: CREATE and DROP DATABASE are
    transactions, and a transaction of any database holds back the event feed of every other
    (its cursor waits for older transactions), so cloning the next database during a test
    would slow that test's live streams.
    """

    def __init__(
        self,
        loop: _LoopThread,
        admin: _Admin,
        server_dsn: str,
        server: EmbeddedPostgres | None,
        description: str,
    ) -> None:
        self._loop = loop
        self._admin = admin
        #: the maintenance database of the server in use
        self.server_dsn = server_dsn
        #: the embedded server, when one was started
        self.embedded = server
        #: which server is in use, and why
        self.description = description
        #: the start of the name of every database this object creates (leftovers of a killed
        #: test session on a shared server can be found, and dropped, by it)
        self.prefix = f"{_PREFIX}{uuid.uuid4().hex[:8]}_"
        self._template = f"{self.prefix}template"
        self._live: set[str] = set()
        self._guard = threading.Lock()
        self._closed = False

    # -- starting

    @classmethod
    def start(cls, dsn: str | None = None) -> ThrowawayDatabases:
        """Use the server at ``dsn`` (default: ``$ASYNCJOBS_TEST_DSN``) when it is reachable,
        else start an embedded one; ``dsn="embedded"`` always starts one."""
        candidate = dsn if dsn is not None else os.environ.get(ENV_DSN) or None
        loop = _LoopThread()
        try:
            admin, server_dsn, server, description = cls._connect_server(loop, candidate)
        except BaseException:
            loop.close()
            raise
        databases = cls(loop, admin, server_dsn, server, description)
        try:
            databases._run(databases._create_template())
        except BaseException:
            databases.close()
            raise
        logger.info("test databases on %s", description)
        return databases

    @staticmethod
    def _connect_server(
        loop: _LoopThread, candidate: str | None
    ) -> tuple[_Admin, str, EmbeddedPostgres | None, str]:
        reason = f"{ENV_DSN} is not set"
        if candidate == EMBEDDED:
            reason = f"{ENV_DSN}={EMBEDDED}"
        elif candidate is not None:
            try:
                admin = loop.run(_Admin.connect(_check_url(candidate)))
            except DatabaseUnavailable as exc:
                reason = f"{_redacted(candidate)} is not reachable ({exc})"
            else:
                return admin, candidate, None, f"PostgreSQL at {_redacted(candidate)}"
        server = _start_embedded(reason)
        try:
            admin = loop.run(_Admin.connect(server.dsn))
        except BaseException:
            server.stop()
            raise
        return admin, server.dsn, server, f"an embedded PostgreSQL at {server.dsn} ({reason})"

    async def _create_template(self) -> None:
        await self._admin.execute(f'CREATE DATABASE "{self._template}"')
        backend = PostgresBackend(
            _with_database(self.server_dsn, self._template), max_pool_size=1, migrate=True
        )
        await backend.open()
        await backend.close()
        # Nobody may connect to the template: a stray session would make every clone fail.
        await self._admin.execute(f'ALTER DATABASE "{self._template}" ALLOW_CONNECTIONS false')

    # -- databases

    def create(self, *, migrated: bool = True) -> str:
        """A new database (the asyncjobs schema installed unless ``migrated=False``); its DSN."""
        return self._run(self._new_database(self._template if migrated else None))

    async def _new_database(self, template: str | None) -> str:
        name = f"{self.prefix}{uuid.uuid4().hex[:12]}"
        with self._guard:
            self._live.add(name)  # before CREATE: close() drops it even if CREATE half failed
        clone = f' TEMPLATE "{template}"' if template is not None else ""
        await self._admin.execute(f'CREATE DATABASE "{name}"{clone}')
        return _with_database(self.server_dsn, name)

    def drop(self, dsn: str) -> None:
        """Drop a database from ``create()``, ending its sessions."""
        name = _database_of(dsn)
        with self._guard:
            if name not in self._live:
                raise ConfigurationError(f"{name!r} was not created by these test databases")
            self._live.discard(name)
        self._run(self._drop(name))

    @contextlib.contextmanager
    def database(self, *, migrated: bool = True) -> Iterator[str]:
        """``with databases.database() as dsn``: a fresh database for the block."""
        dsn = self.create(migrated=migrated)
        try:
            yield dsn
        finally:
            self.drop(dsn)

    async def _drop(self, name: str) -> None:
        await self._admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    # -- closing

    def close(self) -> None:
        """Drop what is left and the template, disconnect, stop the embedded server."""
        with self._guard:
            if self._closed:
                return
            self._closed = True
            left, self._live = sorted(self._live), set()
        try:
            self._run(self._drop_all(left))
        finally:
            self._run(self._admin.close())
            self._loop.close()
            if self.embedded is not None:
                self.embedded.stop()

    async def _drop_all(self, names: list[str]) -> None:
        for name in [*names, self._template]:
            await self._drop(name)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._loop.run(coro)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ThrowawayDatabases on {self.description}>"


class TestClock:
    """A clock for tests that moves only when told. Give it to the backend
    (``app.worker(dsn, clock=clock)``, ``app.client(dsn, clock=clock)``,
    ``run_app(app, dsn, clock=clock)``) and every time-dependent statement runs at its time
    instead of the database's: ``not_before``/``not_after``, retry backoff, leases and the
    sweep, schedules, summaries and retention. Moving it wakes the workers, schedulers and
    result waiters of those backends, so a run delayed by an hour is claimed as soon as the
    clock is advanced by an hour::

        clock = TestClock()
        async with run_app(app, dsn, clock=clock) as client:
            run = await client.trigger_async(remind.options(not_before=timedelta(hours=1)))
            clock.advance(timedelta(hours=1))
            assert await run.result() == ...

    It starts at the real time (or ``start``) and never goes back: the database compares
    its times with ones it wrote before. Moving it past the lease of a running job is a
    lost heartbeat, as a real hour would be: the sweep may rescue the run.
    """

    __test__ = False  # not a test class, whatever pytest's name pattern says

    def __init__(self, start: datetime | None = None) -> None:
        self._now = datetime.now(UTC) if start is None else _aware(start, "start")
        self._callbacks: list[Callable[[], None]] = []

    def now(self) -> datetime:
        return self._now

    def advance(self, by: timedelta) -> datetime:
        """Move the clock forward by ``by``; returns the new time."""
        if not isinstance(by, timedelta) or by < timedelta(0):
            raise InvalidArguments(f"advance takes a timedelta of zero or more, not {by!r}")
        return self.set(self._now + by)

    def set(self, when: datetime) -> datetime:
        """Move the clock to ``when`` (aware, not earlier than now); returns it."""
        when = _aware(when, "set")
        if when < self._now:
            raise InvalidArguments(f"the test clock never goes back: {when} < {self._now}")
        self._now = when
        for callback in list(self._callbacks):
            callback()
        return when

    def on_move(self, callback: Callable[[], None]) -> Callable[[], None]:
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback) if callback in self._callbacks else None

    def __repr__(self) -> str:
        return f"<TestClock {self._now.isoformat()}>"


def _aware(when: object, name: str) -> datetime:
    if not isinstance(when, datetime) or when.tzinfo is None:
        raise InvalidArguments(f"{name} takes an aware datetime, not {when!r}")
    return when


def _start_embedded(reason: str) -> EmbeddedPostgres:
    try:
        return EmbeddedPostgres().start()
    except EmbeddedPostgresError as exc:
        raise EmbeddedPostgresError(
            f"no PostgreSQL server for the tests ({reason}), and an embedded one could not "
            f"start: {exc}. Set {ENV_DSN} to a server where you may create databases, or "
            "`pip install 'asyncjobs[embedded]'`"
        ) from exc


@contextlib.asynccontextmanager
async def run_app(
    app: App,
    dsn: str | Backend,
    *,
    concurrency: int = 10,
    poll_interval: float = 0.05,
    sweep_interval: float = 0.1,
    clock: TestClock | None = None,
    **worker_options: Any,
) -> AsyncIterator[Client]:
    """A client of ``app`` with a worker running beside it, both on ``dsn`` (a database with
    the asyncjobs schema, e.g. the ``asyncjobs_dsn`` fixture's, or an open backend).

    The short poll and sweep intervals make delayed and expired runs show up quickly.
    ``worker_options`` go to ``Worker`` (``queues=``, ``lease=``, ...). On exit the worker
    stops as in production: running jobs get ``drain_timeout`` to finish. ``clock`` (a
    ``TestClock``) is the time both run at; with an open backend, give it the clock instead.
    """
    if clock is not None and not isinstance(dsn, str):
        raise ConfigurationError("run_app(clock=...) needs a DSN; give an open backend its clock")
    backend = app.backend(dsn) if clock is None else app.backend(dsn, clock=clock)
    worker = app.worker(
        backend,
        concurrency=concurrency,
        poll_interval=poll_interval,
        sweep_interval=sweep_interval,
        **worker_options,
    )
    async with worker, app.client(backend) as client:
        yield client
