"""Shared fixtures: a real PostgreSQL database per test, cloned from a migrated template.

The same machinery users get (``asyncjobs.pytest_plugin``): the server is ``ASYNCJOBS_TEST_DSN``,
else ``asyncjobs_test_dsn`` in pyproject.toml (the local server at 127.0.0.1:5432), and when
that is not reachable an embedded server started once for the session — so the suite runs
where no PostgreSQL server does (``ASYNCJOBS_TEST_DSN=embedded`` forces that). Tests that stop
or restart a server use their own embedded one (``asyncjobs.embedded``), never this one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from asyncjobs.backends.postgres import PostgresBackend
from asyncjobs.embedded import EmbeddedPostgres
from asyncjobs.testing import ThrowawayDatabases

# Installing asyncjobs registers the plugin under this name (the pytest11 entry point), and
# then this line does nothing; it is here for a checkout that was not (re)installed.
pytest_plugins = ("asyncjobs.pytest_plugin",)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    # asyncpg needs asyncio; anyio would also run every test on trio when trio is installed
    return "asyncio"


@pytest.fixture
def dsn(asyncjobs_dsn: str) -> str:
    """A fresh, migrated database for this test; dropped afterwards."""
    return asyncjobs_dsn


@pytest.fixture(scope="module")
def module_dsn(asyncjobs_databases: ThrowawayDatabases) -> Iterator[str]:
    """A fresh, migrated database shared by the tests of one module (e.g. one expensive
    multi-process run whose outcome several tests check); dropped afterwards."""
    with asyncjobs_databases.database() as name:
        yield name


@pytest.fixture
def empty_dsn(asyncjobs_databases: ThrowawayDatabases) -> Iterator[str]:
    """A fresh database without the asyncjobs schema."""
    with asyncjobs_databases.database(migrated=False) as name:
        yield name


@pytest.fixture
async def backend(dsn: str) -> AsyncIterator[PostgresBackend]:
    """An open backend on this test's database, for states the public API cannot reach."""
    opened = PostgresBackend(dsn)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedPostgres]:
    """A private server for a module whose tests stop, restart, pause or cut it off."""
    with EmbeddedPostgres() as pg:
        yield pg


# PgBouncer (transaction mode) fixtures: ``pgbouncer`` and the direct/pooled ``route``
from tests.pgbouncer import pgbouncer, route  # noqa: E402, F401
