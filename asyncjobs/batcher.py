"""Natural batching: items added while a flush is in flight go out together in the next one.

An idle batcher flushes a lone item at once (no added latency); under load the batches grow
by themselves. Nothing is ever dropped, and one bad item never fails its neighbours:

* a flush that fails because the database is away (``DatabaseUnavailable``) or refused it
  for the moment (``DatabaseBusy``: a deadlock, a lock or statement timeout) is retried with
  backoff, keeping the items in order; the outage is logged once;
* a flush refused for any other reason is split in halves, each flushed on its own, until the
  refused item stands alone (a batch with no bad item costs nothing extra: one flush). An item
  refused alone is tried twice more (after 50 and 100 ms: a refusal the driver did not
  classify may still be the moment's fault, not the item's); refused every time, it is
  the offender: ``repair`` gives a replacement that can be stored (step 1, 2, ... until it
  returns ``None``), which takes the item's place. Order is kept.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from asyncjobs.errors import DatabaseBusy, DatabaseUnavailable

T = TypeVar("T")

logger = logging.getLogger(__name__)

#: ``repair(item, error, step)``: what to store instead of an item refused alone, or ``None``
Repair = Callable[[T, Exception, int], T | None]

#: replacements tried for one refused item before it is given up (the last resort's last resort)
MAX_REPAIRS = 3
#: seconds to wait before each new try of an item refused alone, as it is (see module doc)
LONE_RETRY_DELAYS = (0.05, 0.1)


@dataclass(eq=False, slots=True)
class _Entry(Generic[T]):
    item: T
    future: asyncio.Future[None]


class Batcher(Generic[T]):
    def __init__(
        self,
        name: str,
        flush: Callable[[list[T]], Awaitable[None]],
        *,
        repair: Repair[T] | None = None,
        describe: Callable[[T], str] = repr,
        max_batch: int = 500,
        max_backoff: float = 2.0,
    ) -> None:
        self.name = name
        self._flush = flush
        self._repair = repair
        self._describe = describe
        self._max_batch = max_batch
        self._max_backoff = max_backoff
        self._backoff = 0.05
        self._outage = False
        self._items: deque[_Entry[T]] = deque()
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: T) -> asyncio.Future[None]:
        """Queue one item; the future completes once it (or its replacement) is stored."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._items.append(_Entry(item, future))
        self._idle.clear()
        self._ready.set()
        return future

    async def run(self) -> None:
        """Flush forever (run it as a task; cancel it after ``drain``)."""
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._items:
                batch = [self._items[i] for i in range(min(self._max_batch, len(self._items)))]
                await self._store(batch)
                for _ in batch:
                    self._items.popleft()
            self._idle.set()

    async def drain(self) -> None:
        """Wait until everything added so far has been flushed."""
        await self._idle.wait()

    # ------------------------------------------------------------------ internals

    async def _store(self, batch: list[_Entry[T]]) -> None:
        """Flush ``batch``; when it is refused, isolate the refused items by halving."""
        error = await self._try(batch)
        if error is None:
            _settle(batch, None)
        elif len(batch) > 1:
            logger.debug("%s: %d items refused (%s); halving", self.name, len(batch), error)
            middle = len(batch) // 2
            await self._store(batch[:middle])
            await self._store(batch[middle:])
        else:
            await self._store_alone(batch[0], error)

    async def _store_alone(self, entry: _Entry[T], error: Exception) -> None:
        for delay in LONE_RETRY_DELAYS:
            await asyncio.sleep(delay)
            retried = await self._try([entry])
            if retried is None:
                _settle([entry], None)
                return
            error = retried
        what = self._describe(entry.item)
        for step in range(1, MAX_REPAIRS + 1):
            replacement = self._replacement(entry.item, error, step)
            if replacement is None:
                break
            if step == 1:
                logger.error(
                    "%s: %s could not be stored (%s: %s); storing a replacement instead",
                    self.name, what, type(error).__name__, error,
                )  # fmt: skip
            entry.item = replacement
            failed = await self._try([entry])
            if failed is None:
                _settle([entry], None)
                return
            error = failed
        logger.error(
            "%s: %s could not be stored, nor any replacement; giving it up (%s: %s)",
            self.name, what, type(error).__name__, error,
        )  # fmt: skip
        _settle([entry], error)

    def _replacement(self, item: T, error: Exception, step: int) -> T | None:
        if self._repair is None:
            return None
        try:
            return self._repair(item, error, step)
        except Exception:
            logger.exception("%s: repairing %s failed", self.name, self._describe(item))
            return None

    async def _try(self, batch: list[_Entry[T]]) -> Exception | None:
        """One flush of ``batch``, retried while the database is away; the refusal, if any."""
        while True:
            try:
                await self._flush([entry.item for entry in batch])
            except (DatabaseUnavailable, DatabaseBusy) as exc:
                if not self._outage:
                    logger.warning("%s: database unavailable, will retry: %s", self.name, exc)
                    self._outage = True
                await asyncio.sleep(self._backoff)
                self._backoff = min(self._backoff * 2, self._max_backoff)
                continue
            except Exception as exc:
                return exc
            if self._outage:
                logger.warning("%s: database reachable again", self.name)
                self._outage, self._backoff = False, 0.05
            return None


def _settle(batch: list[_Entry[T]], error: Exception | None) -> None:
    for entry in batch:
        if entry.future.done():
            continue
        if error is None:
            entry.future.set_result(None)
        else:
            entry.future.set_exception(error)
