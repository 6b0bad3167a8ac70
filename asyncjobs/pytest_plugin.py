"""The asyncjobs pytest plugin: a fresh, migrated PostgreSQL database for each test.

Installing asyncjobs registers it (entry point ``pytest11``); nothing to import. Fixtures:

``asyncjobs_dsn``
    the DSN of a new database with the asyncjobs schema, dropped after the test.
``asyncjobs_databases``
    the session's :class:`asyncjobs.testing.ThrowawayDatabases`, for other scopes or an empty
    database (``create(migrated=False)``).

The server is ``$ASYNCJOBS_TEST_DSN``, else the ``asyncjobs_test_dsn`` ini option, when it is
reachable; otherwise an embedded server started once for the session (the summary line
``asyncjobs: tests ran on ...`` says which). The fixtures are synchronous, so they work with
any way of running ``async def`` tests (anyio's plugin, which asyncjobs installs, or another).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from asyncjobs.testing import ENV_DSN, ThrowawayDatabases

#: which server the session's databases were on, for the summary line
_SERVER = pytest.StashKey[str]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "asyncjobs_test_dsn",
        f"PostgreSQL server for the asyncjobs fixtures when {ENV_DSN} is unset "
        "(an embedded server is started when neither is set or reachable)",
        default="",
    )


@pytest.fixture(scope="session")
def asyncjobs_databases(pytestconfig: pytest.Config) -> Iterator[ThrowawayDatabases]:
    """The test session's server and migrated template; started on first use."""
    configured = os.environ.get(ENV_DSN) or str(pytestconfig.getini("asyncjobs_test_dsn"))
    with ThrowawayDatabases.start(configured or None) as databases:
        pytestconfig.stash[_SERVER] = databases.description
        yield databases


@pytest.fixture
def asyncjobs_dsn(asyncjobs_databases: ThrowawayDatabases) -> Iterator[str]:
    """A fresh database with the asyncjobs schema, cloned from the template; dropped after."""
    with asyncjobs_databases.database() as dsn:
        yield dsn


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    server = terminalreporter.config.stash.get(_SERVER, None)
    if server is not None:
        terminalreporter.write_line(f"asyncjobs: tests ran on {server}")
