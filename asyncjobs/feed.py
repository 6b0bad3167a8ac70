"""The event feed: run events in an order that never skips or repeats one, for SSE and ``watch``.

Why not "every event after id N": a ``run_events`` id is taken when the row is inserted, but
the row becomes visible when its transaction commits. Transaction A takes id 10, B takes
id 11 and commits first; a reader that delivered 11 and resumes "after 11" never sees 10.

So the feed is ordered by ``(xid, id)`` (``EventCursor``), where ``xid`` is the id of the
writing transaction, and an event is delivered only once it is *final*: its transaction is
older than every transaction still running (``xid < pg_snapshot_xmin(pg_current_snapshot())``).
Every transaction with a smaller xid has then ended and its rows are visible together, so
nothing can appear behind a delivered position later: resuming after a cursor has no gap and
no duplicate. Events of one transaction share an xid and keep their id order.

xmin is cluster-wide, so one long transaction anywhere (a report, an idle session holding a
transaction open) would stall the feed. An event older than the *grace period* (default
``DEFAULT_GRACE`` seconds) is therefore final as well. That keeps the guarantee as long as no
statement that writes events runs longer than the grace period; asyncjobs' statements take
milliseconds. A reader stops at the first visible event that is not final yet (it never
skips one) and reads again shortly (``FeedPage.held_back``).

Run records travel with the events that touch them. A record read later is never older, so
a reader keeps the records it hands out monotone: records read before the newest ones it
already delivered are read again (``FeedReader``).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol

from asyncjobs import inputs
from asyncjobs.backends.base import Feed, Insights, Notification, Notifier, RunFilter
from asyncjobs.errors import RunNotFound
from asyncjobs.runs import EventCursor, RunEvent, RunRecord, RunStatus

#: Seconds after which an event counts as final even if an older transaction still runs.
DEFAULT_GRACE = 5.0
#: Events per database read (and at most per update).
PAGE_SIZE = 500
#: Runs sent in a trace snapshot; a larger tree is cut (``TraceUpdate.truncated``).
TREE_LIMIT = 5000
#: Event kinds that finish a run.
TERMINAL_KINDS = frozenset(status.value for status in RunStatus if status.is_terminal)

#: How soon to read again after a held-back read (seconds). While reads make progress it stays
#: at ``RETRY_MIN`` (the blocker is usually a statement that takes milliseconds); reads that
#: deliver nothing wait half as long again each time, up to ``RETRY_MAX``.
RETRY_MIN = 0.005
RETRY_MAX = 0.25

# A process-wide logical clock: a read that starts after another one finished sees a newer
# database snapshot, which is how records are kept from going back in time.
_read_clock = itertools.count(1)


def tick() -> int:
    """The next value of the process-wide read clock."""
    return next(_read_clock)


@dataclass(frozen=True, slots=True)
class FeedBatch:
    """Consecutive events of the feed, with the current records of the runs they touch.

    ``start`` is the position the batch continues from: a reader at ``start`` (or later)
    misses nothing by taking it.
    """

    start: EventCursor
    end: EventCursor
    events: list[RunEvent]
    runs: list[RunRecord]
    #: read clock before the runs were read, and after
    runs_started: int = 0
    runs_finished: int = 0


class UpdateKind(enum.StrEnum):
    """What a ``TraceUpdate`` carries (also the SSE event name)."""

    #: the tree as it is now (first update of a stream that does not resume)
    SNAPSHOT = "snapshot"
    #: new events and the current records of their runs
    EVENTS = "events"
    #: every run of the tree has finished and every event was delivered; the stream ends
    END = "end"


@dataclass(frozen=True, slots=True)
class TraceUpdate:
    """One step of a feed: resume after ``cursor`` to get everything that follows."""

    kind: UpdateKind
    cursor: EventCursor
    events: list[RunEvent] = field(default_factory=list)
    runs: list[RunRecord] = field(default_factory=list)
    #: snapshot only: the tree has more than ``TREE_LIMIT`` runs and was cut
    truncated: bool = False


class SubscriptionEnded(Exception):
    """A live source stopped: the subscriber was too slow (``dropped``) or the server stops."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class LiveSource(Protocol):
    """Where a reader waits for more: batches read by someone else, or wake-ups."""

    async def next_batch(self, retry: float | None) -> FeedBatch | None:
        """The next batch, or ``None`` when the reader should catch up from the database.

        ``retry``: the reader's last read stopped at an event that was not final yet; read
        again after this many seconds even if nothing else happens. Raises
        ``SubscriptionEnded``.
        """


class FeedSource(Feed, Insights, Protocol):
    """What a feed reader reads: the feed, and the run reads that tell a tree's state."""


class FeedReader:
    """One consumer's position in the feed (all of it, or one tree's events)."""

    def __init__(
        self,
        backend: FeedSource,
        root_run_id: int | None,
        cursor: EventCursor,
        *,
        grace: float = DEFAULT_GRACE,
        page_size: int = PAGE_SIZE,
    ) -> None:
        self.backend = backend
        self.root_run_id = root_run_id
        self.cursor = cursor
        self.grace = grace
        self.page_size = page_size
        #: the last read stopped at a visible event that is not final yet
        self.held_back = False
        self._retry = RETRY_MIN
        self._newest_read = 0  # read clock when the newest records handed out were read

    async def read_runs(self, run_ids: Sequence[int]) -> list[RunRecord]:
        """Current records (with versions) of these runs, counted as handed out."""
        runs = await self.backend.get_runs_by_ids(sorted(set(run_ids)))
        self._newest_read = tick()
        return runs

    async def read_tree(self) -> tuple[list[RunRecord], bool]:
        """The tree's runs (at most ``TREE_LIMIT``) and whether it was cut."""
        assert self.root_run_id is not None
        runs = await self.backend.get_tree(self.root_run_id, TREE_LIMIT + 1)
        self._newest_read = tick()
        return runs[:TREE_LIMIT], len(runs) > TREE_LIMIT

    async def read_page(self) -> list[RunEvent]:
        """The next final events after the cursor (at most a page); advances the cursor."""
        page = await self.backend.read_feed(
            self.cursor, self.root_run_id, self.page_size, self.grace
        )
        self.held_back = page.held_back
        if page.events:
            self.cursor = page.events[-1].cursor
        if page.events or not page.held_back:
            self._retry = RETRY_MIN
        else:
            self._retry = min(self._retry * 1.5, RETRY_MAX)
        return page.events

    @property
    def retry_delay(self) -> float | None:
        """When held back: how soon to read again (see ``RETRY_MIN``); else ``None``."""
        return self._retry if self.held_back else None

    async def read_batch(self) -> FeedBatch | None:
        """The next page of final events with the records of their runs (for fanning out)."""
        start = self.cursor
        events = await self.read_page()
        if not events:
            return None
        started = tick()
        runs = await self.backend.get_runs_by_ids(sorted({e.run_id for e in events}))
        return FeedBatch(start, self.cursor, events, runs, started, tick())

    def handed_out(self) -> None:
        """Records read by the caller just now were handed out (keeps them monotone)."""
        self._newest_read = tick()

    async def catch_up(self) -> AsyncGenerator[TraceUpdate, None]:
        """Updates for everything final after the cursor, a page at a time."""
        while True:
            events = await self.read_page()
            if events:
                runs = await self.read_runs([e.run_id for e in events])
                yield TraceUpdate(UpdateKind.EVENTS, self.cursor, events, runs)
            if len(events) < self.page_size:
                return

    async def accept(self, batch: FeedBatch) -> TraceUpdate | None:
        """The part of a batch after the cursor, as an update (``None`` when nothing is new).

        Call it only when the reader is at ``batch.start`` or later (catch up first): the
        cursor then moves to ``batch.end``, since every event of this reader's feed up to
        there was delivered.
        """
        events = [e for e in batch.events if e.cursor > self.cursor]
        self.cursor = max(self.cursor, batch.end)
        if not events:
            return None
        if batch.runs_started > self._newest_read:
            touched = {e.run_id for e in events}
            runs = [r for r in batch.runs if r.id in touched]
            self._newest_read = batch.runs_finished
        else:  # read before records we already handed out: they could be older
            runs = await self.read_runs([e.run_id for e in events])
        return TraceUpdate(UpdateKind.EVENTS, self.cursor, events, runs)

    async def has_active_runs(self) -> bool:
        assert self.root_run_id is not None
        for status in (RunStatus.PENDING, RunStatus.RUNNING):
            where = RunFilter(root_run_id=self.root_run_id, status=status, limit=1)
            if await self.backend.get_runs(where):
                return True
        return False

    async def undelivered(self) -> bool:
        """Whether a visible event after the cursor exists, final or not."""
        page = await self.backend.read_feed(self.cursor, self.root_run_id, 1, 0.0)
        return bool(page.events)


async def resolve_root(backend: Insights, run_id: int) -> int:
    """The root of the tree a run belongs to; raises ``RunNotFound`` (``InvalidArguments``
    for an id that is not an integer)."""
    run = await backend.get_run(inputs.run_id(run_id))
    if run is None:
        raise RunNotFound(run_id)
    return run.root_run_id or run.id


async def trace_updates(
    backend: FeedSource,
    root_run_id: int,
    source: LiveSource,
    *,
    after: EventCursor | None = None,
    grace: float = DEFAULT_GRACE,
) -> AsyncGenerator[TraceUpdate, None]:
    """The trace stream of one tree: a snapshot (unless resuming ``after`` a cursor), then
    every event as it becomes final, then ``END`` once every run has finished and every
    event was delivered. ``END`` carries the final records of the whole tree.
    """
    reader = FeedReader(backend, root_run_id, after or EventCursor(), grace=grace)
    if after is None:
        # events first: the records read afterwards include every run they mention
        events = await reader.read_page()
        runs, truncated = await reader.read_tree()
        yield TraceUpdate(UpdateKind.SNAPSHOT, reader.cursor, events, runs, truncated)
        if len(events) == reader.page_size:
            async for update in reader.catch_up():
                yield update
    else:
        runs = await reader.read_runs([root_run_id])
        async for update in reader.catch_up():
            yield update
    root = next((r for r in runs if r.id == root_run_id), None)
    # The tree can only be finished once its root is: check at the start, then whenever a
    # run finishes under a finished root; once finished, until the last events are through.
    check = root is None or root.status.is_terminal
    while True:
        if check:
            check = not await reader.has_active_runs()
            if check and not await reader.undelivered():
                final, _ = await reader.read_tree()
                yield TraceUpdate(UpdateKind.END, reader.cursor, [], final)
                return
        async for update in _next_updates(reader, source):
            root = next((r for r in update.runs if r.id == root_run_id), root)
            finished_one = any(e.kind in TERMINAL_KINDS for e in update.events)
            check = check or (finished_one and (root is None or root.status.is_terminal))
            yield update


async def feed_updates(
    backend: FeedSource,
    source: LiveSource,
    *,
    after: EventCursor | None,
    snapshot: Callable[[], Awaitable[list[RunRecord]]] | None = None,
    grace: float = DEFAULT_GRACE,
) -> AsyncGenerator[TraceUpdate, None]:
    """The global feed, forever (the dashboard's run table): after a cursor, or from now
    with a ``SNAPSHOT`` of the runs ``snapshot`` reads (read after the position is taken,
    so no change between the two is lost)."""
    reader = FeedReader(backend, None, after or EventCursor(), grace=grace)
    if after is None:
        reader.cursor = await backend.feed_position(grace)
        runs = await snapshot() if snapshot is not None else []
        reader.handed_out()
        yield TraceUpdate(UpdateKind.SNAPSHOT, reader.cursor, [], runs)
    async for update in reader.catch_up():
        yield update
    while True:
        async for update in _next_updates(reader, source):
            yield update


async def _next_updates(
    reader: FeedReader, source: LiveSource
) -> AsyncGenerator[TraceUpdate, None]:
    """Wait for the source once; yield what it brought, catching up first where needed."""
    batch = await source.next_batch(reader.retry_delay)
    if batch is None or batch.start > reader.cursor:
        async for update in reader.catch_up():
            yield update
    if batch is not None:
        accepted = await reader.accept(batch)
        if accepted is not None:
            yield accepted


class NotifySource:
    """A ``LiveSource`` without a broadcaster: wakes on the backend's notifications (or a
    poll, or soon after a held-back read) and lets the reader catch up. ``Client.watch``
    uses it; use it as an async context manager."""

    def __init__(self, backend: Notifier, poll_interval: float = 1.0) -> None:
        self._backend = backend
        self._poll_interval = poll_interval
        self._wake = asyncio.Event()

    async def __aenter__(self) -> NotifySource:
        self._backend.add_listener(self._on_notification)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._backend.remove_listener(self._on_notification)

    def _on_notification(self, notification: Notification) -> None:
        if notification.events or notification.reconnected:
            self._wake.set()

    async def next_batch(self, retry: float | None) -> FeedBatch | None:
        timeout = self._poll_interval if retry is None else retry
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
        self._wake.clear()
        return None
