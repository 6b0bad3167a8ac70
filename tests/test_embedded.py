"""The embedded PostgreSQL launcher: start, query, restart, stop, and leave nothing behind."""

from __future__ import annotations

import asyncio
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from asyncjobs import embedded
from asyncjobs.embedded import EmbeddedPostgres, EmbeddedPostgresError


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _process_alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


async def _fetchval(dsn: str, query: str) -> object:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()


async def _execute(dsn: str, *queries: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for query in queries:
            await conn.execute(query)
    finally:
        await conn.close()


def _assert_gone(port: int, pid: int, base_dir: Path) -> None:
    assert not _port_open(port)
    assert not _process_alive(pid)
    assert not base_dir.exists()


def test_start_query_restart_stop() -> None:
    pg = EmbeddedPostgres()
    with pg:
        assert pg.running and pg.pid is not None
        assert pg.dsn == f"postgresql://postgres@127.0.0.1:{pg.port}/postgres"
        assert pg.database("other db") == f"postgresql://postgres@127.0.0.1:{pg.port}/other%20db"
        assert asyncio.run(_fetchval(pg.dsn, "select 1")) == 1
        assert asyncio.run(_fetchval(pg.dsn, "show fsync")) == "off"
        asyncio.run(_execute(pg.dsn, "create table t (x int)", "insert into t values (42)"))

        port, first_pid, base_dir = pg.port, pg.pid, pg.data_dir.parent
        pg.restart()
        assert (pg.port, pg.data_dir.parent) == (port, base_dir)
        assert pg.pid != first_pid and not _process_alive(first_pid)
        assert asyncio.run(_fetchval(pg.dsn, "select x from t")) == 42

        second_pid = pg.pid
        assert second_pid is not None
    _assert_gone(port, second_pid, base_dir)
    assert not pg.running and pg.pid is None
    pg.stop()  # idempotent


def test_two_servers_at_once() -> None:
    one, two = EmbeddedPostgres(), EmbeddedPostgres()

    async def scenario() -> None:
        # Started concurrently, which also races the one-time copy of the binaries.
        await asyncio.gather(one.astart(), two.astart())
        try:
            assert one.port != two.port
            assert one.data_dir != two.data_dir
            await _execute(one.dsn, "create table only_in_one (x int)")
            query = "select count(*) from pg_tables where tablename = 'only_in_one'"
            assert await _fetchval(one.dsn, query) == 1
            assert await _fetchval(two.dsn, query) == 0
        finally:
            await asyncio.gather(one.astop(), two.astop())

    asyncio.run(scenario())
    assert not one.running and not two.running


def test_async_context_manager_and_immediate_restart() -> None:
    async def scenario() -> tuple[int, int, Path]:
        # With the default synchronous_commit=off, a commit from just before an immediate
        # shutdown is still in WAL buffers and is lost: this test saw exactly that.
        async with EmbeddedPostgres(settings={"synchronous_commit": "on"}) as pg:
            await _execute(pg.dsn, "create table t (x int)", "insert into t values (7)")
            in_flight = await asyncpg.connect(pg.dsn)
            try:
                await pg.arestart(immediate=True)  # like a crash: the open session is cut off
                with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
                    await in_flight.fetchval("select 1")
            finally:
                in_flight.terminate()
            # Committed data survives crash recovery, given synchronous_commit=on (see below).
            assert await _fetchval(pg.dsn, "select x from t") == 7
            assert pg.pid is not None
            return pg.port, pg.pid, pg.data_dir.parent

    port, pid, base_dir = asyncio.run(scenario())
    _assert_gone(port, pid, base_dir)


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_port_clash_is_retried(busy_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    ports = iter([busy_port])
    real_free_port = embedded._free_port
    monkeypatch.setattr(embedded, "_free_port", lambda: next(ports, None) or real_free_port())
    with EmbeddedPostgres() as pg:
        assert pg.port != busy_port
        assert asyncio.run(_fetchval(pg.dsn, "select 1")) == 1


def test_fixed_port_clash_raises_and_cleans_up(
    busy_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    created: list[Path] = []
    real_mkdtemp = tempfile.mkdtemp

    def recording_mkdtemp(*args: Any, **kwargs: Any) -> str:
        path: str = real_mkdtemp(*args, **kwargs)
        created.append(Path(path))
        return path

    monkeypatch.setattr(tempfile, "mkdtemp", recording_mkdtemp)
    pg = EmbeddedPostgres(port=busy_port)
    with pytest.raises(EmbeddedPostgresError, match="port in use"):
        pg.start()
    assert not pg.running
    assert created and not any(path.exists() for path in created)


def test_missing_binaries_give_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EmbeddedPostgresError, match="initdb is missing"):
        EmbeddedPostgres(bin_dir=tmp_path).start()
