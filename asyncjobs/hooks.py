"""Lifecycle hooks: ``@app.on("started")`` and friends.

Worker hooks get the ``Worker``; run hooks get the run's ``Context`` (``ctx.run`` is the
``RunRecord`` as claimed) and, for ``failed``, the exception. A hook may be a plain or an
async function. Order, for a worker and one run::

    starting → started → executing → executed | failed → ... → stopping → stopped

* ``starting`` — the worker is about to connect and register (nothing is claimed yet);
* ``started`` — it is registered, claims and fires schedules;
* ``executing`` — a run was claimed and its arguments validated; the job is about to be called;
* ``executed`` — the job returned and its result was encoded;
* ``failed`` — the attempt failed (raised, timed out, result not JSON; or its stored arguments
  no longer fit the code, in which case ``executing`` was not called);
  ``ctx.run.retries + 1 < ctx.run.max_attempts`` tells whether a retry may follow;
* ``stopping`` — the worker stopped claiming and starts draining its running runs;
* ``stopped`` — everything is released; the worker is gone from the workers table.

A run cancelled or handed back at shutdown calls neither ``executed`` nor ``failed``. Run hooks
run in the run's task (``ctx.log`` works, and ``logging`` records are captured into the run),
before the outcome is stored; they hold the run's worker slot, so keep them short.

A hook that raises is logged (logger ``asyncjobs.hooks``) and otherwise ignored: it never
fails the run or stops the worker. Hooks of one event run in the order they were added.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args

from asyncjobs.context import Context
from asyncjobs.errors import ConfigurationError

if TYPE_CHECKING:
    from asyncjobs.worker import Worker

logger = logging.getLogger(__name__)

WorkerEvent = Literal["starting", "started", "stopping", "stopped"]
RunHookEvent = Literal["executing", "executed"]
FailedEvent = Literal["failed"]
HookEvent = Literal[WorkerEvent, RunHookEvent, FailedEvent]
HOOK_EVENTS: tuple[str, ...] = (
    *get_args(WorkerEvent),
    *get_args(RunHookEvent),
    *get_args(FailedEvent),
)

WorkerHook = Callable[["Worker"], Awaitable[None] | None]
RunHook = Callable[[Context], Awaitable[None] | None]
FailedHook = Callable[[Context, BaseException], Awaitable[None] | None]

H = TypeVar("H", bound=Callable[..., Any])


class Hooks:
    """The hooks of one app, by event (``App.on`` adds to it; the worker calls it)."""

    def __init__(self) -> None:
        self._hooks: dict[str, list[Callable[..., Any]]] = {event: [] for event in HOOK_EVENTS}

    def __bool__(self) -> bool:
        return any(self._hooks.values())

    def check(self, event: str) -> None:
        if event not in self._hooks:
            raise ConfigurationError(f"unknown hook event {event!r}; use one of {HOOK_EVENTS}")

    def add(self, event: str, hook: H) -> H:
        self.check(event)
        if not callable(hook):
            raise ConfigurationError(f"a {event!r} hook must be callable, got {hook!r}")
        self._hooks[event].append(hook)
        return hook

    def registered(self, event: str) -> list[Callable[..., Any]]:
        return list(self._hooks[event])

    async def worker(self, event: WorkerEvent, worker: Worker) -> None:
        await self._call(event, worker)

    async def executing(self, ctx: Context) -> None:
        await self._call("executing", ctx)

    async def executed(self, ctx: Context) -> None:
        await self._call("executed", ctx)

    async def failed(self, ctx: Context, error: BaseException) -> None:
        await self._call("failed", ctx, error)

    async def _call(self, event: str, *args: Any) -> None:
        for hook in self._hooks[event]:
            try:
                outcome = hook(*args)
                if inspect.isawaitable(outcome):
                    await outcome
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is None or task.cancelling():
                    raise  # the run or the worker is being cancelled: not the hook's doing
                logger.exception("%r hook %s raised CancelledError; ignored", event, _name(hook))
            except GeneratorExit:
                raise  # the calling coroutine is being closed
            except BaseException:  # user code: even KeyboardInterrupt must not stop the worker
                logger.exception("%r hook %s failed; ignored", event, _name(hook))


def _name(hook: Callable[..., Any]) -> str:
    return getattr(hook, "__qualname__", None) or repr(hook)
