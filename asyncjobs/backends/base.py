"""The storage contract, at the level of queue operations.

``PostgresBackend`` is the real one; ``MemoryBackend`` implements the same contract in
process for users' own unit tests. One behavioural test suite runs against both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from asyncjobs.runs import RunEvent, RunRecord, RunStatus, Trigger


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


@dataclass(frozen=True, slots=True)
class Enqueued:
    """Outcome of one ``NewRun``: a new run, or the active run that holds its dedup id."""

    run_id: int
    created: bool


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
    #: back to pending without using up an attempt (graceful shutdown)
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


@dataclass(frozen=True, slots=True)
class JobDefinition:
    name: str
    queue: str
    max_concurrency: int | None
    args_schema: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RunFilter:
    job: str | None = None
    status: RunStatus | None = None
    parent_run_id: int | None = None
    root_run_id: int | None = None
    trigger: Trigger | None = None
    before_id: int | None = None
    limit: int = 100


@dataclass(frozen=True, slots=True)
class Notification:
    """One wake-up from the database (or the memory backend)."""

    #: queues that received runs ready to claim
    queues: frozenset[str] = frozenset()
    #: runs that reached a terminal state
    done: frozenset[int] = frozenset()
    #: too many runs finished to list; waiters must check
    many_done: bool = False
    #: running runs whose cancellation was requested
    cancel: frozenset[int] = frozenset()
    #: new run events were written
    events: bool = False
    #: the listener reconnected: anything may have been missed, catch up by polling
    reconnected: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


Listener = Callable[[Notification], None]


class Backend(Protocol):
    """Storage operations used by the client, the worker and the dashboard."""

    async def open(self) -> None:
        """Connect; checks the schema version (or migrates when asked)."""

    async def close(self) -> None: ...

    async def migrate(self) -> int:
        """Apply missing migrations; returns the schema version."""

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

    async def get_run(self, run_id: int) -> RunRecord | None: ...

    async def get_runs(self, where: RunFilter) -> list[RunRecord]: ...

    async def terminal_runs(self, run_ids: Sequence[int]) -> list[RunRecord]: ...

    async def get_events(self, run_id: int, after_id: int, limit: int) -> list[RunEvent]: ...

    async def set_enabled(self, kind: str, name: str, enabled: bool) -> bool: ...

    def add_listener(self, listener: Listener) -> None: ...

    def remove_listener(self, listener: Listener) -> None: ...
