"""Schedules, ``explain`` facts and job summaries of ``MemoryBackend``.

Each method does what its query in queries.sql does (``upsert_schedules``, ``fire_schedule``,
``run_facts``, ``job_summary`` ...), in one backend call, so it is atomic like one statement.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from asyncjobs.backends.base import FireResult, Notification, ScheduleFire
from asyncjobs.backends.memory_tables import Row, ScheduleRow, Tables, check_name, strip_nulls
from asyncjobs.backends.memory_tables import timestamp as json_timestamp
from asyncjobs.codec import loads
from asyncjobs.explain import RunFacts, SlotHolder
from asyncjobs.runs import ACTIVE_STATUSES, RunStatus, Trigger
from asyncjobs.schedules import ScheduleDefinition, ScheduleState
from asyncjobs.summary import JobSummary, LastSuccess


class _Base(Protocol):
    @property
    def _tables(self) -> Tables: ...

    def now(self) -> datetime: ...

    async def _checkpoint(self) -> None: ...

    def _notify(self, notification: Notification) -> None: ...


class MemorySchedules:
    """Mixed into ``MemoryBackend``; implements schedules and insight of ``Backend``."""

    # ------------------------------------------------------------------ schedules

    async def register_schedules(
        self: _Base, schedules: Sequence[ScheduleDefinition], jobs: Sequence[str]
    ) -> None:
        await self._checkpoint()
        tables, now = self._tables, self.now()
        ordered = sorted(schedules, key=lambda d: d.name)
        for definition in ordered:
            check_name(definition.name, "schedule")
            for old in definition.previous_names:
                if old in tables.schedules and definition.name not in tables.schedules:
                    tables.schedules[definition.name] = tables.schedules.pop(old)
        for definition in ordered:
            _upsert(tables, definition, now)
        declared = {d.name for d in ordered}
        for name, row in list(tables.schedules.items()):
            if row.job in jobs and name not in declared:
                del tables.schedules[name]

    async def get_schedules(
        self: _Base, jobs: Sequence[str] | None
    ) -> tuple[datetime, list[ScheduleState]]:
        await self._checkpoint()
        tables = self._tables
        states = [
            _state(tables, name, row)
            for name, row in sorted(tables.schedules.items())
            if jobs is None or row.job in jobs
        ]
        return self.now(), states

    def _set_schedule_enabled(self: _Base, name: str, enabled: bool) -> bool:
        row = self._tables.schedules.get(name)
        if row is None:
            return False
        if enabled and not row.enabled:  # restart the timing: no catch-up
            row.anchor_at, row.next_fire_at = self.now(), None
        row.enabled = enabled
        return True

    async def fire_schedule(self: _Base, fire: ScheduleFire) -> FireResult:
        await self._checkpoint()
        tables, now = self._tables, self.now()
        row = tables.schedules.get(fire.schedule)
        if row is None or not row.enabled:
            return FireResult(False, ())
        if fire.expected is not None:
            if (row.next_fire_at, row.anchor_at) != fire.expected:
                return FireResult(False, ())
            row.next_fire_at = fire.next_fire_at
        else:
            row.next_fire_at = max(row.next_fire_at or fire.next_fire_at, fire.next_fire_at)
        if fire.fires:
            latest = max(fire.fires)
            row.last_fire_at = max(row.last_fire_at or latest, latest)
        inserted = [run for at in sorted(fire.fires) if (run := _fire_one(tables, fire, at, now))]
        if inserted:
            self._notify(Notification(queues=frozenset({fire.queue}), events=True))
        return FireResult(True, tuple(run.id for run in inserted))

    # ------------------------------------------------------------------ insight

    async def run_facts(self: _Base, run_id: int, worker_ttl_seconds: float) -> RunFacts | None:
        await self._checkpoint()
        tables, now = self._tables, self.now()
        row = tables.runs.get(run_id)
        if row is None:
            return None
        job, queue = tables.jobs.get(row.job), tables.queues.get(row.queue)
        running = [tables.runs[i] for i in sorted(tables.running)]
        alive = [
            (worker_id, w)
            for worker_id, w in tables.workers.items()
            if w.heartbeat_at > now - timedelta(seconds=worker_ttl_seconds)
        ]
        facts = RunFacts(
            run=row.record(),
            now=now,
            job_known=job is not None,
            job_enabled=job is None or job.enabled,
            job_limit=None if job is None else job.max_concurrency,
            job_running=sum(r.job == row.job for r in running),
            queue_enabled=queue is None or queue.enabled,
            queue_limit=None if queue is None else queue.max_concurrency,
            queue_running=sum(r.queue == row.queue for r in running),
            queue_workers=sum(row.queue in w.queues for _, w in alive),
            job_workers=sum(row.queue in w.queues and row.job in w.jobs for _, w in alive),
            target_alive=any(worker_id == row.target_worker for worker_id, _ in alive),
            ahead=sum(_ahead(other, row, now) for other in map(tables.runs.get, tables.pending)),
            active_children=_active_children(tables, row),
        )
        if row.status is not RunStatus.PENDING:
            return facts
        holders = sorted(running, key=lambda r: (r.started_at or now, r.id))
        return _with_holders(tables, facts, holders)

    async def job_summary(self: _Base, jobs: Sequence[str], window_seconds: float) -> JobSummary:
        await self._checkpoint()
        tables, now = self._tables, self.now()
        window = timedelta(seconds=window_seconds)
        mine = [r for r in tables.runs.values() if r.job in jobs]
        recent = [r for r in mine if r.created_at >= now - window]
        counts = dict.fromkeys(RunStatus, 0)
        for run in recent:
            counts[run.status] += 1
        durations = sorted(
            (r.finished_at - r.started_at).total_seconds()
            for r in recent
            if r.status in (RunStatus.SUCCEEDED, RunStatus.FAILED)
            and r.started_at is not None
            and r.finished_at is not None
        )
        succeeded = [r for r in mine if r.status is RunStatus.SUCCEEDED and r.finished_at]
        last = max(succeeded, key=lambda r: r.finished_at or now, default=None)
        return JobSummary(
            jobs[0],
            window,
            now,
            counts,
            _percentile_cont(durations, 0.5),
            _percentile_cont(durations, 0.95),
            None if last is None else _last_success(last),
        )


# ---------------------------------------------------------------------- helpers


def _upsert(tables: Tables, definition: ScheduleDefinition, now: datetime) -> None:
    row = tables.schedules.get(definition.name)
    timing = (definition.cron, definition.every, definition.initial_delay, definition.timezone)
    if row is None:
        row = ScheduleRow(
            definition.job,
            *timing,
            definition.args_json,
            definition.misfire,
            definition.all_nodes,
            anchor_at=now,
        )
        tables.schedules[definition.name] = row
        return
    if (row.cron, row.every, row.initial_delay, row.timezone) != timing:
        row.anchor_at, row.next_fire_at = now, None
    row.cron, row.every, row.initial_delay, row.timezone = timing
    row.job, row.misfire, row.all_nodes = definition.job, definition.misfire, definition.all_nodes
    row.args = definition.args_json


def _state(tables: Tables, name: str, row: ScheduleRow) -> ScheduleState:
    job = tables.jobs.get(row.job)
    queue = tables.queues.get(job.queue) if job is not None else None
    return ScheduleState(
        name=name,
        job=row.job,
        cron=row.cron,
        every=row.every,
        initial_delay=row.initial_delay,
        timezone=row.timezone,
        args=loads(row.args),
        misfire=row.misfire,  # type: ignore[arg-type]  # checked when it was declared
        all_nodes=row.all_nodes,
        enabled=row.enabled,
        anchor_at=row.anchor_at,
        next_fire_at=row.next_fire_at,
        last_fire_at=row.last_fire_at,
        job_enabled=job is None or job.enabled,
        queue_enabled=queue is None or queue.enabled,
    )


def _fire_one(tables: Tables, fire: ScheduleFire, at: datetime, now: datetime) -> Row | None:
    """Insert one tick's run unless the unique (schedule, tick, worker) key is taken."""
    run_id = tables.next_run_id()
    key = (fire.schedule, at, fire.target_worker)
    if tables.schedule_fires.get(key) in tables.runs:
        return None
    row = Row(
        id=run_id,
        job=fire.job,
        queue=fire.queue,
        args=fire.args_json,
        status=RunStatus.PENDING,
        trigger=Trigger.SCHEDULE,
        priority=fire.priority,
        max_attempts=fire.max_attempts,
        created_at=now,
        not_before=now,
        root_run_id=run_id,
        not_after=None if fire.expires is None else at + fire.expires,
        schedule=fire.schedule,
        scheduled_at=at,
        target_worker=fire.target_worker,
    )
    tables.insert(row)
    tables.schedule_fires[key] = run_id
    data: dict[str, Any] = {
        "job": row.job,
        "queue": row.queue,
        "trigger": row.trigger.value,
        "schedule": row.schedule,
        "scheduled_at": json_timestamp(at),
        "target_worker": row.target_worker,
    }
    tables.add_event(row, now, "pending", strip_nulls(data))
    return row


def _ahead(other: Row | None, row: Row, now: datetime) -> bool:
    return (
        other is not None
        and other.id != row.id
        and other.queue == row.queue
        and other.not_before <= now
        and (other.not_after is None or other.not_after > now)
        and (other.priority, -other.id) > (row.priority, -row.id)
    )


def _active_children(tables: Tables, row: Row) -> tuple[int, ...]:
    return tuple(
        sorted(
            r.id
            for r in tables.runs.values()
            if r.parent_run_id == row.id
            and r.root_run_id == row.root_run_id
            and r.status in ACTIVE_STATUSES
        )
    )


def _with_holders(tables: Tables, facts: RunFacts, running: list[Row]) -> RunFacts:
    run = facts.run

    def holder(r: Row) -> SlotHolder:
        return SlotHolder(
            r.id, r.job, r.queue, r.worker_id, r.started_at, _active_children(tables, r)
        )

    job_holders = tuple(holder(r) for r in running if r.job == run.job)[:100]
    queue_holders = tuple(holder(r) for r in running if r.queue == run.queue)[:100]
    return replace(
        facts,
        job_holders=job_holders if facts.job_full else (),
        queue_holders=queue_holders if facts.queue_full else (),
    )


def _percentile_cont(values: list[float], fraction: float) -> float | None:
    """PostgreSQL's ``percentile_cont``: linear interpolation between the closest ranks."""
    if not values:
        return None
    position = fraction * (len(values) - 1)
    low, high = math.floor(position), math.ceil(position)
    return values[low] + (values[high] - values[low]) * (position - low)


def _last_success(row: Row) -> LastSuccess:
    assert row.finished_at is not None
    duration = None
    if row.started_at is not None:
        duration = (row.finished_at - row.started_at).total_seconds()
    return LastSuccess(row.id, row.finished_at, duration)
