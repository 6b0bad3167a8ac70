"""What a running job can see: its run, its client, and a way to report progress and logs.

The current ``Context`` lives in a ``ContextVar`` while the job's task runs, so a run triggered
from inside a job records ``parent_run_id`` / ``root_run_id`` without the job passing them.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from asyncjobs.rules import MAX_MESSAGE_CHARS, storable, storable_json
from asyncjobs.runs import RunRecord

if TYPE_CHECKING:
    from asyncjobs.client import Client


@dataclass(eq=False)
class Context:
    """Handed to a job whose first parameter is annotated ``Context``.

    ``run`` is the run as claimed. ``attempt`` counts from 1 every execution of the run that
    was started: retries after the job's errors, restarts after its worker vanished and
    hand-backs on shutdown alike, so ``attempt > 1`` means "this may have run before, maybe
    to its end" (at-least-once: make the effect idempotent). ``run.retries`` and
    ``run.restarts`` count the two causes apart. Triggering other jobs from inside the job
    records this run as their parent.

    ``cancel_requested`` turns true when ``Client.cancel`` asked to cancel this run (it
    reaches the worker by NOTIFY, or by the next heartbeat when the notification was lost).
    The worker then also cancels the job's task: ``asyncio.CancelledError`` is raised at its
    next ``await``. A job that must clean up catches it, checks ``ctx.cancel_requested`` to
    tell a cancellation (do not redo the work) from a shutdown or a lost lease (the run will
    be attempted again), and re-raises; the run is then recorded as cancelled (a job that
    swallows the error and returns is recorded as succeeded). Work in a thread
    (``asyncio.to_thread``), which task cancellation cannot stop, polls the flag instead.
    """

    run: RunRecord
    client: Client
    _emit: Callable[[int, int, str, dict[str, Any]], Awaitable[None]] = field(repr=False)
    _yield_slot: Callable[[], contextlib.AbstractAsyncContextManager[None]] = field(repr=False)
    #: set by the worker when cancellation of this run was requested (see the class docs)
    cancel_requested: bool = False
    #: unnamed child triggers so far in this attempt: the next one is step ``#(n+1)``
    _positions: int = field(default=0, repr=False)

    @property
    def run_id(self) -> int:
        return self.run.id

    @property
    def root_run_id(self) -> int:
        return self.run.root_run_id or self.run.id

    @property
    def attempt(self) -> int:
        return self.run.attempt

    @property
    def job(self) -> str:
        return self.run.job

    def _take_positions(self, count: int) -> int:
        """Reserve ``count`` step positions (see ``asyncjobs.steps``); the first one."""
        first = self._positions + 1
        self._positions += count
        return first

    async def progress(self, fraction: float, message: str | None = None) -> None:
        """Report progress (0.0 to 1.0) and an optional status message; shown live."""
        if not math.isfinite(fraction) or not 0.0 <= fraction <= 1.0:
            raise ValueError(f"progress must be between 0 and 1, got {fraction!r}")
        data: dict[str, Any] = {"progress": fraction}
        if message is not None:
            data["message"] = storable(message, MAX_MESSAGE_CHARS)
        await self._emit(self.run.id, self.run.attempt, "progress", data)

    async def log(self, message: str, level: str = "info", **fields: Any) -> None:
        """Store a log line on the run (shown in the trace viewer)."""
        level = level.lower()
        if level not in _LEVELS:
            raise ValueError(f"unknown log level {level!r}; use one of {sorted(_LEVELS)}")
        data: dict[str, Any] = {"level": level, "message": storable(message, MAX_MESSAGE_CHARS)}
        if fields:
            data["fields"] = _json_fields(fields)
        await self._emit(self.run.id, self.run.attempt, "log", data)

    @contextlib.asynccontextmanager
    async def waiting(self) -> AsyncIterator[None]:
        """Give the worker-local slot back while this job waits on something (e.g. a child).

        ``run_async`` uses it, so a parent waiting for a child cannot starve a worker with
        ``concurrency=1``. Database limits still count this run as running.
        """
        async with self._yield_slot():
            yield


_LEVELS = frozenset({"debug", "info", "warning", "error", "critical"})

current_context: contextvars.ContextVar[Context | None] = contextvars.ContextVar(
    "asyncjobs_current_context", default=None
)


def get_context() -> Context | None:
    """The ``Context`` of the job running in this task, or ``None`` outside a job."""
    return current_context.get()


#: the innermost open ``async with`` client of this task. It lives here, beside the job's
#: context, so that ``Job.trigger_async`` finds a client without importing ``asyncjobs.client``
#: (which imports ``jobs``): the import graph stays a DAG (see ``asyncjobs/__init__.py``).
open_client: contextvars.ContextVar[Client | None] = contextvars.ContextVar(
    "asyncjobs_current_client", default=None
)


def current_client() -> Client:
    """Inside a job: the worker's client. Elsewhere: the innermost open ``async with`` client."""
    context = current_context.get()
    if context is not None:
        return context.client
    client = open_client.get()
    if client is None:
        raise RuntimeError(
            "no asyncjobs client is open here: use `async with app.client(dsn) as client` "
            "and call client.trigger_async(job, ...)"
        )
    return client


def _json_fields(fields: dict[str, Any]) -> Any:
    """Log fields as plain, storable JSON, checked now: a value that is not JSON fails this
    call only, instead of the whole batch of events (of other runs too) it would be written
    with. Strings are made storable (``rules.storable_json``), not refused."""
    try:
        text = orjson.dumps(fields)
    except TypeError:
        # orjson refuses a lone surrogate like any non-JSON value: escape strings, try again
        try:
            text = orjson.dumps(storable_json(fields))
        except TypeError as exc:  # orjson.JSONEncodeError
            raise TypeError(f"log fields must be JSON values: {exc}") from None
    plain = orjson.loads(text)
    # the only other thing PostgreSQL cannot store, and orjson writes it as \u0000
    return storable_json(plain) if b"\\u0000" in text else plain
