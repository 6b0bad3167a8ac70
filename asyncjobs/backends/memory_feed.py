"""The event feed, dashboard reads and retention of ``MemoryBackend``.

In memory every write is final the moment it returns (one backend call is one statement and
one transaction), so the feed order is simply the event id: each event's cursor is
``(0, id)`` and nothing is ever held back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from asyncjobs.backends.base import FeedPage, JobState, PruneResult, QueueState
from asyncjobs.backends.memory_tables import Row, Tables
from asyncjobs.runs import ACTIVE_STATUSES, EventCursor, RunRecord


class _HasTables(Protocol):
    @property
    def _tables(self) -> Tables: ...

    async def _checkpoint(self) -> None: ...


class MemoryFeed:
    """Mixed into ``MemoryBackend``; implements the feed part of the ``Backend`` protocol."""

    async def read_feed(
        self: _HasTables,
        after: EventCursor,
        root_run_id: int | None,
        limit: int,
        grace_seconds: float,
    ) -> FeedPage:
        await self._checkpoint()
        events = [
            e
            for e in self._tables.all_events()
            if EventCursor(0, e.id) > after
            and (root_run_id is None or e.root_run_id == root_run_id)
        ]
        return FeedPage([e.event() for e in events[: max(limit, 0)]], held_back=False)

    async def feed_position(self: _HasTables, grace_seconds: float) -> EventCursor:
        await self._checkpoint()
        last = max((e.id for e in self._tables.all_events()), default=0)
        return EventCursor(0, last) if last else EventCursor()

    async def get_runs_by_ids(self: _HasTables, run_ids: Sequence[int]) -> list[RunRecord]:
        await self._checkpoint()
        rows = (self._tables.runs.get(run_id) for run_id in sorted(set(run_ids)))
        return [_versioned(self._tables, row) for row in rows if row is not None]

    async def get_tree(self: _HasTables, root_run_id: int, limit: int) -> list[RunRecord]:
        await self._checkpoint()
        rows = sorted(
            (r for r in self._tables.runs.values() if r.root_run_id == root_run_id),
            key=lambda r: r.id,
        )
        return [_versioned(self._tables, row) for row in rows[: max(limit, 0)]]

    async def list_definitions(self: _HasTables) -> tuple[list[QueueState], list[JobState]]:
        await self._checkpoint()
        tables = self._tables
        return (
            [QueueState(n, q.max_concurrency, q.enabled) for n, q in sorted(tables.queues.items())],
            [
                JobState(n, j.queue, j.max_concurrency, j.enabled)
                for n, j in sorted(tables.jobs.items())
            ],
        )

    async def prune(self: _HasTables, finished_before: datetime, max_trees: int) -> PruneResult:
        await self._checkpoint()
        tables = self._tables
        trees: dict[int, list[Row]] = {}
        for row in tables.runs.values():
            trees.setdefault(row.root_run_id, []).append(row)
        old = sorted(
            (
                (max(r.finished_at for r in rows if r.finished_at), root)
                for root, rows in trees.items()
                if root in tables.runs and all(_finished_before(r, finished_before) for r in rows)
            ),
        )[: max(max_trees, 0)]
        result = PruneResult()
        for _, root in old:
            runs, events = tables.delete_tree(root)
            result = PruneResult(result.trees + 1, result.runs + runs, result.events + events)
        return result


def _finished_before(row: Row, cutoff: datetime) -> bool:
    return (
        row.status not in ACTIVE_STATUSES
        and row.finished_at is not None
        and row.finished_at < cutoff
    )


def _versioned(tables: Tables, row: Row) -> RunRecord:
    return dataclasses.replace(row.record(), version=tables.last_event_id(row.id))
