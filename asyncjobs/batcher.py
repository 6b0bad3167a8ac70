"""Natural batching: items added while a flush is in flight go out together in the next one.

An idle batcher flushes a lone item at once (no added latency); under load the batches grow
by themselves. A flush that fails because the database is away is retried with backoff,
keeping the items in order; the outage is logged once.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from asyncjobs.errors import DatabaseUnavailable

T = TypeVar("T")

logger = logging.getLogger(__name__)


class Batcher(Generic[T]):
    def __init__(
        self,
        name: str,
        flush: Callable[[list[T]], Awaitable[None]],
        *,
        max_batch: int = 500,
        max_backoff: float = 2.0,
    ) -> None:
        self.name = name
        self._flush = flush
        self._max_batch = max_batch
        self._max_backoff = max_backoff
        self._items: deque[tuple[T, asyncio.Future[None]]] = deque()
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: T) -> asyncio.Future[None]:
        """Queue one item; the future completes once it has been flushed."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._items.append((item, future))
        self._idle.clear()
        self._ready.set()
        return future

    async def run(self) -> None:
        """Flush forever (run it as a task; cancel it after ``drain``)."""
        backoff = 0.05
        outage = False
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._items:
                batch = [self._items[i] for i in range(min(self._max_batch, len(self._items)))]
                try:
                    await self._flush([item for item, _ in batch])
                except DatabaseUnavailable as exc:
                    if not outage:
                        logger.warning("%s: database unavailable, will retry: %s", self.name, exc)
                        outage = True
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self._max_backoff)
                    continue
                except Exception as exc:
                    logger.exception("%s: flush failed; dropping %d items", self.name, len(batch))
                    self._settle(batch, exc)
                    continue
                if outage:
                    logger.warning("%s: database reachable again", self.name)
                    outage, backoff = False, 0.05
                self._settle(batch, None)
            self._idle.set()

    def _settle(self, batch: list[tuple[T, asyncio.Future[None]]], error: Exception | None) -> None:
        for _ in batch:
            self._items.popleft()
        for _, future in batch:
            if future.done():
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

    async def drain(self) -> None:
        """Wait until everything added so far has been flushed."""
        await self._idle.wait()
