"""The storage contract, at the level of queue operations.

``PostgresBackend`` implements it; PostgreSQL is the one definition of queue behaviour (users'
own tests run on a throwaway real database, see ``asyncjobs.testing``). The protocol lets the
client, worker and dashboard share one backend object and lets tests wrap one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol, runtime_checkable

from asyncjobs.activity import Activity, WorkerState
from asyncjobs.explain import RunFacts
from asyncjobs.gauges import ClusterGauges
from asyncjobs.rates import RateLimit
from asyncjobs.runs import EventCursor, RunEvent, RunRecord, RunStatus, Trigger
from asyncjobs.schedules import ScheduleDefinition, ScheduleState
from asyncjobs.summary import JobSummary


@dataclass(frozen=True, slots=True)
class NewRun:
    """A run to insert; ``args_json`` is already validated and encoded."""

    job: str
    queue: str
    args_json: str
    priority: int = 0
    not_before: datetime | None = None
    not_after: datetime | None = None
    dedup_id: str | None = None
    max_attempts: int = 1
    parent_run_id: int | None = None
    root_run_id: int | None = None
    trigger: Trigger = Trigger.USER
    max_restarts: int = 10
    #: the triggering span's propagation headers as a JSON object (asyncjobs/telemetry.py)
    trace_context: str | None = None
    #: a child's step within its parent (see ``asyncjobs.steps``); needs ``parent_run_id``
    step_key: str | None = None
    #: the argument holding the per-key limit's key, from the job's code; ``None``: the
    #: database reads the job's stored key field, if it has one (a trigger by name)
    key_field: str | None = None
    #: the key itself, computed by the job's key function (``asyncjobs.jobs.KeyLimit``)
    concurrency_key: str | None = None


@dataclass(frozen=True, slots=True)
class ScheduleFire:
    """Ticks of one schedule to fire as runs (see ``fire_schedule`` in sql/schedules.sql)."""

    schedule: str
    job: str
    queue: str
    args_json: str
    priority: int
    max_attempts: int
    fires: tuple[datetime, ...]
    #: the schedule's next tick after these fires
    next_fire_at: datetime
    #: compare-and-set: fire only if the stored (next_fire_at, anchor_at) still are these
    #: (cluster-wide schedules); ``None`` for an all_nodes copy, which compares nothing
    expected: tuple[datetime | None, datetime] | None
    #: an all_nodes copy: only this worker may claim the runs, which expire after ``expires``
    target_worker: str | None = None
    expires: timedelta | None = None
    max_restarts: int = 10
    #: the key the job's key function computed from the arguments (``None``: none, or the
    #: database reads the job's stored key field)
    concurrency_key: str | None = None


@dataclass(frozen=True, slots=True)
class FireResult:
    #: False when another scheduler advanced the schedule first (nothing was written)
    advanced: bool
    run_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Enqueued:
    """Outcome of one ``NewRun``: a new run, the active run that holds its dedup id, or the
    child already triggered at its step (then ``step_job`` names that child's job, which the
    caller compares with the one it asked for)."""

    run_id: int
    created: bool
    step_job: str | None = None


class ClaimBatch(list[RunRecord]):
    """The runs a claim took, and, when a rate limit kept runs waiting, how many seconds
    until it allows the next start (``wake_in``): the worker sleeps until then at most."""

    wake_in: float | None = None


@dataclass(frozen=True, slots=True)
class Completion:
    """What a worker reports about one attempt; fenced by ``(run_id, attempt, worker)``."""

    run_id: int
    attempt: int
    status: RunStatus
    result_json: str | None = None
    error: dict[str, Any] | None = None
    #: seconds until the next attempt; the run goes back to pending (trigger ``retry``)
    retry_in: float | None = None
    #: back to pending (trigger ``restart``, graceful shutdown); counts as neither a retry
    #: nor a restart
    handback: bool = False


@dataclass(frozen=True, slots=True)
class Heartbeat:
    #: False when the worker's row is gone (it was declared dead and swept)
    registered: bool
    kept: frozenset[int]
    cancel_requested: frozenset[int]


@dataclass(frozen=True, slots=True)
class SweepResult:
    restarted: int = 0
    failed: int = 0
    expired: int = 0
    workers_removed: int = 0
    #: a batch was full: more may be waiting, sweep again at once
    full: bool = False


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    id: str
    host: str
    pid: int
    queues: tuple[str, ...]
    jobs: tuple[str, ...]
    concurrency: int


@dataclass(frozen=True, slots=True)
class QueueDefinition:
    name: str
    max_concurrency: int | None
    rate_limit: RateLimit | None = None


@dataclass(frozen=True, slots=True)
class JobDefinition:
    name: str
    queue: str
    max_concurrency: int | None
    args_schema: dict[str, Any]
    #: the per-key limit (``asyncjobs.jobs.KeyLimit``): the key's argument and its limit
    key_field: str | None = None
    key_concurrency: int | None = None
    rate_limit: RateLimit | None = None
    #: at most so many starts per period per key
    key_rate_limit: RateLimit | None = None


@dataclass(frozen=True, slots=True)
class RunFilter:
    job: str | None = None
    status: RunStatus | None = None
    parent_run_id: int | None = None
    root_run_id: int | None = None
    trigger: Trigger | None = None
    before_id: int | None = None
    limit: int = 100
    #: created at or after / strictly before these times
    created_after: datetime | None = None
    created_before: datetime | None = None
    #: only runs that have no parent (the roots of trace trees)
    roots_only: bool = False


@dataclass(frozen=True, slots=True)
class Notification:
    """One wake-up from the database (a NOTIFY, or the listener's reconnect)."""

    #: queues that received runs ready to claim
    queues: frozenset[str] = frozenset()
    #: runs that reached a terminal state
    done: frozenset[int] = frozenset()
    #: too many runs finished to list; waiters must check
    many_done: bool = False
    #: running runs whose cancellation was requested
    cancel: frozenset[int] = frozenset()
    #: too many cancellations to list; workers must ask (a heartbeat answers it)
    cancel_many: bool = False
    #: too many queues to list; every claimer should look for work
    all_queues: bool = False
    #: new run events were written
    events: bool = False
    #: the listener reconnected: anything may have been missed, catch up by polling
    reconnected: bool = False
    #: the stored results (JSON values) of some runs among ``done`` that succeeded: a
    #: waiter of one of them needs no query (see ``asyncjobs.notify`` in sql/schema.sql)
    results: Mapping[int, Any] = field(default_factory=dict)


Listener = Callable[[Notification], None]
#: what ``Backend.set_enabled`` switches on and off
SwitchKind = Literal["job", "queue", "schedule"]


@dataclass(frozen=True, slots=True)
class FeedPage:
    """Events after a feed position, in feed order, that may be delivered now.

    ``held_back`` says that a later event is visible but not final yet (an older
    transaction is still running): read again soon, even without a notification.
    """

    events: list[RunEvent]
    held_back: bool


@dataclass(frozen=True, slots=True)
class QueueState:
    """A queue as stored: its limit and run-time switch."""

    name: str
    max_concurrency: int | None
    enabled: bool


@dataclass(frozen=True, slots=True)
class JobState:
    """A job as stored by the last worker that registered it."""

    name: str
    queue: str
    max_concurrency: int | None
    enabled: bool


@dataclass(frozen=True, slots=True)
class StoredJobRow:
    """A job row as a worker stored it, read to trigger the job by name without its code.

    ``args_schema`` is ``None`` when the row has not changed since the ``updated_at`` the
    caller already holds (see ``DefinitionStore.get_job_definition``)."""

    name: str
    queue: str
    updated_at: datetime
    args_schema: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class PruneResult:
    """What one ``prune`` call deleted."""

    trees: int = 0
    runs: int = 0
    events: int = 0


class Clock(Protocol):
    """A clock the backend passes as ``now`` to every time-dependent statement instead of
    the database's (``asyncjobs.testing.TestClock``): delays, deadlines, leases, retries and
    schedules then follow it."""

    def now(self) -> datetime:
        """The current time (aware)."""

    def on_move(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` each time the clock is moved; returns what unsubscribes it."""


class Notifier(Protocol):
    """The notifications of a store's changes (run state, new work, schedules, events)."""

    def add_listener(self, listener: Listener) -> None: ...

    def remove_listener(self, listener: Listener) -> None: ...


class QueueStore(Notifier, Protocol):
    """The queue: runs in, claimed, heartbeated, completed, swept, cancelled; workers and
    their events (the worker, waiters, the client's triggers)."""

    async def register_definitions(
        self, queues: Sequence[QueueDefinition], jobs: Sequence[JobDefinition]
    ) -> None: ...

    async def enqueue(
        self, runs: Sequence[NewRun], *, reject_duplicates: bool = False
    ) -> list[Enqueued]:
        """Insert runs in one round trip. A run whose ``(job, dedup_id)`` an active run holds
        is not inserted: its ``Enqueued`` carries the holder's id, or, with
        ``reject_duplicates``, ``DuplicateRun`` is raised and nothing at all is written.
        """

    async def release_step(self, parent_run_id: int, step_key: str) -> bool:
        """Clear the step key of the parent's child at ``step_key`` if that child ended
        without success, so a new child can be triggered at the step; False if none did."""

    async def claim(
        self,
        worker_id: str,
        queues: Sequence[str],
        jobs: Sequence[str],
        capacity: int,
        lease_seconds: float,
    ) -> list[RunRecord]: ...

    async def complete(self, worker_id: str, completions: Sequence[Completion]) -> set[int]:
        """Returns the run ids whose completion was accepted (the rest were fenced off)."""

    async def heartbeat(
        self, worker_id: str, runs: Sequence[tuple[int, int]], lease_seconds: float
    ) -> Heartbeat: ...

    async def sweep(self, worker_ttl_seconds: float) -> SweepResult: ...

    async def cancel(self, run_id: int, cascade: bool) -> list[tuple[int, RunStatus]]: ...

    async def add_events(
        self, worker_id: str, events: Sequence[tuple[int, int, str, dict[str, Any]]]
    ) -> int:
        """Store (run_id, attempt, kind, data) events of running runs; returns how many."""

    async def register_worker(self, info: WorkerInfo) -> None: ...

    async def unregister_worker(self, worker_id: str) -> None: ...

    async def terminal_runs(self, run_ids: Sequence[int]) -> list[RunRecord]: ...


class ScheduleStore(Notifier, Protocol):
    """Stored schedules and their firing (``asyncjobs.scheduler``)."""

    async def register_schedules(
        self, schedules: Sequence[ScheduleDefinition], jobs: Sequence[str]
    ) -> None:
        """Store the schedules declared in code: a stored schedule under one of a schedule's
        ``previous_names`` takes its name; a new schedule, or one whose timing changed, gets
        a fresh anchor (now) and no next tick yet; ``enabled`` is kept; stored schedules of
        ``jobs`` that are not declared any more are deleted."""

    async def get_schedules(
        self, jobs: Sequence[str] | None
    ) -> tuple[datetime, list[ScheduleState]]:
        """The database clock and the stored schedules of ``jobs`` (all when ``None``)."""

    async def fire_schedule(self, fire: ScheduleFire) -> FireResult:
        """Advance a schedule and insert its runs (trigger ``schedule``) atomically. A tick
        already fired (same schedule, tick and target worker) is never inserted twice."""


class Insights(Protocol):
    """Reads for people and metrics: runs, their events and facts, summaries, gauges, workers,
    activity and the stored definitions (the client's reads, ``explain``, ``/metrics``)."""

    async def get_run(self, run_id: int) -> RunRecord | None: ...

    async def get_runs(self, where: RunFilter) -> list[RunRecord]: ...

    async def get_events(self, run_id: int, after_id: int, limit: int) -> list[RunEvent]: ...

    async def run_facts(self, run_id: int, worker_ttl_seconds: float) -> RunFacts | None:
        """What ``explain`` needs about one run (``None`` when there is no such run)."""

    async def job_summary(self, jobs: Sequence[str], window_seconds: float) -> JobSummary:
        """Counts, durations and the last success of the runs of ``jobs`` (a job's name and
        aliases; the summary is named after the first)."""

    async def cluster_gauges(self, worker_ttl_seconds: float) -> ClusterGauges:
        """Pending, ready and running runs and limits by queue and by job, and the workers
        whose heartbeat is at most ``worker_ttl_seconds`` old, in one cheap read."""

    async def get_workers(self, worker_ttl_seconds: float) -> list[WorkerState]:
        """Registered workers, each alive when its heartbeat is at most that old."""

    async def activity(self, window_seconds: float) -> Activity:
        """Queue load now and the runs finished within the window (``Client.activity``)."""

    async def list_definitions(self) -> tuple[list[QueueState], list[JobState]]:
        """Every stored queue and job with its limit and ``enabled`` switch."""


class Feed(Notifier, Protocol):
    """The event feed in ``(xid, id)`` order and the versioned run reads that go with it
    (``asyncjobs.feed``, the dashboard's live views)."""

    async def read_feed(
        self, after: EventCursor, root_run_id: int | None, limit: int, grace_seconds: float
    ) -> FeedPage:
        """Up to ``limit`` events after ``after`` in ``(xid, id)`` order (of one tree when
        ``root_run_id`` is set), cut before the first one that is not final yet: final means
        every transaction older than the event's own has ended, or the event is older than
        ``grace_seconds`` (0: every visible event). See ``asyncjobs.feed``."""

    async def feed_position(self, grace_seconds: float) -> EventCursor:
        """The position of the last event that ``read_feed`` would deliver now."""

    async def get_runs_by_ids(self, run_ids: Sequence[int]) -> list[RunRecord]:
        """These runs (missing ones left out) with ``version`` set, in id order."""

    async def get_tree(self, root_run_id: int, limit: int) -> list[RunRecord]:
        """The first ``limit`` runs of one trace tree with ``version`` set, in id order."""


class Backend(QueueStore, ScheduleStore, Insights, Feed, Protocol):
    """Every port, with the connection's life and the operator's switches: what a client, a
    worker or a dashboard that owns its backend holds. Code that only uses part of it types
    against the narrowest port above."""

    def clock_now(self) -> datetime | None:
        """The test clock's time, or ``None`` when the database clock rules (production):
        a client computes ``not_before=timedelta(...)`` and retention cut-offs from it."""

    async def open(self) -> None:
        """Connect; checks the schema version (or migrates when asked).

        Reference counted: a client and a worker may share one backend and each opens it;
        every ``open`` is matched by one ``close``.
        """

    async def close(self) -> None:
        """Undo one ``open``; only the last one really closes. Extra calls do nothing."""

    async def migrate(self) -> int:
        """Apply missing migrations; returns the schema version."""

    async def set_enabled(self, kind: SwitchKind, name: str, enabled: bool) -> bool:
        """Switch a ``job``, ``queue`` or ``schedule`` on or off; False when it is unknown.
        Enabling a disabled schedule restarts its timing from now (no catch-up)."""

    async def prune(self, finished_before: datetime, max_trees: int) -> PruneResult:
        """Delete up to ``max_trees`` trace trees (runs and events) whose runs all finished
        before ``finished_before``; a tree with an active run is kept whole."""


@runtime_checkable
class DefinitionStore(Protocol):
    """Reading stored job definitions (a port of its own: only triggering by name needs it)."""

    async def get_job_definition(
        self, name: str, known_version: datetime | None
    ) -> StoredJobRow | None:
        """The job stored under ``name`` or an alias of it, or ``None``. Its schema is left
        out when ``known_version`` equals the row's ``updated_at``."""
