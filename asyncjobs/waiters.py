"""Waiting for runs to finish: LISTEN wake-ups first, polling as the fallback.

All waiters of one client share one checker task: a notification naming finished runs makes
it look those up at once; every ``poll_interval`` (and after a reconnect, when notifications
may have been lost) it looks up every run still awaited, in one query.
"""

from __future__ import annotations

import asyncio
import logging

from asyncjobs.backends.base import Notification, QueueStore
from asyncjobs.errors import DatabaseError
from asyncjobs.runs import RunRecord

logger = logging.getLogger(__name__)


class ResultWaiter:
    def __init__(self, backend: QueueStore, poll_interval: float) -> None:
        self._backend = backend
        self._poll_interval = poll_interval
        self._futures: dict[int, set[asyncio.Future[RunRecord]]] = {}
        self._due: set[int] = set()
        self._check_all = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listening = False

    async def start(self) -> None:
        self._task = asyncio.create_task(self._check_loop(), name="asyncjobs-result-waiter")

    async def stop(self) -> None:
        if self._listening:
            self._backend.remove_listener(self._on_notification)
            self._listening = False
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def wait(self, run_id: int) -> RunRecord:
        if not self._listening:
            # LISTEN only once somebody waits: a client that only triggers runs then keeps
            # no listening session, which the server would otherwise wake on every NOTIFY
            self._backend.add_listener(self._on_notification)
            self._listening = True
        future: asyncio.Future[RunRecord] = asyncio.get_running_loop().create_future()
        self._futures.setdefault(run_id, set()).add(future)
        self._due.add(run_id)  # it may have finished already
        self._wake.set()
        try:
            return await future
        finally:
            waiting = self._futures.get(run_id)
            if waiting is not None:
                waiting.discard(future)
                if not waiting:
                    del self._futures[run_id]

    def _on_notification(self, notification: Notification) -> None:
        if notification.many_done or notification.reconnected:
            self._check_all = True
        else:
            self._due |= notification.done & self._futures.keys()
        if self._due or self._check_all:
            self._wake.set()

    async def _check_loop(self) -> None:
        outage = False
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation
            # that arrives as the event is set, and stop() would then wait forever
            try:
                async with asyncio.timeout(self._poll_interval):
                    await self._wake.wait()
            except TimeoutError:
                self._check_all = True
            self._wake.clear()
            ids = set(self._futures) if self._check_all else self._due & self._futures.keys()
            self._due.clear()
            self._check_all = False
            if not ids:
                continue
            try:
                finished = await self._backend.terminal_runs(sorted(ids))
            except DatabaseError as exc:
                # any database error, not only an outage: this task serves every waiter of the
                # client, so it must outlive the error and try again at the next poll
                if not outage:
                    logger.warning("cannot check run results, will retry: %s", exc)
                    outage = True
                self._check_all = True
                continue
            if outage:
                logger.warning("database reachable again; checking awaited runs")
                outage = False
            for record in finished:
                for future in self._futures.get(record.id, ()):
                    if not future.done():
                        future.set_result(record)
