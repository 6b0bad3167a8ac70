"""One reader of the event feed per process, fanned out to every open stream.

The broadcaster listens through the backend's one LISTEN connection; a notification makes it
read the new final events once (and the records of the runs they touch), however many
streams are open. Each subscriber gets the batches through a bounded queue: one that falls
``queue_size`` batches behind is dropped (its stream ends, the browser reconnects with
``Last-Event-ID`` and catches up from the database), so a slow client can never make the
process hold more than ``queue_size`` batches for it. Batches are shared between
subscribers, not copied.

Bursts are coalesced without delaying a lone event: the first notification after a quiet
spell is read at once; notifications arriving within ``coalesce`` seconds of the previous
read wait for the next one, which then takes them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from dataclasses import dataclass

from asyncjobs.backends.base import Notification
from asyncjobs.errors import DatabaseUnavailable
from asyncjobs.feed import (
    DEFAULT_GRACE,
    PAGE_SIZE,
    FeedBatch,
    FeedReader,
    FeedSource,
    SubscriptionEnded,
)
from asyncjobs.runs import EventCursor, RunEvent

logger = logging.getLogger(__name__)

#: Queued batches per subscriber before it counts as too slow and is dropped.
DEFAULT_QUEUE_SIZE = 64


@dataclass(frozen=True, slots=True)
class BroadcastStats:
    """Counters of one broadcaster since it started."""

    #: open subscriptions now
    subscribers: int
    #: database reads of the feed
    reads: int
    #: batches fanned out, and the events in them
    batches: int
    events: int
    #: subscribers dropped for falling ``queue_size`` batches behind
    dropped: int
    #: the deepest any subscriber queue has been
    max_queued: int
    #: the feed position read up to (``None`` while nobody listens)
    position: EventCursor | None


class _Ended:
    """Queue sentinel: the subscription is over (``reason`` says why)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


class Subscription:
    """A ``LiveSource`` fed by the broadcaster: every batch with events of ``root_run_id``
    (all batches when ``None``), in order, each saying where it continues from."""

    def __init__(self, broadcaster: Broadcaster, root_run_id: int | None, queue_size: int) -> None:
        self.root_run_id = root_run_id
        self._broadcaster = broadcaster
        self._queue: asyncio.Queue[FeedBatch | _Ended] = asyncio.Queue(queue_size + 1)
        self._queue_size = queue_size
        self._ended: str | None = None
        position = broadcaster.position
        # the chain of batches seen without a break since the last one queued
        self._chain_start: EventCursor | None = position
        self._chain_end: EventCursor | None = position

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    async def next_batch(self, retry: float | None) -> FeedBatch | None:
        item = await self._queue.get()
        if isinstance(item, _Ended):
            raise SubscriptionEnded(item.reason)
        return item

    def offer(self, batch: FeedBatch, by_root: dict[int, list[RunEvent]]) -> bool:
        """Queue the part of ``batch`` this subscriber wants; False when it is too slow."""
        if self._ended is not None:
            return True
        if self._chain_end != batch.start:
            self._chain_start = batch.start  # a break: the consumer catches up from the DB
        self._chain_end = batch.end
        item = self._select(batch, by_root)
        if item is None:
            return True
        if self._queue.qsize() >= self._queue_size:
            self.end("dropped")
            return False
        self._queue.put_nowait(item)
        self._chain_start = batch.end
        return True

    def _select(self, batch: FeedBatch, by_root: dict[int, list[RunEvent]]) -> FeedBatch | None:
        assert self._chain_start is not None
        if self.root_run_id is None:
            events, runs = batch.events, batch.runs
        else:
            events = by_root.get(self.root_run_id, [])
            if not events:
                return None
            runs = [r for r in batch.runs if r.root_run_id == self.root_run_id]
        return FeedBatch(
            self._chain_start, batch.end, events, runs, batch.runs_started, batch.runs_finished
        )

    def end(self, reason: str) -> None:
        """Stop it: free what is queued and wake the consumer, which raises."""
        if self._ended is not None:
            return
        self._ended = reason
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(_Ended(reason))
        self._broadcaster.unsubscribe(self)


class Broadcaster:
    """Reads the event feed once per process and fans it out (see the module docstring)."""

    def __init__(
        self,
        backend: FeedSource,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        page_size: int = PAGE_SIZE,
        grace: float = DEFAULT_GRACE,
        coalesce: float = 0.02,
        poll_interval: float = 2.0,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self.backend = backend
        self.queue_size = queue_size
        self.grace = grace
        self.coalesce = coalesce
        self.poll_interval = poll_interval
        self._reader = FeedReader(backend, None, EventCursor(), grace=grace, page_size=page_size)
        self.position: EventCursor | None = None
        self._subscribers: set[Subscription] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._reads = self._batches = self._events = self._dropped = self._max_queued = 0

    async def start(self) -> None:
        if self._task is None:
            self.backend.add_listener(self._on_notification)
            self._task = asyncio.create_task(self._run(), name="asyncjobs-broadcaster")

    async def stop(self) -> None:
        """Stop reading and end every subscription (their streams close)."""
        task, self._task = self._task, None
        if task is None:
            return
        self.backend.remove_listener(self._on_notification)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        self.end_all("shutdown")

    def end_all(self, reason: str) -> None:
        """End every subscription (their streams close; browsers reconnect later)."""
        for subscription in list(self._subscribers):
            subscription.end(reason)

    def subscribe(self, root_run_id: int | None) -> Subscription:
        """A new subscription; batches read from now on are queued for it."""
        subscription = Subscription(self, root_run_id, self.queue_size)
        self._subscribers.add(subscription)
        self._wake.set()  # a dormant broadcaster starts following the feed
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)

    def stats(self) -> BroadcastStats:
        return BroadcastStats(
            subscribers=len(self._subscribers),
            reads=self._reads,
            batches=self._batches,
            events=self._events,
            dropped=self._dropped,
            max_queued=self._max_queued,
            position=self.position,
        )

    def _on_notification(self, notification: Notification) -> None:
        if notification.events or notification.reconnected:
            self._wake.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last_read = 0.0
        outage = False
        while True:
            retry = self._reader.retry_delay
            timeout = self.poll_interval if retry is None else retry
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            if not self._subscribers:
                # nobody listens: stop following; the next subscriber restarts from "now"
                self._wake.clear()
                self.position = None
                continue
            pause = last_read + self.coalesce - loop.time()
            if pause > 0:
                await asyncio.sleep(pause)  # merge a burst into one read
            self._wake.clear()
            last_read = loop.time()
            try:
                await self._read()
            except DatabaseUnavailable as exc:
                if not outage:
                    logger.warning("event feed: database unavailable, will retry: %s", exc)
                    outage = True
                continue
            except Exception:
                logger.exception("event feed: read failed; retrying at the next wake-up")
                continue
            if outage:
                logger.warning("event feed: database reachable again")
                outage = False

    async def _read(self) -> None:
        reader = self._reader
        if self.position is None:
            self.position = await self.backend.feed_position(self.grace)
        reader.cursor = self.position
        while True:
            self._reads += 1
            batch = await reader.read_batch()
            if batch is not None:
                self.position = batch.end
                self._fan_out(batch)
            if batch is None or len(batch.events) < reader.page_size:
                break

    def _fan_out(self, batch: FeedBatch) -> None:
        self._batches += 1
        self._events += len(batch.events)
        by_root: dict[int, list[RunEvent]] = defaultdict(list)
        for event in batch.events:
            by_root[event.root_run_id].append(event)
        for subscription in list(self._subscribers):
            if not subscription.offer(batch, by_root):
                self._dropped += 1
                logger.info("dropped a slow event-stream subscriber (it can resume)")
            self._max_queued = max(self._max_queued, subscription.queued)
