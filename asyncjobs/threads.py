"""Plain ``def`` jobs: they run in a thread, so they cannot block the worker's event loop.

Each worker gives its plain jobs a ``CapacityLimiter`` as large as its ``concurrency``, so
they are bounded like async jobs, and ``anyio.to_thread`` copies the job's context into the
thread: ``get_context()`` works there. Async calls from the thread (``ctx.progress``,
``ctx.log``, triggering a child) go back to the loop with ``anyio.from_thread.run``.

Timeouts and cancellation are cooperative: a thread cannot be killed. When the job's
``timeout`` passes (or the run is cancelled, or the worker stops), the run ends at once —
failed with ``JobTimeout``, cancelled, or handed back — and the thread is abandoned: it runs
on until its function returns, its result is discarded, and it no longer counts against the
limiter. Long plain jobs should check ``ctx.cancel_requested`` now and then.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.to_thread

from asyncjobs.context import current_context

if TYPE_CHECKING:
    from asyncjobs.client import Client

R = TypeVar("R")

# one limiter per worker (keyed by the worker's client, which lives as long as the worker)
_limiters: weakref.WeakKeyDictionary[Client, anyio.CapacityLimiter] = (
    weakref.WeakKeyDictionary()
)


def in_thread(fn: Callable[..., R]) -> Callable[..., Awaitable[R]]:
    """An async function running ``fn`` in a worker thread (see the module docs)."""

    @functools.wraps(fn)
    async def run_in_thread(*args: Any, **kwargs: Any) -> R:
        call = functools.partial(fn, *args, **kwargs)
        return await anyio.to_thread.run_sync(call, abandon_on_cancel=True, limiter=_limiter())

    return run_in_thread


def _limiter() -> anyio.CapacityLimiter | None:
    """The running worker's limiter; ``None`` (anyio's default pool) outside a worker."""
    context = current_context.get()
    threads = None if context is None else context.client.job_threads
    if context is None or threads is None:
        return None
    client = context.client
    limiter = _limiters.get(client)
    if limiter is None:
        limiter = _limiters[client] = anyio.CapacityLimiter(threads)
    return limiter
