"""The JSON the dashboard sends: runs, events and updates, with per-job argument redaction.

Redaction happens here, on the way out, so the HTTP API, the SSE streams and the viewer
(which only ever sees what these two send) all show the same thing. Values are replaced,
keys are kept, so the viewer can say that something was there.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson

from asyncjobs.app import App
from asyncjobs.backends.base import JobState, QueueState
from asyncjobs.errors import UnknownJob
from asyncjobs.feed import TraceUpdate
from asyncjobs.jobs import Job
from asyncjobs.redact import KeyPath, redact_args
from asyncjobs.runs import RunEvent, RunRecord

#: what the args of a run of a job this app does not know show (``redact_unknown_jobs``)
UNKNOWN_JOB_ARGS = {"[redacted]": "this job is not registered in the dashboard's app"}


class Redactor:
    """Applies each job's ``redact`` paths to run arguments."""

    def __init__(self, app: App, *, redact_unknown_jobs: bool = True) -> None:
        self.app = app
        self.redact_unknown_jobs = redact_unknown_jobs

    def keys(self, job_name: str) -> tuple[KeyPath, ...] | None:
        """The stored key paths the job redacts; ``None`` for a job the app does not know."""
        try:
            return self.app.get_job(job_name).redact_keys
        except UnknownJob:
            return None

    def args(self, job_name: str, args: dict[str, Any]) -> dict[str, Any]:
        keys = self.keys(job_name)
        if keys is None:
            return dict(UNKNOWN_JOB_ARGS) if self.redact_unknown_jobs else args
        return redact_args(args, keys)

    def schema(self, job_name: str, schema: dict[str, Any]) -> dict[str, Any]:
        """Mark redacted top-level fields ``writeOnly`` / ``format: password`` for the form."""
        top = {path[0] for path in self.keys(job_name) or () if len(path) == 1}
        properties = schema.get("properties")
        if not top or not isinstance(properties, dict):
            return schema
        marked = copy.deepcopy(schema)
        for name in top & marked["properties"].keys():
            marked["properties"][name].update(writeOnly=True, format="password")
        return marked


def run_json(run: RunRecord, redactor: Redactor, *, detail: bool = True) -> dict[str, Any]:
    """A run as JSON. Without ``detail`` (run lists) the result, the traceback and the
    errors of earlier attempts are left out."""
    data: dict[str, Any] = {
        "id": run.id,
        "job": run.job,
        "queue": run.queue,
        "status": run.status.value,
        "trigger": run.trigger.value,
        "priority": run.priority,
        "attempt": run.attempt,
        "max_attempts": run.max_attempts,
        "retries": run.retries,
        "restarts": run.restarts,
        "max_restarts": run.max_restarts,
        "parent_run_id": run.parent_run_id,
        "root_run_id": run.root_run_id or run.id,
        "created_at": run.created_at,
        "not_before": run.not_before,
        "not_after": run.not_after,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "duration": run.duration,
        "worker_id": run.worker_id,
        "cancel_requested": run.cancel_requested,
        "progress": run.progress,
        "status_message": run.status_message,
        "dedup_id": run.dedup_id,
        "args": redactor.args(run.job, run.args),
        "version": run.version,
    }
    if detail:
        data["result"] = run.result
        data["error"] = run.error
        data["errors"] = run.errors
    elif run.error is not None:
        data["error"] = {k: v for k, v in run.error.items() if k != "traceback"}
    else:
        data["error"] = None
    return data


def event_json(event: RunEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "cursor": str(event.cursor),
        "run_id": event.run_id,
        "root_run_id": event.root_run_id,
        "at": event.at,
        "kind": event.kind,
        "data": event.data,
    }


def update_json(update: TraceUpdate, redactor: Redactor, *, detail: bool = True) -> bytes:
    """One SSE message body. The global feed (``detail=False``) sends no event data."""
    events = (
        [event_json(e) for e in update.events]
        if detail
        else [{"id": e.id, "run_id": e.run_id, "kind": e.kind, "at": e.at} for e in update.events]
    )
    return dumps(
        {
            "kind": update.kind.value,
            "cursor": str(update.cursor),
            "runs": [run_json(r, redactor, detail=detail) for r in update.runs],
            "events": events,
            "truncated": update.truncated,
        }
    )


def jobs_json(
    app: App, redactor: Redactor, title: str, queues: list[QueueState], jobs: list[JobState]
) -> dict[str, Any]:
    """The app's jobs (with their argument schema) and queues, with their stored switches;
    ``enabled`` is ``None`` until a worker stored the job or queue. Jobs stored by other
    apps are listed as not ``known`` (they cannot be triggered from here)."""
    stored_jobs = {j.name: j for j in jobs}
    stored_queues = {q.name: q for q in queues}
    listed = [
        _job_json(job, redactor, stored_jobs.pop(job.name, None)) for job in app.jobs.values()
    ]
    listed += [
        {
            "name": j.name,
            "queue": j.queue,
            "aliases": [],
            "max_concurrency": j.max_concurrency,
            "known": False,
            "enabled": j.enabled,
            "redact": [],
            "args_schema": None,
            "doc": None,
        }
        for j in stored_jobs.values()
    ]
    queue_rows = []
    for name in sorted(set(app.queues) | set(stored_queues)):
        stored = stored_queues.get(name)
        limit = stored.max_concurrency if stored else app.queues[name].max_concurrency
        queue_rows.append(
            {"name": name, "max_concurrency": limit, "enabled": stored.enabled if stored else None}
        )
    return {
        "app": app.name,
        "title": title,
        "jobs": sorted(listed, key=lambda j: str(j["name"])),
        "queues": queue_rows,
    }


def _job_json(job: Job[Any, Any], redactor: Redactor, stored: JobState | None) -> dict[str, Any]:
    return {
        "name": job.name,
        "queue": job.queue,
        "aliases": list(job.aliases),
        "max_concurrency": job.max_concurrency,
        "known": True,
        "enabled": None if stored is None else stored.enabled,
        "redact": list(job.redact),
        "args_schema": redactor.schema(job.name, job.args.json_schema()),
        "doc": (job.fn.__doc__ or "").strip() or None,
    }


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
