"""A real PgBouncer in transaction pooling mode, started by the tests themselves.

``PgBouncer(target_dsn)`` writes an ini file and a user list into a temporary folder and runs
Debian's ``pgbouncer`` on a free port of 127.0.0.1 in front of the server ``target_dsn`` points
at, for every database name (``* =``). PgBouncer refuses to run as root, so under root it
switches to ``nobody`` (``-u``), like ``asyncjobs.embedded`` does for PostgreSQL.

Tests use it through ``Route``: ``direct`` talks to the server, ``pgbouncer`` sends workers,
clients, the scheduler and the dashboard through the pooler (``pgbouncer=True``: no named
prepared statements, which PgBouncer 1.18, Debian bookworm's, cannot follow across server
connections in transaction mode) and only the one LISTEN connection per process straight to
the server (``listen_dsn``). Without ``pgbouncer`` installed, the pooled variants skip.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from asyncjobs.testing import ThrowawayDatabases

#: how many server connections PgBouncer opens per (database, user): far fewer than the
#: clients' pools add up to, so the tests really share server connections between clients
POOL_SIZE = 8
_START_TIMEOUT = 15.0
_RUN_AS = "nobody"


def pgbouncer_binary() -> str | None:
    return shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.path.exists(p)), None
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _ini(target_host: str, target_port: int, port: int, folder: Path, pool_size: int) -> str:
    return f"""\
[databases]
* = host={target_host} port={target_port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {folder}/userlist.txt
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 2000
logfile = {folder}/pgbouncer.log
pidfile = {folder}/pgbouncer.pid
; asyncpg sends nothing PgBouncer does not track; psql and others may
ignore_startup_parameters = extra_float_digits,options
; a line per login would be thousands in the kill -9 and many-worker runs
log_connections = 0
log_disconnections = 0
"""


class PgBouncer:
    """One pgbouncer process in front of the server of ``target_dsn``; a context manager."""

    def __init__(self, target_dsn: str, pool_size: int = POOL_SIZE) -> None:
        binary = pgbouncer_binary()
        if binary is None:
            raise RuntimeError("pgbouncer is not installed (apt-get install pgbouncer)")
        self._binary = binary
        self._target = urlsplit(target_dsn)
        self.pool_size = pool_size
        self.port = 0
        self.folder: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def via(self, dsn: str) -> str:
        """``dsn`` (a database on the target server) as seen through this pooler."""
        parts = urlsplit(dsn)
        user = f"{parts.username}@" if parts.username else ""
        return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{self.port}"))

    def start(self) -> PgBouncer:
        self.folder = Path(tempfile.mkdtemp(prefix="asyncjobs-pgbouncer-"))
        self.port = _free_port()
        # the user clients log in as: the DSN's, else (like libpq and asyncpg) the OS user's
        user = self._target.username or getpass.getuser()
        (self.folder / "userlist.txt").write_text(f'"{user}" ""\n')
        ini = self.folder / "pgbouncer.ini"
        ini.write_text(
            _ini(self._target.hostname or "127.0.0.1", self._target.port or 5432, self.port,
                 self.folder, self.pool_size)
        )  # fmt: skip
        command = [self._binary, str(ini)]
        if os.geteuid() == 0:  # "PgBouncer should not run as root"
            account = pwd.getpwnam(_RUN_AS)
            os.chown(self.folder, account.pw_uid, account.pw_gid)
            for path in self.folder.iterdir():
                os.chown(path, account.pw_uid, account.pw_gid)
            command[1:1] = ["-u", _RUN_AS]
        # a file, never a pipe: nobody reads a pipe while the tests run, and pgbouncer (which
        # logs to stderr too) would block on a full one, with every connection through it
        with (self.folder / "stderr.log").open("wb") as out:
            self._proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited at start:\n{self.log()}")
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"pgbouncer did not listen within {_START_TIMEOUT} s:\n{self.log()}")

    def log(self) -> str:
        """The end of what pgbouncer wrote (for error messages)."""
        if self.folder is None:
            return ""
        paths = [self.folder / "stderr.log", self.folder / "pgbouncer.log"]
        return "".join(p.read_text(errors="replace")[-4000:] for p in paths if p.exists())

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # SIGINT: stop at once (SIGTERM waits for clients)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def __enter__(self) -> PgBouncer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def pgbouncer_or_skip(target_dsn: str) -> Iterator[PgBouncer]:
    """A started PgBouncer in front of ``target_dsn``'s server, or a skip saying why not."""
    if pgbouncer_binary() is None:
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer; .ci/run does)")
    with PgBouncer(target_dsn) as bouncer:
        yield bouncer


@dataclass(frozen=True)
class Route:
    """How a test's processes reach the database: ``direct``, or through ``bouncer``."""

    name: str
    bouncer: PgBouncer | None = None

    def dsn(self, direct: str) -> str:
        """The DSN workers and clients connect to."""
        return self.bouncer.via(direct) if self.bouncer else direct

    def options(self, direct: str) -> dict[str, Any]:
        """Backend options for ``app.client(...)`` / ``app.worker(...)``."""
        return {"pgbouncer": True, "listen_dsn": direct} if self.bouncer else {}

    def cli_args(self, direct: str) -> list[str]:
        """``--dsn ...`` (and the pooler flags) for an ``asyncjobs`` command."""
        extra = ["--pgbouncer", "--listen-dsn", direct] if self.bouncer else []
        return ["--dsn", self.dsn(direct), *extra]


ROUTES = ["direct", "pgbouncer"]


def route_for(request: pytest.FixtureRequest) -> Route:
    """The route ``request.param`` names; the pooled one uses the session's PgBouncer."""
    if request.param == "direct":
        return Route("direct")
    bouncer: PgBouncer = request.getfixturevalue("pgbouncer")
    return Route("pgbouncer", bouncer)


@pytest.fixture(scope="session")
def pgbouncer(asyncjobs_databases: ThrowawayDatabases) -> Iterator[PgBouncer]:
    """PgBouncer (transaction mode) in front of the tests' server (the shared one, or the
    embedded one ``asyncjobs.testing`` started), for the session."""
    with pgbouncer_or_skip(asyncjobs_databases.server_dsn) as bouncer:
        yield bouncer


@pytest.fixture(scope="module", params=ROUTES)
def route(request: pytest.FixtureRequest) -> Route:
    """Runs a module's tests once directly and once through PgBouncer."""
    return route_for(request)
