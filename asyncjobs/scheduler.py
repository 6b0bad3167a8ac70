"""The scheduler loop: every worker runs one, and each tick still fires exactly once.

Each pass reads the stored schedules of the app's jobs together with the database clock, asks
``schedules.plan`` what is due, and fires it with one statement per schedule
(``fire_schedule`` in sql/schedules.sql). Two mechanisms keep a tick from firing twice when many
workers wake up for it at the same moment:

1. the statement moves the schedule from the ``next_fire_at`` this pass read to the next one
   (compare-and-set): one scheduler wins, the others change nothing and read again;
2. the runs it inserts carry ``(schedule, scheduled_at, target_worker)``, and a unique index
   on those columns makes the database itself refuse a second run for the same tick — even
   if a bug, a clock jump or a re-deploy let two schedulers believe they won.

``all_nodes`` schedules are fired by every worker for itself: it keeps its own cursor in
memory (starting at the first tick after it first sees the schedule, so a worker never
catches up on ticks from before it ran) and inserts a copy with ``target_worker`` set to its
own id, which only it can claim (``claim_runs`` skips copies for other workers). A copy its
worker did not start within max(one period, one minute) expires.

A schedule whose job or queue is disabled does not fire; its ticks count as missed, so when
the job is enabled again the misfire policy decides what catches up. A disabled schedule
does not fire either, and enabling it starts its timing afresh (no catch-up).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from asyncjobs.backends.base import Notification, ScheduleFire, ScheduleStore
from asyncjobs.codec import dumps
from asyncjobs.errors import DatabaseUnavailable, UnknownJob
from asyncjobs.schedules import FirePlan, ScheduleState, node_copy_ttl, plan, seconds_until

if TYPE_CHECKING:
    from asyncjobs.app import App
    from asyncjobs.jobs import Job

logger = logging.getLogger(__name__)


@dataclass
class SchedulerStats:
    """Counters of one worker's scheduler."""

    #: passes over the stored schedules
    passes: int = 0
    #: runs this scheduler inserted
    fired: int = 0
    #: passes that found another scheduler had advanced a schedule first
    lost_races: int = 0
    #: ticks a misfire policy dropped
    dropped: int = 0


class Scheduler:
    """Fires the schedules of ``app``'s jobs for worker ``worker_id``.

    ``max_idle`` bounds the sleep between passes, so a schedule enabled or changed elsewhere is
    noticed within that time. ``tick(now=...)`` runs one pass at a chosen moment (tests).
    """

    def __init__(
        self,
        app: App,
        backend: ScheduleStore,
        worker_id: str,
        queues: Sequence[str],
        *,
        max_idle: float = 1.0,
    ) -> None:
        self.app = app
        self.backend = backend
        self.worker_id = worker_id
        self.queues = frozenset(queues)
        self.max_idle = max_idle
        self.stats = SchedulerStats()
        # the job names a stored schedule may carry: current names and aliases
        self._job_names = sorted({n for j in app.jobs.values() for n in (j.name, *j.aliases)})
        # all_nodes schedules: name → (anchor_at it was computed for, this worker's next tick)
        self._cursors: dict[str, tuple[datetime, datetime]] = {}

    @property
    def needed(self) -> bool:
        """Whether the app declares any schedule (otherwise the loop is not started)."""
        return bool(self.app.schedules)

    async def register(self) -> None:
        """Store the app's schedules (on worker start; see ``ScheduleStore.register_schedules``)."""
        await self.backend.register_schedules(list(self.app.schedules.values()), self._job_names)

    async def run(self, until: asyncio.Event | None = None) -> None:
        """Pass after pass until ``until`` is set (the worker stops) or the task is cancelled;
        a database outage is logged once and waited out."""
        stop = until or asyncio.Event()
        # a listener reconnect (NOTIFYs may be lost) or a test clock moved: pass again now
        moved = asyncio.Event()

        def on_notification(notification: Notification) -> None:
            if notification.reconnected:
                moved.set()

        self.backend.add_listener(on_notification)
        try:
            await self._passes(stop, moved)
        finally:
            self.backend.remove_listener(on_notification)
        logger.info("scheduler of worker %s stopped: %s", self.worker_id, self.stats)

    async def _passes(self, stop: asyncio.Event, moved: asyncio.Event) -> None:
        outage = False
        while not stop.is_set():
            moved.clear()
            try:
                delay = await self.tick()
            except DatabaseUnavailable as exc:
                if not outage:
                    logger.warning("scheduler: database unavailable, will retry: %s", exc)
                    outage = True
                delay = self.max_idle
            else:
                if outage:
                    logger.warning("scheduler: database reachable again")
                    outage = False
            await _first_of(stop, moved, timeout=delay)

    async def tick(self, now: datetime | None = None) -> float:
        """One pass: fire what is due at ``now`` (default: the database clock).

        Returns the seconds until the next tick is due, at most ``max_idle``.
        """
        db_now, states = await self.backend.get_schedules(self._job_names)
        now = now or db_now
        self.stats.passes += 1
        wake = now + timedelta(seconds=self.max_idle)
        for state in states:
            due = await self._handle(state, now)
            if due is not None:
                wake = min(wake, due)
        # one millisecond late rather than early: a pass that wakes before the tick is wasted
        return seconds_until(wake, now) + 0.001

    async def _handle(self, state: ScheduleState, now: datetime) -> datetime | None:
        """Fire ``state`` if due; returns when it is due next (``None``: not this worker's)."""
        try:
            job = self.app.get_job(state.job)
        except UnknownJob:
            return None  # another app's job sharing the database
        if not state.enabled or state.paused:
            self._cursors.pop(state.name, None)
            return None
        if state.all_nodes:
            if job.queue not in self.queues:
                return None  # the copy would be for a worker that cannot claim it
            return await self._fire_node_copy(state, job, now)
        return await self._fire_cluster_wide(state, job, now)

    async def _fire_cluster_wide(
        self, state: ScheduleState, job: Job[Any, Any], now: datetime
    ) -> datetime:
        timing = state.timing()
        planned = plan(timing, state.next_fire_at, now, state.misfire)
        if not planned.fires and planned.next_fire_at == state.next_fire_at:
            return planned.next_fire_at  # nothing due, nothing to store
        fire = self._fire(state, job, planned, expected=(state.next_fire_at, state.anchor_at))
        result = await self.backend.fire_schedule(fire)
        if not result.advanced:
            self.stats.lost_races += 1
            return now  # someone else advanced it: read it again at once
        self._count(state, planned, len(result.run_ids))
        return planned.next_fire_at

    async def _fire_node_copy(
        self, state: ScheduleState, job: Job[Any, Any], now: datetime
    ) -> datetime:
        timing = state.timing()
        anchor, cursor = self._cursors.get(state.name, (None, None))
        if cursor is None or anchor != state.anchor_at:
            cursor = timing.after(now)  # a worker fires the ticks that come while it runs
            self._cursors[state.name] = (state.anchor_at, cursor)
            if state.next_fire_at is None:  # show the next tick in listings
                idle = FirePlan((), cursor)
                await self.backend.fire_schedule(self._fire(state, job, idle, expected=None))
            return cursor
        planned = plan(timing, cursor, now, state.misfire)
        if planned.fires:
            ttl = node_copy_ttl(timing, planned.fires[-1])
            fire = self._fire(state, job, planned, expected=None, ttl=ttl)
            result = await self.backend.fire_schedule(fire)
            self._count(state, planned, len(result.run_ids))
        self._cursors[state.name] = (state.anchor_at, planned.next_fire_at)
        return planned.next_fire_at

    def _fire(
        self,
        state: ScheduleState,
        job: Job[Any, Any],
        planned: FirePlan,
        *,
        expected: tuple[datetime | None, datetime] | None,
        ttl: timedelta | None = None,
    ) -> ScheduleFire:
        options = job.resolved_options()
        assert options.queue is not None and options.priority is not None
        return ScheduleFire(
            schedule=state.name,
            job=job.name,
            queue=options.queue,
            args_json=dumps(state.args),
            priority=options.priority,
            max_attempts=job.retry.max_attempts,
            max_restarts=job.max_restarts,
            fires=planned.fires,
            next_fire_at=planned.next_fire_at,
            expected=expected,
            target_worker=None if expected is not None else self.worker_id,
            expires=ttl,
            concurrency_key=job.concurrency_key_of(state.args),
        )

    def _count(self, state: ScheduleState, planned: FirePlan, inserted: int) -> None:
        self.stats.fired += inserted
        self.stats.dropped += planned.missed
        if planned.missed or len(planned.fires) > 1:
            logger.info(
                "schedule %s: %d missed tick(s) (misfire=%s): fired %d, dropped %d",
                state.name,
                planned.missed + len(planned.fires) - 1,
                state.misfire,
                len(planned.fires),
                planned.missed,
            )
        else:
            logger.debug("schedule %s fired %s", state.name, planned.fires)


async def _first_of(*events: asyncio.Event, timeout: float) -> None:
    """Until one of ``events`` is set or ``timeout`` seconds passed."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
