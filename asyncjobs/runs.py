"""Run records: what the database knows about one execution of a job."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from asyncjobs.rules import BIGINT_MAX


class RunStatus(enum.StrEnum):
    """Where a run is in its life. ``pending → running → one of the terminal states``."""

    #: waiting to be claimed (new, delayed by ``not_before``, or waiting for a retry)
    PENDING = "pending"
    #: claimed by a worker, which holds a lease on it
    RUNNING = "running"
    #: the job returned; ``result`` holds its value
    SUCCEEDED = "succeeded"
    #: the job raised and no attempts are left; ``error`` holds the last error
    FAILED = "failed"
    #: cancelled by ``Client.cancel`` before it finished
    CANCELLED = "cancelled"
    #: ``not_after`` passed before any worker started it
    EXPIRED = "expired"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.EXPIRED}
)
ACTIVE_STATUSES = frozenset({RunStatus.PENDING, RunStatus.RUNNING})


class Trigger(enum.StrEnum):
    """Why a run (or its current attempt) exists."""

    #: triggered by application code through a client
    USER = "user"
    #: triggered through the HTTP API / dashboard
    API = "api"
    #: fired by a schedule
    SCHEDULE = "schedule"
    #: a new attempt after the previous one failed
    RETRY = "retry"
    #: taken back from a worker that vanished (lease expired), or handed back by a worker
    #: shutting down; neither uses up one of the job's retries
    RESTART = "restart"
    #: triggered by another run (``parent_run_id`` is set)
    CHILD = "child"


@dataclass(frozen=True, slots=True)
class RunRecord:
    """A snapshot of one run as stored. ``result`` / ``error`` are decoded JSON."""

    id: int
    job: str
    queue: str
    args: dict[str, Any]
    status: RunStatus
    trigger: Trigger
    priority: int
    attempt: int
    max_attempts: int
    created_at: datetime
    not_before: datetime
    not_after: datetime | None = None
    dedup_id: str | None = None
    parent_run_id: int | None = None
    root_run_id: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    worker_id: str | None = None
    lease_expires_at: datetime | None = None
    cancel_requested: bool = False
    result: Any = None
    error: dict[str, Any] | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    progress: float | None = None
    status_message: str | None = None
    #: the schedule that fired this run, and the tick it fired for
    schedule: str | None = None
    scheduled_at: datetime | None = None
    #: an ``all_nodes`` copy: only this worker may claim it
    target_worker: str | None = None
    #: attempts that failed and were retried (at most ``max_attempts - 1``, the job's
    #: ``retries``); ``attempt`` counts every claim: retries, restarts and hand-backs too
    retries: int = 0
    #: times the run was taken back from a worker that vanished; past ``max_restarts`` the
    #: run fails with ``LeaseExpired``
    restarts: int = 0
    max_restarts: int = 10
    #: the OpenTelemetry context of the span that triggered it (propagator headers, e.g.
    #: ``traceparent``), or ``None``; see asyncjobs/telemetry.py
    trace_context: dict[str, str] | None = None
    #: a child's step among its parent's child triggers (``asyncjobs.steps``): a retried
    #: parent gets this run back instead of triggering the step again
    step_key: str | None = None
    #: the value of its job's ``concurrency_key`` argument (``asyncjobs.jobs.KeyLimit``)
    concurrency_key: str | None = None
    #: the id of the run's latest event when this record was read, where the read asked for
    #: it (0 otherwise): of two records of one run, the one with the larger version is newer
    version: int = 0

    @property
    def duration(self) -> float | None:
        """Seconds from start to finish, once both are known."""
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


@dataclass(frozen=True, slots=True)
class RunEvent:
    """One row of ``run_events``: a state change, progress update or log line."""

    id: int
    run_id: int
    root_run_id: int
    at: datetime
    kind: str
    data: dict[str, Any]
    #: the writing transaction's id (``pg_current_xact_id()``); with ``id`` it orders the feed
    xid: int = 0

    @property
    def cursor(self) -> EventCursor:
        """This event's position in the event feed."""
        return EventCursor(self.xid, self.id)


@dataclass(frozen=True, slots=True)
class RunPage:
    """One page of ``Client.get_runs``; pass ``next_cursor`` to get the next one."""

    runs: list[RunRecord]
    next_cursor: int | None


@dataclass(frozen=True, order=True, slots=True)
class EventCursor:
    """A position in the event feed: events are ordered by ``(xid, id)``, not by ``id`` alone.

    An event id is taken when the row is inserted, but becomes visible only when its
    transaction commits, so "after id N" can skip an event with a smaller id that commits
    later. Readers deliver an event only once every transaction older than its own has ended
    (see ``asyncjobs.feed``), which makes ``(xid, id)`` an order in which nothing is ever
    inserted behind a delivered position. Written as ``"<xid>-<id>"`` (the SSE event id).
    """

    xid: int = 0
    id: int = 0

    def __str__(self) -> str:
        return f"{self.xid}-{self.id}"

    @classmethod
    def parse(cls, text: str) -> EventCursor:
        """``"<xid>-<id>"`` → cursor; raises ``ValueError`` on anything else."""
        xid, sep, event_id = text.strip().partition("-")
        if not sep or not xid.isdigit() or not event_id.isdigit() or len(text) > 41:
            raise ValueError(f"not an event cursor: {text[:50]!r}")
        cursor = cls(int(xid), int(event_id))
        # xid8 is unsigned 64-bit, an event id a bigint: no stored event lies beyond
        if cursor.xid >= 2**64 or cursor.id > BIGINT_MAX:
            raise ValueError(f"not an event cursor (out of range): {text[:50]!r}")
        return cursor
