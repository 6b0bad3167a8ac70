"""Helpers for testing your own jobs: an in-memory queue with a worker, and a clock you move.

``run_app`` runs a worker and a client of your app on a ``MemoryBackend`` for the duration of
an ``async with`` block; jobs run for real, in the same event loop, with no database::

    from asyncjobs import RunFailed, testing

    async def test_invoice() -> None:
        async with testing.run_app(app) as client:
            assert await client.run_async(invoice, customer_id=1, cents=500) == "INV-1-500"
            with pytest.raises(RunFailed):
                await client.run_async(invoice, customer_id=1, cents=-1)

To test delays, deadlines and leases without waiting, give the backend a ``ManualClock``::

    clock = testing.ManualClock()
    backend = testing.MemoryBackend(clock=clock)
    async with testing.run_app(app, backend) as client:
        later = backend.now() + timedelta(hours=1)  # the backend's clock, not the wall's
        run = await client.trigger_async(remind.options(not_before=later), user_id=7)
        clock.advance(3600)  # the worker picks the run up at its next poll
        await run.result()
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from asyncjobs.app import App
from asyncjobs.backends.base import Backend
from asyncjobs.backends.memory import MemoryBackend
from asyncjobs.client import Client

__all__ = ("ManualClock", "MemoryBackend", "run_app")


class ManualClock:
    """A monotonic clock that moves only when told: ``MemoryBackend(clock=ManualClock())``.

    Moving it past a running run's lease (20 s by default) makes that run look abandoned,
    as if its worker had stopped heartbeating.
    """

    def __init__(self, start: float = 0.0) -> None:
        self.seconds = start

    def __call__(self) -> float:
        return self.seconds

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a monotonic clock cannot go back")
        self.seconds += seconds


@contextlib.asynccontextmanager
async def run_app(
    app: App,
    backend: Backend | None = None,
    *,
    concurrency: int = 10,
    poll_interval: float = 0.05,
    sweep_interval: float = 0.1,
    **worker_options: Any,
) -> AsyncIterator[Client]:
    """A client of ``app`` with a worker running beside it, both on ``backend``
    (a new ``MemoryBackend`` by default).

    The short poll and sweep intervals make delayed and expired runs show up quickly; they
    cost nothing in memory. ``worker_options`` go to ``Worker`` (``queues=``, ``lease=``, ...).
    On exit the worker stops as in production: running jobs get ``drain_timeout`` to finish.
    """
    backend = backend if backend is not None else MemoryBackend()
    worker = app.worker(
        backend,
        concurrency=concurrency,
        poll_interval=poll_interval,
        sweep_interval=sweep_interval,
        **worker_options,
    )
    async with worker, app.client(backend) as client:
        yield client
