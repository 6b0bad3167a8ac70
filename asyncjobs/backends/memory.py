"""In-process backend for unit tests of your own jobs: no database, same behaviour.

``MemoryBackend`` implements the ``Backend`` protocol the way ``PostgresBackend`` and its SQL
do, and the same behavioural test suite runs against both: ids count up from 1, runs are
claimed by priority then age under the same per-job and per-queue limits, dedup ids, fenced
completions, retries, leases, sweeps, cancellation and run events work alike, and listeners
get the same ``Notification`` wake-ups (delivered with ``loop.call_soon``, never inside the
caller's stack, as a NOTIFY arrives from outside). Each call is atomic, like one statement.

Time comes from ``clock``, a monotonic seconds counter (``time.monotonic`` by default), so a
test can move time on (``asyncjobs.testing.ManualClock``) to pass a ``not_before``, a
``not_after`` or a lease. ``now()`` is the backend's "database clock".

The parts: ``memory_tables`` (rows, indexes, the claim choice), ``memory_runs`` (what each
statement does to one run), ``memory_feed`` and ``memory_schedules`` (the dashboard feed and
schedules); this module is the protocol surface, atomicity and notifications.

Share one instance between the worker and the client of a test; both open and close it, and
only the last close closes it::

    backend = MemoryBackend()
    async with app.worker(backend), app.client(backend) as client:
        assert await client.run_async(add, a=1, b=2) == 3
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from asyncjobs import sql
from asyncjobs.activity import Activity, WorkerState
from asyncjobs.backends import memory_runs
from asyncjobs.backends.base import (
    Backend,
    Completion,
    Enqueued,
    Heartbeat,
    JobDefinition,
    Listener,
    NewRun,
    Notification,
    QueueDefinition,
    RunFilter,
    SweepResult,
    WorkerInfo,
)
from asyncjobs.backends.memory_feed import MemoryFeed
from asyncjobs.backends.memory_schedules import MemorySchedules
from asyncjobs.backends.memory_tables import (
    JobRow,
    QueueRow,
    Row,
    Tables,
    WorkerRow,
    check_name,
    jsonb,
)
from asyncjobs.codec import dumps
from asyncjobs.errors import ConfigurationError, DatabaseError, DuplicateRun
from asyncjobs.gauges import ClusterGauges
from asyncjobs.runs import TERMINAL_STATUSES, RunEvent, RunRecord, RunStatus

logger = logging.getLogger(__name__)

#: Above this many finished runs, a completion notification says "many" instead of listing
#: them (as ``complete_runs`` does, to stay under PostgreSQL's NOTIFY payload limit).
MAX_DONE_LISTED = 400
#: Rows one sweep changes at most, per kind (``sweep`` in queries.sql).
SWEEP_BATCH = 500


class MemoryBackend(MemoryFeed, MemorySchedules):
    """The ``Backend`` protocol in process memory (see the module docstring)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._clock_origin = clock()
        self._wall_origin = datetime.now(UTC)
        self._tables = Tables()
        self._listeners: list[Listener] = []
        self._users = 0

    def __repr__(self) -> str:
        return f"<MemoryBackend runs={len(self._tables.runs)} open={self._users > 0}>"

    # this backend is being removed: the dashboard's cluster views need PostgreSQL
    async def get_workers(self, worker_ttl_seconds: float) -> list[WorkerState]:
        raise ConfigurationError("the in-memory backend does not list workers")

    async def activity(self, window_seconds: float) -> Activity:
        raise ConfigurationError("the in-memory backend does not report activity")

    def now(self) -> datetime:
        """The backend's clock: wall time at creation, moved on by ``clock``."""
        return self._wall_origin + timedelta(seconds=self._clock() - self._clock_origin)

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Reference counted: every ``open`` needs one ``close``; the data outlives both."""
        self._users += 1

    async def close(self) -> None:
        self._users = max(0, self._users - 1)

    async def migrate(self) -> int:
        await self._checkpoint()
        return sql.SCHEMA_VERSION

    async def _checkpoint(self) -> None:
        """Every call yields to the loop once, as a round trip to a database would."""
        if self._users == 0:
            raise RuntimeError("the backend is not open; use `async with` on the client/worker")
        await asyncio.sleep(0)

    # ------------------------------------------------------------------ notifications

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _notify(self, notification: Notification) -> None:
        asyncio.get_running_loop().call_soon(self._deliver, notification)

    def _deliver(self, notification: Notification) -> None:
        for listener in list(self._listeners):
            try:
                listener(notification)
            except Exception:
                logger.exception("a notification callback failed")

    def _notify_changes(
        self, changed: Sequence[Row], *, cap: bool = False, wake: frozenset[str] = frozenset()
    ) -> None:
        """Finished runs wake ``run_async`` waiters; runs back to pending (and ``wake``) wake
        the workers of their queues."""
        if not changed:
            return
        done = [r.id for r in changed if r.status is not RunStatus.PENDING]
        many = cap and len(done) > MAX_DONE_LISTED
        again = frozenset(r.queue for r in changed if r.status is RunStatus.PENDING)
        self._notify(
            Notification(
                done=frozenset(() if many else done),
                many_done=many,
                queues=again | wake,
                events=True,
            )
        )

    # ------------------------------------------------------------------ definitions

    async def register_definitions(
        self, queues: Sequence[QueueDefinition], jobs: Sequence[JobDefinition]
    ) -> None:
        await self._checkpoint()
        named = [("queue", q.name, q.max_concurrency) for q in queues]
        named += [("job", j.name, j.max_concurrency) for j in jobs]
        for kind, name, limit in named:
            check_name(name, kind)
            if limit is not None and limit < 1:
                raise DatabaseError(f"constraint {kind}s_max_concurrency_check violated")
        tables = self._tables
        for q in queues:
            queue = tables.queues.setdefault(q.name, QueueRow(q.max_concurrency))
            queue.max_concurrency = q.max_concurrency  # `enabled` stays as it is
        for j in jobs:
            enabled = tables.jobs[j.name].enabled if j.name in tables.jobs else True
            tables.jobs[j.name] = JobRow(j.queue, j.max_concurrency, dumps(j.args_schema), enabled)

    async def set_enabled(self, kind: str, name: str, enabled: bool) -> bool:
        await self._checkpoint()
        if kind == "schedule":
            return self._set_schedule_enabled(name, enabled)
        if kind not in ("job", "queue"):
            raise ValueError(f"kind must be 'job' or 'queue', not {kind!r}")
        tables = self._tables
        row = tables.jobs.get(name) if kind == "job" else tables.queues.get(name)
        if row is None:
            return False
        row.enabled = enabled
        return True

    # ------------------------------------------------------------------ runs

    async def enqueue(
        self, runs: Sequence[NewRun], *, reject_duplicates: bool = False
    ) -> list[Enqueued]:
        await self._checkpoint()
        tables, now = self._tables, self.now()
        for run in runs:
            memory_runs.check_new_run(tables, run)
        ids = [tables.next_run_id() for _ in runs]
        if reject_duplicates:
            for run in runs:
                holder = tables.dedup.get((run.job, run.dedup_id)) if run.dedup_id else None
                if holder is not None:
                    raise DuplicateRun(run.job, run.dedup_id or "", holder)
        results, inserted = [], []
        for run_id, run in zip(ids, runs, strict=True):
            holder = tables.dedup.get((run.job, run.dedup_id)) if run.dedup_id else None
            if holder is not None:
                results.append(Enqueued(holder, False))
                continue
            inserted.append(memory_runs.insert(tables, run_id, run, now))
            results.append(Enqueued(run_id, True))
        if inserted:
            ready = frozenset(r.queue for r in inserted if r.not_before <= now)
            self._notify(Notification(queues=ready, events=True))
        return results

    async def release_step(self, parent_run_id: int, step_key: str) -> bool:
        raise NotImplementedError("durable children need the PostgreSQL backend")

    async def claim(
        self,
        worker_id: str,
        queues: Sequence[str],
        jobs: Sequence[str],
        capacity: int,
        lease_seconds: float,
    ) -> list[RunRecord]:
        await self._checkpoint()
        tables, now = self._tables, self.now()
        chosen = tables.claimable(queues, jobs, capacity, now, worker_id)
        for row in chosen:
            memory_runs.start_attempt(tables, row, worker_id, lease_seconds, now)
        return [row.record() for row in chosen]

    async def complete(self, worker_id: str, completions: Sequence[Completion]) -> set[int]:
        await self._checkpoint()
        for completion in completions:
            memory_runs.check_completion(completion)
        tables, now = self._tables, self.now()
        changed: list[Row] = []
        for completion in completions:
            row = tables.owned(completion.run_id, completion.attempt, worker_id)
            if row is not None:
                memory_runs.finish_attempt(tables, row, completion, now)
                changed.append(row)
        self._notify_changes(changed, cap=True, wake=self._tables.freed_queues(changed))
        return {row.id for row in changed}

    async def heartbeat(
        self, worker_id: str, runs: Sequence[tuple[int, int]], lease_seconds: float
    ) -> Heartbeat:
        await self._checkpoint()
        tables, now = self._tables, self.now()
        worker = tables.workers.get(worker_id)
        if worker is not None:
            worker.heartbeat_at = now
        kept = [
            row for run_id, attempt in runs if (row := tables.owned(run_id, attempt, worker_id))
        ]
        for row in kept:
            row.lease_expires_at = now + timedelta(seconds=lease_seconds)
        return Heartbeat(
            registered=worker is not None,
            kept=frozenset(row.id for row in kept),
            cancel_requested=frozenset(row.id for row in kept if row.cancel_requested),
        )

    async def sweep(self, worker_ttl_seconds: float) -> SweepResult:
        await self._checkpoint()
        tables, now = self._tables, self.now()
        stale = sorted(
            (tables.runs[i] for i in tables.running),
            key=lambda r: r.lease_expires_at or now,
        )
        stale = [r for r in stale if r.lease_expires_at and r.lease_expires_at < now]
        overdue = sorted(
            (r for r in map(tables.runs.__getitem__, tables.pending) if r.not_after is not None),
            key=lambda r: r.not_after or now,
        )
        overdue = [r for r in overdue if r.not_after and r.not_after <= now][:SWEEP_BATCH]
        rescued = [memory_runs.rescue(tables, row, now) for row in stale[:SWEEP_BATCH]]
        for row in overdue:
            memory_runs.expire(tables, row, now)
        horizon = now - timedelta(seconds=worker_ttl_seconds)
        gone = [w for w, row in tables.workers.items() if row.heartbeat_at < horizon]
        for worker_id in gone:
            del tables.workers[worker_id]
        self._notify_changes([*rescued, *overdue])
        restarted = sum(r.status is RunStatus.PENDING for r in rescued)
        return SweepResult(restarted, len(rescued) - restarted, len(overdue), len(gone))

    async def cancel(self, run_id: int, cascade: bool) -> list[tuple[int, RunStatus]]:
        await self._checkpoint()
        tables, now = self._tables, self.now()
        top = tables.runs.get(run_id)
        targets = tables.descendants(run_id) if cascade else [top] if top else []
        active = sorted((r for r in targets if r.status not in TERMINAL_STATUSES), key=_by_id)
        for row in active:
            memory_runs.cancel(tables, row, now)
        if active:
            self._notify(
                Notification(
                    done=frozenset(r.id for r in active if r.status is RunStatus.CANCELLED),
                    cancel=frozenset(r.id for r in active if r.status is RunStatus.RUNNING),
                    events=True,
                )
            )
        return [(row.id, row.status) for row in active]

    async def add_events(
        self, worker_id: str, events: Sequence[tuple[int, int, str, dict[str, Any]]]
    ) -> int:
        await self._checkpoint()
        texts = [jsonb(dumps(data)) for _, _, _, data in events]
        tables, now = self._tables, self.now()
        owned = [
            (row, kind, data, text)
            for (run_id, attempt, kind, data), text in zip(events, texts, strict=True)
            if (row := tables.owned(run_id, attempt, worker_id)) is not None
        ]
        # like add_events in SQL: only the last progress event of a run updates its row
        last_progress = {row.id: (row, data) for row, kind, data, _ in owned if kind == "progress"}
        for row, data in last_progress.values():
            memory_runs.apply_progress(row, data)
        for row, kind, _, text in owned:
            tables.add_event(row, now, kind, text)
        if owned:
            self._notify(Notification(events=True))
        return len(owned)

    # ------------------------------------------------------------------ workers

    async def register_worker(self, info: WorkerInfo) -> None:
        await self._checkpoint()
        self._tables.workers[info.id] = WorkerRow(self.now(), info.queues, info.jobs)

    async def unregister_worker(self, worker_id: str) -> None:
        await self._checkpoint()
        self._tables.workers.pop(worker_id, None)

    # ------------------------------------------------------------------ reads

    async def cluster_gauges(self, worker_ttl_seconds: float) -> ClusterGauges:
        # /metrics reads PostgreSQL's partial indexes; this backend is being removed
        raise DatabaseError("metrics need the PostgreSQL backend")

    async def get_run(self, run_id: int) -> RunRecord | None:
        await self._checkpoint()
        row = self._tables.runs.get(run_id)
        return None if row is None else row.record()

    async def get_runs(self, where: RunFilter) -> list[RunRecord]:
        await self._checkpoint()
        found: list[RunRecord] = []
        for run_id in sorted(self._tables.runs, reverse=True):
            if len(found) >= where.limit:
                break
            row = self._tables.runs[run_id]
            if memory_runs.matches(row, where):
                found.append(row.record())
        return found

    async def terminal_runs(self, run_ids: Sequence[int]) -> list[RunRecord]:
        await self._checkpoint()
        rows = (self._tables.runs.get(run_id) for run_id in sorted(set(run_ids)))
        return [row.record() for row in rows if row and row.status in TERMINAL_STATUSES]

    async def get_events(self, run_id: int, after_id: int, limit: int) -> list[RunEvent]:
        await self._checkpoint()
        return self._tables.events(run_id, after_id, limit)


def _by_id(row: Row) -> int:
    return row.id


if TYPE_CHECKING:
    # mypy checks here that MemoryBackend implements the whole protocol
    _conforms: type[Backend] = MemoryBackend
