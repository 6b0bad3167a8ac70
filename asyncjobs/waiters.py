"""Waiting for runs to finish: LISTEN wake-ups first, polling as the fallback.

All waiters of one client share one checker task: a notification naming finished runs makes
it look those up at once; every ``poll_interval`` (and after a reconnect, when notifications
may have been lost) it looks up every run still awaited, in one query.

A waiter that only needs a success's result (``quick``: ``run_async``) takes it from the
notification when the result is there (``Notification.results``): no query at all. A run
that failed, was cancelled or expired, or whose result did not fit, is looked up.

A wait normally starts with one look-up too, as the run may have finished before the waiter
subscribed. ``expect()`` before the trigger makes that look-up unneeded: from then on the
notifications naming finished runs are kept until the wait is registered, so none is missed
in between; only a reconnect (or a notification too long to list its runs) in that window
brings the look-up back.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass
from typing import Any, cast

from asyncjobs.backends.base import Notification, QueueStore
from asyncjobs.errors import DatabaseError
from asyncjobs.runs import RunRecord

logger = logging.getLogger(__name__)

#: a finished run named by a notification without its result
_NO_RESULT = object()


@dataclass(frozen=True, slots=True)
class Succeeded:
    """A run that succeeded, as its notification said: its stored result (JSON values)."""

    run_id: int
    result: Any


Outcome = RunRecord | Succeeded


@dataclass(frozen=True, slots=True)
class _Expectation:
    #: ``ResultWaiter._seq`` and ``_blind`` when it began
    seq: int
    blind: int


class ResultWaiter:
    def __init__(self, backend: QueueStore, poll_interval: float) -> None:
        self._backend = backend
        self._poll_interval = poll_interval
        #: waiters that need the whole run record
        self._futures: dict[int, set[asyncio.Future[Outcome]]] = {}
        #: waiters content with ``Succeeded`` (they take a record as well)
        self._quick: dict[int, set[asyncio.Future[Outcome]]] = {}
        self._due: set[int] = set()
        self._check_all = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listening = False
        #: notifications seen, and those that may have missed finished runs (a reconnect, or
        #: too many runs to list)
        self._seq = 0
        self._blind = 0
        self._tickets = itertools.count()
        self._expecting: dict[int, _Expectation] = {}
        #: run id → (seq, result or _NO_RESULT): finished runs named while a wait is expected
        self._recent: dict[int, tuple[int, Any]] = {}

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

    def _listen(self) -> None:
        if not self._listening:
            # LISTEN only once somebody waits: a client that only triggers runs then keeps
            # no listening session, which the server would otherwise wake on every NOTIFY
            self._backend.add_listener(self._on_notification)
            self._listening = True

    def expect(self) -> int:
        """Call before triggering a run that will be awaited; pass the ticket to ``wait``
        (or to ``forget`` if no wait follows)."""
        self._listen()
        ticket = next(self._tickets)
        self._expecting[ticket] = _Expectation(self._seq, self._blind)
        return ticket

    def forget(self, ticket: int) -> None:
        self._expecting.pop(ticket, None)
        self._prune()

    async def wait(self, run_id: int) -> RunRecord:
        """Until the run is terminal: its record."""
        # only quick waiters are handed a Succeeded
        return cast(RunRecord, await self.outcome(run_id))

    async def outcome(
        self, run_id: int, *, quick: bool = False, ticket: int | None = None
    ) -> Outcome:
        """Until the run is terminal: its record, or with ``quick`` possibly ``Succeeded``."""
        self._listen()
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        waiting = self._quick if quick else self._futures
        waiting.setdefault(run_id, set()).add(future)
        expected = None if ticket is None else self._expecting.pop(ticket, None)
        if expected is None or expected.blind != self._blind:
            self._due.add(run_id)  # it may have finished already
            self._wake.set()
        elif (seen := self._recent.get(run_id)) is not None:
            self._finished(run_id, seen[1])
        self._prune()
        try:
            return await future
        finally:
            futures = waiting.get(run_id)
            if futures is not None:
                futures.discard(future)
                if not futures:
                    del waiting[run_id]

    def _on_notification(self, notification: Notification) -> None:
        self._seq += 1
        if notification.many_done or notification.reconnected:
            self._blind += 1
            self._check_all = True
        results = notification.results
        for run_id in notification.done:
            result = results.get(run_id, _NO_RESULT)
            if self._expecting:
                self._recent.pop(run_id, None)  # re-inserted last: the dict stays in seq order
                self._recent[run_id] = (self._seq, result)
            if run_id in self._futures or run_id in self._quick:
                self._finished(run_id, result)
        if self._due or self._check_all:
            self._wake.set()

    def _finished(self, run_id: int, result: Any) -> None:
        """A notification said the run finished: hand a known result to the quick waiters,
        look the run up for the others."""
        quick = self._quick.get(run_id, ())
        if result is not _NO_RESULT:
            outcome = Succeeded(run_id, result)
            for future in quick:
                if not future.done():
                    future.set_result(outcome)
            if run_id in self._futures:
                self._due.add(run_id)
        elif quick or run_id in self._futures:
            self._due.add(run_id)
        if self._due:
            self._wake.set()

    def _prune(self) -> None:
        """Drop the kept notifications that no expected wait can need any more."""
        if not self._expecting:
            self._recent.clear()
            return
        # tickets are handed out in order, and ``_seq`` only grows: the first is the oldest
        oldest = next(iter(self._expecting.values())).seq
        while self._recent:
            run_id, (seq, _) = next(iter(self._recent.items()))
            if seq > oldest:
                break
            del self._recent[run_id]

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
            awaited = self._futures.keys() | self._quick.keys()
            ids = awaited if self._check_all else self._due & awaited
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
                waiting = (*self._futures.get(record.id, ()), *self._quick.get(record.id, ()))
                for future in waiting:
                    if not future.done():
                        future.set_result(record)
