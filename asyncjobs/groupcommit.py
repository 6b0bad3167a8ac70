"""Group commit: concurrent callers of one insert share a statement and its commit.

Each commit waits for a WAL flush, so a connection does a few thousand single-row inserts a
second however little each costs. ``GroupCommit.submit(item)`` sends ``item`` at once when
no statement is in flight (a sequential caller pays no extra latency and no extra task);
callers that arrive while one is in flight are queued, and when it returns they all go out
as one statement (at most ``max_batch`` items, in arrival order). Every caller still gets
its own result or its own error:

* ``send(items)`` returns one result per item, in order;
* when it fails for a batch of several items and ``split(error)`` says the failure may be
  one item's fault (the database refused the statement: nothing was written), each item is
  sent again on its own, so only the bad one gets the error; an error that leaves the outcome
  unknown (the connection was lost around the commit) goes to every caller of the batch, as
  it would to a lone caller, and nothing is sent twice.

Cancellation: a caller cancelled while it is queued is dropped before anything is sent (its
row is not written). One cancelled after its batch was sent does not stop the batch: the row
is written and only the caller stops waiting, exactly as when a lone caller is cancelled after
the database committed its statement. A lone caller's own statement runs in its own task
and is cancelled with it (the row may or may not be written, as for any cancelled call).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: the most items one coalesced statement carries
DEFAULT_MAX_BATCH = 1000


class GroupCommit(Generic[T, R]):
    """Coalesces concurrent ``submit`` calls into ``send`` calls (see the module docstring)."""

    def __init__(
        self,
        send: Callable[[list[T]], Awaitable[list[R]]],
        split: Callable[[Exception], bool],
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        self._send = send
        self._split = split
        self._max_batch = max_batch
        self._queue: deque[tuple[T, asyncio.Future[R]]] = deque()
        #: a statement is in flight: new callers queue behind it
        self._busy = False
        self._drainer: asyncio.Task[None] | None = None
        #: statements sent (for tests and metrics: fewer than callers under concurrency)
        self.statements = 0

    async def submit(self, item: T) -> R:
        """Send ``item`` (alone, or with the callers that arrive while a statement is in
        flight) and return its result; raises its own error."""
        if self._busy:
            future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
            self._queue.append((item, future))
            return await future  # cancelled while queued: the drainer skips it
        self._busy = True
        try:
            self.statements += 1
            (result,) = await self._send([item])
        finally:
            self._next()
        return result

    async def wait_idle(self) -> None:
        """Wait until every queued item has been sent (the backend's close)."""
        while self._drainer is not None:
            await asyncio.shield(self._drainer)

    def _next(self) -> None:
        """A statement returned: send what queued meanwhile in a task of its own (so the
        caller whose statement just returned goes on at once), or become idle."""
        if self._queue:
            self._drainer = asyncio.get_running_loop().create_task(self._drain())
        else:
            self._busy = False

    async def _drain(self) -> None:
        try:
            while batch := self._take():
                await self._flush(batch)
        finally:
            self._busy = False
            self._drainer = None
            for _, future in self._queue:  # only if the drainer itself was cancelled
                future.cancel()
            self._queue.clear()

    def _take(self) -> list[tuple[T, asyncio.Future[R]]]:
        batch: list[tuple[T, asyncio.Future[R]]] = []
        while self._queue and len(batch) < self._max_batch:
            entry = self._queue.popleft()
            if not entry[1].done():  # a caller cancelled while queued is not sent
                batch.append(entry)
        return batch

    async def _flush(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        self.statements += 1
        try:
            results = await self._send([item for item, _ in batch])
        except Exception as exc:
            if len(batch) == 1 or not self._split(exc):
                _settle(batch, exc)
                return
            for entry in batch:  # nothing was written: find the item at fault
                if not entry[1].done():  # cancelled since: not written, not sent again
                    await self._flush([entry])
            return
        except BaseException:  # the drainer was cancelled (loop shutdown): nobody waits on
            for _, future in batch:
                future.cancel()
            raise
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)


def _settle(batch: list[tuple[T, asyncio.Future[R]]], error: Exception) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(error)
