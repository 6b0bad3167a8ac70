"""The tables of ``MemoryBackend``: rows, indexes and the claim choice of ``asyncjobs.claim_runs``.

Everything here is synchronous and runs inside one backend call, so each backend call is
atomic the way one SQL statement is. JSON columns are kept as text, as PostgreSQL keeps them
outside the process: a record handed out is decoded afresh and cannot alias stored state.
"""

from __future__ import annotations

import math
import struct
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson

from asyncjobs.codec import dumps, has_nul_escape, loads
from asyncjobs.errors import DatabaseError, InvalidArguments
from asyncjobs.runs import ACTIVE_STATUSES, RunEvent, RunRecord, RunStatus, Trigger

#: The check constraints of ``schema.sql`` on names, with the messages
#: ``translate_errors`` gives them.
MAX_NAME_CHARS = 200


@dataclass(eq=False)
class Row:
    """One run, mutable; JSON columns hold JSON text."""

    id: int
    job: str
    queue: str
    args: str
    status: RunStatus
    trigger: Trigger
    priority: int
    max_attempts: int
    created_at: datetime
    not_before: datetime
    root_run_id: int
    not_after: datetime | None = None
    dedup_id: str | None = None
    parent_run_id: int | None = None
    attempt: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    worker_id: str | None = None
    lease_expires_at: datetime | None = None
    cancel_requested: bool = False
    result: str | None = None
    error: str | None = None
    errors: list[str] = field(default_factory=list)
    progress: float | None = None
    status_message: str | None = None
    schedule: str | None = None
    scheduled_at: datetime | None = None
    target_worker: str | None = None
    #: kept only so that the worker's retry count ends (this backend is being removed)
    retries: int = 0

    def record(self) -> RunRecord:
        return RunRecord(
            id=self.id,
            job=self.job,
            queue=self.queue,
            args=loads(self.args),
            status=self.status,
            trigger=self.trigger,
            priority=self.priority,
            attempt=self.attempt,
            retries=self.retries,
            max_attempts=self.max_attempts,
            created_at=self.created_at,
            not_before=self.not_before,
            not_after=self.not_after,
            dedup_id=self.dedup_id,
            parent_run_id=self.parent_run_id,
            root_run_id=self.root_run_id,
            started_at=self.started_at,
            finished_at=self.finished_at,
            worker_id=self.worker_id,
            lease_expires_at=self.lease_expires_at,
            cancel_requested=self.cancel_requested,
            result=None if self.result is None else loads(self.result),
            error=None if self.error is None else loads(self.error),
            errors=[loads(e) for e in self.errors],
            progress=self.progress,
            status_message=self.status_message,
            schedule=self.schedule,
            scheduled_at=self.scheduled_at,
            target_worker=self.target_worker,
        )

    @property
    def claimable_key(self) -> tuple[int, int]:
        """Claim order: highest priority first, then oldest."""
        return (-self.priority, self.id)


@dataclass
class QueueRow:
    max_concurrency: int | None
    enabled: bool = True


@dataclass
class JobRow:
    queue: str
    max_concurrency: int | None
    args_schema: str
    enabled: bool = True


@dataclass
class WorkerRow:
    heartbeat_at: datetime
    queues: tuple[str, ...] = ()
    jobs: tuple[str, ...] = ()


@dataclass
class ScheduleRow:
    """One row of ``asyncjobs.schedules``; ``args`` is JSON text."""

    job: str
    cron: str | None
    every: timedelta | None
    initial_delay: timedelta
    timezone: str
    args: str
    misfire: str
    all_nodes: bool
    anchor_at: datetime
    enabled: bool = True
    next_fire_at: datetime | None = None
    last_fire_at: datetime | None = None


@dataclass(frozen=True)
class EventRow:
    id: int
    run_id: int
    root_run_id: int
    at: datetime
    kind: str
    data: str

    def event(self) -> RunEvent:
        return RunEvent(
            self.id, self.run_id, self.root_run_id, self.at, self.kind, loads(self.data)
        )


class Tables:
    """Runs, events, definitions and workers, with the indexes the queries need."""

    def __init__(self) -> None:
        self.runs: dict[int, Row] = {}
        self.queues: dict[str, QueueRow] = {}
        self.jobs: dict[str, JobRow] = {}
        self.workers: dict[str, WorkerRow] = {}
        self.pending: set[int] = set()
        self.running: set[int] = set()
        #: the partial unique index: (job, dedup_id) of pending and running runs
        self.dedup: dict[tuple[str, str], int] = {}
        self.schedules: dict[str, ScheduleRow] = {}
        #: the unique index runs_schedule_fire_idx: (schedule, scheduled_at, target_worker)
        self.schedule_fires: dict[tuple[str, datetime, str | None], int] = {}
        self._events: dict[int, list[EventRow]] = {}
        self._last_run_id = 0
        self._last_event_id = 0

    # ------------------------------------------------------------------ runs

    def next_run_id(self) -> int:
        """Like a sequence: every id is used once, even by a row that is never written."""
        self._last_run_id += 1
        return self._last_run_id

    def insert(self, row: Row) -> None:
        self.runs[row.id] = row
        self.pending.add(row.id)
        if row.dedup_id is not None:
            self.dedup[(row.job, row.dedup_id)] = row.id

    def set_status(self, row: Row, status: RunStatus) -> None:
        """Change a run's status and keep the indexes in step."""
        for index, member in ((self.pending, RunStatus.PENDING), (self.running, RunStatus.RUNNING)):
            if status is member:
                index.add(row.id)
            else:
                index.discard(row.id)
        if row.dedup_id is not None and status not in ACTIVE_STATUSES:
            key = (row.job, row.dedup_id)
            if self.dedup.get(key) == row.id:
                del self.dedup[key]
        row.status = status

    def owned(self, run_id: int, attempt: int, worker_id: str) -> Row | None:
        """The fence of every worker write: the run is running this attempt for this worker."""
        row = self.runs.get(run_id)
        if row is None or row.status is not RunStatus.RUNNING:
            return None
        if row.attempt != attempt or row.worker_id != worker_id:
            return None
        return row

    def descendants(self, run_id: int) -> list[Row]:
        """The run and every run below it in its trace tree, whatever their status."""
        top = self.runs.get(run_id)
        if top is None:
            return []
        children: dict[int, list[Row]] = {}
        for row in self.runs.values():
            if row.root_run_id == top.root_run_id and row.parent_run_id is not None:
                children.setdefault(row.parent_run_id, []).append(row)
        found, stack = [], [top]
        while stack:
            row = stack.pop()
            found.append(row)
            stack.extend(children.get(row.id, ()))
        return found

    # ------------------------------------------------------------------ events

    def add_event(self, row: Row, at: datetime, kind: str, data: dict[str, Any] | str) -> int:
        self._last_event_id += 1
        text = data if isinstance(data, str) else dumps(data)
        event = EventRow(self._last_event_id, row.id, row.root_run_id, at, kind, text)
        self._events.setdefault(row.id, []).append(event)
        return event.id

    def events(self, run_id: int, after_id: int, limit: int) -> list[RunEvent]:
        rows = [e for e in self._events.get(run_id, ()) if e.id > after_id]
        return [e.event() for e in rows[: max(limit, 0)]]

    def all_events(self) -> list[EventRow]:
        """Every event in id order (the memory backend's feed order)."""
        return sorted((e for events in self._events.values() for e in events), key=_event_id)

    def last_event_id(self, run_id: int) -> int:
        events = self._events.get(run_id)
        return events[-1].id if events else 0

    def delete_tree(self, root_run_id: int) -> tuple[int, int]:
        """Delete the finished runs of one tree and their events; returns both counts."""
        doomed = [r for r in self.runs.values() if r.root_run_id == root_run_id]
        events = 0
        for row in doomed:
            del self.runs[row.id]
            events += len(self._events.pop(row.id, ()))
        return len(doomed), events

    # ------------------------------------------------------------------ claiming

    def claimable(
        self,
        queues: Sequence[str],
        jobs: Sequence[str],
        capacity: int,
        now: datetime,
        worker_id: str | None = None,
    ) -> list[Row]:
        """The runs ``asyncjobs.claim_runs`` would pick, best first (see schema.sql)."""
        served = set(jobs)
        running = [self.runs[i] for i in self.running]
        job_room = {
            name: max(0, job.max_concurrency - sum(r.job == name for r in running))
            for name, job in self.jobs.items()
            if name in served and job.max_concurrency is not None
        }
        blocked = {name for name, room in job_room.items() if room == 0}
        blocked |= {name for name, job in self.jobs.items() if name in served and not job.enabled}
        allowed = served - blocked
        ready = sorted(
            (r for r in map(self.runs.__getitem__, self.pending) if r.job in allowed),
            key=lambda r: r.claimable_key,
        )
        ready = [r for r in ready if _ready(r, now) and r.target_worker in (None, worker_id)]
        candidates: list[Row] = []
        for queue in dict.fromkeys(queues):
            room = min(self._queue_room(queue, running, capacity), capacity)
            candidates += [r for r in ready if r.queue == queue][: max(room, 0)]
        # a limited job takes at most its free slots, best runs first
        taken: Counter[str] = Counter()
        chosen = []
        for row in sorted(candidates, key=lambda r: r.claimable_key):
            taken[row.job] += 1
            if row.job not in job_room or taken[row.job] <= job_room[row.job]:
                chosen.append(row)
        return chosen[: max(capacity, 0)]

    def freed_queues(self, rows: Iterable[Row]) -> frozenset[str]:
        """Queues where these runs left a slot under a job or queue limit: a worker waiting
        for that slot may claim again now (``freed`` in ``complete_runs``)."""
        return frozenset(
            row.queue
            for row in rows
            if _limited(self.jobs.get(row.job)) or _limited(self.queues.get(row.queue))
        )

    def _queue_room(self, name: str, running: Iterable[Row], capacity: int) -> int:
        queue = self.queues.get(name)
        if queue is not None and not queue.enabled:
            return 0
        if queue is None or queue.max_concurrency is None:
            return capacity
        return max(0, queue.max_concurrency - sum(r.queue == name for r in running))


def _event_id(event: EventRow) -> int:
    return event.id


def _limited(definition: JobRow | QueueRow | None) -> bool:
    return definition is not None and definition.max_concurrency is not None


def _ready(row: Row, now: datetime) -> bool:
    return row.not_before <= now and (row.not_after is None or row.not_after > now)


# ---------------------------------------------------------------------- column checks


def check_name(value: str, what: str) -> None:
    """The ``*_check`` constraints on job and queue names."""
    if not value or len(value) > MAX_NAME_CHARS:
        raise InvalidArguments(f"{what} name must be 1 to {MAX_NAME_CHARS} characters")


def check_dedup_id(value: str | None) -> None:
    if value is not None and not 1 <= len(value) <= MAX_NAME_CHARS:
        raise InvalidArguments(f"dedup_id must be 1 to {MAX_NAME_CHARS} characters")


def check_smallint(value: int, what: str) -> None:
    if not -32768 <= value <= 32767:
        raise DatabaseError(f"NumericValueOutOfRangeError: {what} {value} is out of range")


def jsonb(text: str) -> str:
    """Refuse what a ``jsonb`` column refuses: text that is not JSON, and ``\\u0000``."""
    try:
        loads(text)
    except orjson.JSONDecodeError as exc:
        raise DatabaseError(f"InvalidTextRepresentationError: not JSON: {exc}") from exc
    if has_nul_escape(text):
        raise DatabaseError("UntranslatableCharacterError: \\u0000 cannot be stored in jsonb")
    return text


def real(value: float) -> float:
    """A ``real`` (float4) column rounds to single precision."""
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise DatabaseError("CheckViolationError: progress must be between 0 and 1")
    rounded: float = struct.unpack("f", struct.pack("f", value))[0]
    return rounded


def strip_nulls(data: dict[str, Any]) -> dict[str, Any]:
    """``jsonb_strip_nulls``: drop null-valued object fields, at every depth."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if v is not None}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    stripped: dict[str, Any] = strip(data)
    return stripped


def timestamp(value: datetime) -> str:
    """A timestamptz as ``jsonb_build_object`` writes it."""
    return value.isoformat()
