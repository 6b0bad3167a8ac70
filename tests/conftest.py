"""Shared fixtures: a real PostgreSQL database per test, cloned from a migrated template.

The server is ``ASYNCJOBS_TEST_DSN`` (default: the local server at 127.0.0.1:5432, database
postgres, used only to create and drop databases). Tests that stop or restart a server use
their own embedded one (``asyncjobs.embedded``), never this shared one.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from asyncjobs.backends.postgres import PostgresBackend

ADMIN_DSN = os.environ.get("ASYNCJOBS_TEST_DSN", "postgresql://root@127.0.0.1:5432/postgres")


def dsn_for(database: str) -> str:
    base, _, _ = ADMIN_DSN.rpartition("/")
    return f"{base}/{database}"


async def _admin(statement: str) -> None:
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def _create_template(name: str) -> None:
    await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await _admin(f'CREATE DATABASE "{name}"')
    backend = PostgresBackend(dsn_for(name), migrate=True)
    await backend.open()
    await backend.close()


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def template_db() -> Iterator[str]:
    name = f"asyncjobs_tpl_{os.getpid()}"
    asyncio.run(_create_template(name))
    yield name
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def dsn(template_db: str) -> AsyncIterator[str]:
    """A fresh, migrated database for this test; dropped afterwards."""
    name = f"asyncjobs_t_{uuid.uuid4().hex[:12]}"
    await _admin(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    try:
        yield dsn_for(name)
    finally:
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def module_dsn(template_db: str) -> Iterator[str]:
    """A fresh, migrated database shared by the tests of one module (e.g. one expensive
    multi-process run whose outcome several tests check); dropped afterwards. Synchronous,
    so that synchronous module-scoped fixtures can use it too."""
    name = f"asyncjobs_m_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"'))
    try:
        yield dsn_for(name)
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def empty_dsn() -> AsyncIterator[str]:
    """A fresh database without the asyncjobs schema."""
    name = f"asyncjobs_e_{uuid.uuid4().hex[:12]}"
    await _admin(f'CREATE DATABASE "{name}"')
    try:
        yield dsn_for(name)
    finally:
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
