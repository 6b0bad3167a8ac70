"""A blocking client for code without an event loop: Django or Flask views, management
commands, scripts.

``SyncClient`` runs one ``Client`` on an event loop in a background thread of its own (anyio's
blocking portal) and forwards each call to it, so any number of threads may share one::

    from asyncjobs import SyncClient

    with SyncClient("postgresql://127.0.0.1/shop") as jobs:       # or SyncClient(app, dsn)
        run = jobs.trigger("make_thumbnail", image_id=7)          # returns at once
        size = jobs.run("resize", image_id=7, timeout=30)          # waits for the result
        outcome = run.wait(timeout=30)                             # RunResult, never raises
        jobs.cancel(run.id)

Open it once per process (e.g. at start-up) and ``close()`` it at exit: the loop, its thread
and the database pool end there. Calls after ``close()`` raise ``ConfigurationError``.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

from asyncjobs.backends.base import Backend
from asyncjobs.client import Client, JobLike, Run
from asyncjobs.errors import ConfigurationError
from asyncjobs.results import RunResult
from asyncjobs.runs import RunPage, RunRecord, RunStatus

if TYPE_CHECKING:
    from asyncjobs.app import App

R = TypeVar("R")
T = TypeVar("T")


@dataclass(frozen=True, eq=False)
class SyncRun(Generic[R]):
    """A handle on one run, for blocking code (see ``Run``)."""

    run: Run[R]
    client: SyncClient

    @property
    def id(self) -> int:
        return self.run.id

    @property
    def created(self) -> bool:
        return self.run.created

    def __repr__(self) -> str:
        return f"<SyncRun {self.id} of {self.run.job.name!r}>"

    def result(self, timeout: float | None = None) -> R:
        """Block until the run finishes; its typed result, or ``RunFailed`` & co."""
        return self.client._call(self.run.result, timeout)

    def wait(self, timeout: float | None = None) -> RunResult[R]:
        """Block until the run finishes; its ``RunResult`` (no error for a failed run)."""
        return self.client._call(self.run.wait, timeout)

    def get(self) -> RunRecord:
        return self.client.get_run(self.id)

    def cancel(self, cascade: bool = False) -> list[tuple[int, RunStatus]]:
        return self.client.cancel(self.id, cascade=cascade)


class SyncClient:
    """A thread-safe blocking client: ``SyncClient(dsn)`` (trigger by name), or
    ``SyncClient(app, dsn)`` (typed jobs too). Use it as a context manager or ``close()`` it.
    ``options`` are those of ``Client`` (``poll_interval``, backend options)."""

    def __init__(
        self, app: App | str | Backend, dsn: str | Backend | None = None, **options: Any
    ) -> None:
        self._lock = threading.Lock()
        self._portal_cm = start_blocking_portal()
        self._portal: BlockingPortal | None = self._portal_cm.__enter__()
        try:
            self.client: Client = self._portal.call(self._open, app, dsn, options)
        except BaseException:
            self._portal = None
            self._portal_cm.__exit__(None, None, None)
            raise

    @staticmethod
    async def _open(
        app: App | str | Backend, dsn: str | Backend | None, options: dict[str, Any]
    ) -> Client:
        # built on the portal's loop: the client's locks and tasks belong to that loop
        client = Client(app, dsn, **options)
        await client.__aenter__()
        return client

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the client, stop its loop and join its thread; later calls do nothing."""
        with self._lock:
            portal, self._portal = self._portal, None
        if portal is None:
            return
        try:
            portal.call(self.client.__aexit__, None, None, None)
        finally:
            self._portal_cm.__exit__(None, None, None)

    def _call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        portal = self._portal
        if portal is None:
            raise ConfigurationError("this SyncClient is closed")
        return portal.call(fn, *args)

    # ------------------------------------------------------------------ triggering

    def trigger(self, job: JobLike, /, *args: Any, **kwargs: Any) -> SyncRun[Any]:
        """``Client.trigger_async``, blocking: validate, enqueue, return the handle at once."""
        run = self._call(_bound(self.client.trigger_async, job, *args, **kwargs))
        return SyncRun(run, self)

    def trigger_json(self, job: str, arguments: Mapping[str, Any], **options: Any) -> SyncRun[Any]:
        """``Client.trigger_json``: by name, JSON arguments, trigger options as keywords."""
        run = self._call(_bound(self.client.trigger_json, job, arguments, **options))
        return SyncRun(run, self)

    def run(
        self, job: JobLike, /, *args: Any, timeout: float | None = None, **kwargs: Any
    ) -> Any:
        """Trigger and block until the result (``RunTimeout`` after ``timeout`` seconds; the
        run goes on). A job parameter named ``timeout`` must go through ``trigger``."""
        return self.trigger(job, *args, **kwargs).result(timeout)

    def run_json(self, job: str, arguments: Mapping[str, Any], **options: Any) -> Any:
        """``Client.run_json``: by name, waiting; ``result_type=``, ``wait_timeout=``..."""
        return self._call(_bound(self.client.run_json, job, arguments, **options))

    # ------------------------------------------------------------------ reading and control

    def wait(self, run_id: int, timeout: float | None = None) -> RunResult[Any]:
        """Block until a run finishes; its ``RunResult`` with the result as JSON values."""
        return self._call(self.client.wait_outcome, run_id, None, timeout)

    def get_run(self, run_id: int) -> RunRecord:
        return self._call(self.client.get_run, run_id)

    def get_runs(self, **filters: Any) -> RunPage:
        """``Client.get_runs`` (``job=``, ``status=``, ``limit=``, ``cursor=``...)."""
        return self._call(_bound(self.client.get_runs, **filters))

    def cancel(self, run_id: int, *, cascade: bool = False) -> list[tuple[int, RunStatus]]:
        return self._call(_bound(self.client.cancel, run_id, cascade=cascade))

    def retry(self, run_id: int) -> SyncRun[Any]:
        return SyncRun(self._call(self.client.retry, run_id), self)


def _bound(
    method: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any
) -> Callable[[], Awaitable[T]]:
    """``method`` with its arguments bound (the portal passes positional arguments only)."""

    async def call() -> T:
        return await method(*args, **kwargs)

    return call

