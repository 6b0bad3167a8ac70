"""What each statement of queries.sql does to one run, for ``MemoryBackend``.

One function per state change (insert, claim, complete, rescue, expire, cancel), each writing
the same ``run_events`` row as its SQL. ``MemoryBackend`` picks the rows and sends the
notifications; ``Tables`` keeps the indexes.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from asyncjobs.backends.base import Completion, NewRun, RunFilter
from asyncjobs.backends.memory_tables import (
    Row,
    Tables,
    check_dedup_id,
    check_name,
    check_smallint,
    jsonb,
    real,
    strip_nulls,
    timestamp,
)
from asyncjobs.codec import dumps
from asyncjobs.errors import DatabaseError
from asyncjobs.runs import TERMINAL_STATUSES, RunStatus, Trigger


def check_new_run(tables: Tables, run: NewRun) -> None:
    """The column types and constraints an INSERT into ``runs`` would check."""
    check_name(run.job, "job")
    check_name(run.queue, "queue")
    check_dedup_id(run.dedup_id)
    check_smallint(run.priority, "priority")
    jsonb(run.args_json)
    if run.max_attempts < 1:
        raise DatabaseError("constraint runs_max_attempts_check violated")
    if run.parent_run_id is not None and run.parent_run_id not in tables.runs:
        raise DatabaseError(f"ForeignKeyViolationError: no run {run.parent_run_id}")


def insert(tables: Tables, run_id: int, run: NewRun, now: datetime) -> Row:
    """One row of ``enqueue_runs``; a root run is its own root."""
    row = Row(
        id=run_id,
        job=run.job,
        queue=run.queue,
        args=run.args_json,
        status=RunStatus.PENDING,
        trigger=run.trigger,
        priority=run.priority,
        max_attempts=run.max_attempts,
        created_at=now,
        not_before=run.not_before or now,
        not_after=run.not_after,
        dedup_id=run.dedup_id,
        parent_run_id=run.parent_run_id,
        root_run_id=run.root_run_id or run_id,
    )
    tables.insert(row)
    data = {
        "job": row.job,
        "queue": row.queue,
        "parent_run_id": row.parent_run_id,
        "trigger": row.trigger.value,
    }
    tables.add_event(row, now, "pending", data)
    return row


def start_attempt(
    tables: Tables, row: Row, worker_id: str, lease_seconds: float, now: datetime
) -> None:
    """One row of ``claim_runs``: the next attempt, owned by the worker under a lease."""
    tables.set_status(row, RunStatus.RUNNING)
    row.attempt += 1
    row.started_at = now
    row.worker_id = worker_id
    row.lease_expires_at = now + timedelta(seconds=lease_seconds)
    tables.add_event(row, now, "running", {"attempt": row.attempt, "worker": worker_id})


def check_completion(completion: Completion) -> None:
    """Only a retry or a handback may leave a run unfinished (``runs_terminal_has_finish``),
    and what is stored must fit a jsonb column."""
    again = completion.retry_in is not None or completion.handback
    if not again and completion.status not in TERMINAL_STATUSES:
        raise DatabaseError("constraint runs_terminal_has_finish violated")
    if completion.result_json is not None:
        jsonb(completion.result_json)
    if completion.error is not None:
        jsonb(dumps(completion.error))


def finish_attempt(tables: Tables, row: Row, completion: Completion, now: datetime) -> None:
    """One row of ``complete_runs``: finished, or back to pending (retry or handback)."""
    retry, handback = completion.retry_in is not None, completion.handback
    again = retry or handback
    error = None if completion.error is None else dumps(completion.error)
    tables.set_status(row, RunStatus.PENDING if again else completion.status)
    if retry:
        row.trigger = Trigger.RETRY
        row.retries += 1
        row.not_before = now + timedelta(seconds=completion.retry_in or 0.0)
    elif handback:  # the attempt it used does not count
        row.trigger = Trigger.RESTART
        row.max_attempts += 1
    row.finished_at = None if again else now
    row.worker_id = row.lease_expires_at = None
    row.result, row.error = completion.result_json, error
    if error is not None:
        row.errors.append(error)
    if completion.status is RunStatus.SUCCEEDED and not again:
        row.progress = 1.0
    data: dict[str, Any] = {"attempt": row.attempt, "error": completion.error}
    if retry:
        data["retry_at"] = timestamp(row.not_before)
    kind = "retrying" if retry else row.status.value
    tables.add_event(row, now, kind, strip_nulls(data))


def rescue(tables: Tables, row: Row, now: datetime) -> Row:
    """A run whose lease ran out (``sweep``): again pending, failed, or cancelled if asked."""
    error = {
        "type": "LeaseExpired",
        "attempt": row.attempt,
        "traceback": "",
        "message": f"worker {row.worker_id} stopped heartbeating "
        f"(lease expired at {row.lease_expires_at})",
    }
    if row.cancel_requested:
        status = RunStatus.CANCELLED
    elif row.attempt < row.max_attempts:
        status = RunStatus.PENDING
    else:
        status = RunStatus.FAILED
    tables.set_status(row, status)
    row.trigger = Trigger.RESTART
    row.finished_at = None if status is RunStatus.PENDING else now
    row.error = dumps(error)
    row.errors.append(row.error)
    row.worker_id = row.lease_expires_at = None
    data = {"attempt": row.attempt, "error": error, "rescued": True}
    tables.add_event(row, now, status.value, strip_nulls(data))
    return row


def expire(tables: Tables, row: Row, now: datetime) -> None:
    """A pending run past its ``not_after`` (``sweep``)."""
    tables.set_status(row, RunStatus.EXPIRED)
    row.finished_at = now
    tables.add_event(row, now, "expired", {"attempt": row.attempt, "rescued": False})


def cancel(tables: Tables, row: Row, now: datetime) -> None:
    """One row of ``cancel_runs``: a pending run ends now; a running one is asked to stop."""
    row.cancel_requested = True
    if row.status is RunStatus.PENDING:
        tables.set_status(row, RunStatus.CANCELLED)
        row.finished_at = now
        tables.add_event(row, now, "cancelled", {})
    else:
        tables.add_event(row, now, "cancel_requested", {})


def apply_progress(row: Row, data: dict[str, Any]) -> None:
    """Progress events also update the run row, as ``add_events`` does."""
    value = data.get("progress")
    row.progress = None if value is None else real(float(value))
    message = data.get("message")
    if message is not None:
        row.status_message = message if isinstance(message, str) else dumps(message)


def matches(row: Row, where: RunFilter) -> bool:
    """The WHERE clause of ``get_runs``."""
    return (
        (where.job is None or row.job == where.job)
        and (where.status is None or row.status is where.status)
        and (where.parent_run_id is None or row.parent_run_id == where.parent_run_id)
        and (where.root_run_id is None or row.root_run_id == where.root_run_id)
        and (where.trigger is None or row.trigger is where.trigger)
        and (where.before_id is None or row.id < where.before_id)
        and (where.created_after is None or row.created_at >= where.created_after)
        and (where.created_before is None or row.created_at < where.created_before)
    )
