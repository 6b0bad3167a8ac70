"""Helpers of the fault tests: databases on a private server, worker processes, deadlines.

Fault tests stop, restart or kill things, so they run on an ``EmbeddedPostgres`` started once
per test module (``initdb`` costs more than a second), with a fresh database per test.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import anyio
import anyio.to_thread
import asyncpg
import orjson

from asyncjobs.backends.postgres import PostgresBackend
from asyncjobs.embedded import EmbeddedPostgres

ROOT = Path(__file__).resolve().parent.parent
#: generous: other engineers' tests share the two cores
WAIT = 20.0


async def new_database(pg: EmbeddedPostgres) -> str:
    """A fresh database with the asyncjobs schema on the private server; returns its DSN."""
    name = f"fault_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(pg.dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    dsn = pg.database(name)
    backend = PostgresBackend(dsn, migrate=True)
    await backend.open()
    await backend.close()
    return dsn


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = WAIT, what: str = "condition"
) -> None:
    """Wait until ``check()`` holds, polling, with a deadline."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        await anyio.sleep(0.02)


async def db_now(conn: asyncpg.Connection) -> datetime:
    """The database clock (the one leases and the jobs' records use)."""
    now: datetime = await conn.fetchval("SELECT clock_timestamp()")
    return now


@dataclass
class WorkerProcess:
    """One ``python -m asyncjobs worker`` process; its log (stdout and stderr) goes to a file."""

    worker_id: str
    proc: subprocess.Popen[bytes]
    log: Path
    killed_at: datetime | None = field(default=None)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def kill9(self, conn: asyncpg.Connection) -> datetime:
        """SIGKILL, reap, then read the database clock: later than the process's last act."""
        self.proc.send_signal(signal.SIGKILL)
        await self.exited(5.0)
        self.killed_at = await db_now(conn)
        return self.killed_at

    async def exited(self, timeout: float) -> int:
        """The exit code, waiting up to ``timeout`` s; AssertionError if still running."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"worker {self.worker_id} still running after {timeout} s")
            await anyio.sleep(0.01)
        return self.proc.returncode

    def stop_now(self) -> None:
        """Teardown: make sure the process is gone."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def start_worker(
    app: str,
    dsn: str,
    worker_id: str,
    log_dir: Path,
    *options: str,
    env: dict[str, str] | None = None,
) -> WorkerProcess:
    """Start ``python -m asyncjobs worker APP --dsn DSN --worker-id ID OPTIONS...``."""
    command = [
        sys.executable, "-m", "asyncjobs", "worker", app,
        "--dsn", dsn, "--worker-id", worker_id, *options,
    ]  # fmt: skip
    log = log_dir / f"{worker_id}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return WorkerProcess(worker_id, proc, log)


async def registered(conn: asyncpg.Connection, worker_id: str) -> bool:
    """Whether the worker has registered itself (it is up and about to claim)."""
    found = await conn.fetchval("SELECT count(*) FROM asyncjobs.workers WHERE id = $1", worker_id)
    return bool(found)


class FlakyProxy:
    """A TCP proxy in front of a server that can fail on demand: ``cut()`` drops every
    connection and then accepts and drops each new one (counted in ``attempts``) until
    ``restore()``: a database outage of a chosen length, as clients see it."""

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self.down = False
        self.attempts = 0

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def cut(self) -> None:
        self.down = True
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()

    def restore(self) -> None:
        self.down = False

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down:
            self.attempts += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target_port)
        except OSError:
            writer.transport.abort()
            return
        self._open |= {writer, up_writer}
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for side in (writer, up_writer):
                self._open.discard(side)
                side.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.transport.abort()


class ForkServer:
    """Starts worker processes through ``tests.forkserver`` (milliseconds each, see there)."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.forkserver"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    async def start_worker(
        self,
        app: str,
        dsn: str,
        worker_id: str,
        log_dir: Path,
        *options: str,
        env: dict[str, str] | None = None,
    ) -> ForkedWorker:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        argv = ["worker", app, "--dsn", dsn, "--worker-id", worker_id, *options]
        log = log_dir / f"{worker_id}.log"
        request = {"argv": argv, "log": str(log), "env": env or {}}
        self._proc.stdin.write(orjson.dumps(request) + b"\n")
        self._proc.stdin.flush()
        line = await anyio.to_thread.run_sync(self._proc.stdout.readline)
        assert line, "the fork server is gone"
        return ForkedWorker(worker_id, int(line), log)

    def close(self) -> None:
        """Ends the server, which kills whatever it started that still runs."""
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        self._proc.wait(10)
        if self._proc.stdout is not None:
            self._proc.stdout.close()


@dataclass
class ForkedWorker:
    """A worker forked by ``ForkServer``; its exit status appears in ``<log>.exit``."""

    worker_id: str
    pid: int
    log: Path
    killed_at: datetime | None = field(default=None)

    @property
    def _exit_file(self) -> Path:
        return Path(f"{self.log}.exit")

    @property
    def alive(self) -> bool:
        return not self._exit_file.exists()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    async def kill9(self, conn: asyncpg.Connection) -> datetime:
        """SIGKILL, wait until reaped, then read the database clock (later than anything the
        process did)."""
        os.kill(self.pid, signal.SIGKILL)
        await self.exited(5.0)
        self.killed_at = await db_now(conn)
        return self.killed_at

    def terminate(self) -> None:
        os.kill(self.pid, signal.SIGTERM)

    async def exited(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.alive:
            if time.monotonic() > deadline:
                raise AssertionError(f"worker {self.worker_id} still running after {timeout} s")
            await anyio.sleep(0.005)
        return int(self._exit_file.read_text())
