"""The client's data types as the dashboard's response models (``asyncjobs/web/models.py``).

Run and schedule arguments go through the ``Redactor`` (``asyncjobs/web/redaction.py``):
the models take arguments only as the ``RedactedArgs`` it makes.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel

from asyncjobs.activity import Activity, FinishedCount, WorkerState
from asyncjobs.app import App
from asyncjobs.backends.base import JobState, QueueState
from asyncjobs.explain import Explanation
from asyncjobs.feed import TraceUpdate
from asyncjobs.gauges import Load
from asyncjobs.jobs import Job
from asyncjobs.runs import RunEvent, RunRecord
from asyncjobs.schedules import ScheduleState
from asyncjobs.web import models
from asyncjobs.web.redaction import UNKNOWN_JOB_ARGS as UNKNOWN_JOB_ARGS
from asyncjobs.web.redaction import Redactor as Redactor


def run_model(run: RunRecord, redactor: Redactor) -> models.Run:
    """A run with its result, traceback and the errors of earlier attempts."""
    return models.Run(
        **_run_fields(run, redactor), error=run.error, result=run.result, errors=run.errors
    )


def run_summary(run: RunRecord, redactor: Redactor) -> models.RunSummary:
    """A run for lists: no result, no traceback, no earlier attempts."""
    error = None if run.error is None else {k: v for k, v in run.error.items() if k != "traceback"}
    return models.RunSummary(**_run_fields(run, redactor), error=error)


def _run_fields(run: RunRecord, redactor: Redactor) -> dict[str, Any]:
    return {
        "id": run.id,
        "job": run.job,
        "queue": run.queue,
        "status": run.status,
        "trigger": run.trigger,
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


def event_model(event: RunEvent) -> models.Event:
    return models.Event(
        id=event.id,
        cursor=str(event.cursor),
        run_id=event.run_id,
        root_run_id=event.root_run_id,
        at=event.at,
        kind=event.kind,
        data=event.data,
    )


def update_json(update: TraceUpdate, redactor: Redactor, *, detail: bool = True) -> bytes:
    """One SSE message body: an ``Update`` (trace streams) or, without ``detail``, a
    ``FeedUpdate`` (the run table's stream: run summaries, events without data)."""
    if detail:
        return dumps(
            models.Update(
                kind=update.kind.value,
                cursor=str(update.cursor),
                runs=[run_model(r, redactor) for r in update.runs],
                events=[event_model(e) for e in update.events],
                truncated=update.truncated,
            )
        )
    return dumps(
        models.FeedUpdate(
            kind=update.kind.value,
            cursor=str(update.cursor),
            runs=[run_summary(r, redactor) for r in update.runs],
            events=[
                models.EventSummary(id=e.id, run_id=e.run_id, kind=e.kind, at=e.at)
                for e in update.events
            ],
            truncated=update.truncated,
        )
    )


def jobs_model(
    app: App, redactor: Redactor, title: str, queues: list[QueueState], jobs: list[JobState]
) -> models.Jobs:
    """The app's jobs (with their argument schema) and queues, with their stored switches;
    ``enabled`` is ``None`` until a worker stored the job or queue. Jobs stored by other
    apps are listed as not ``known`` (they cannot be triggered from here)."""
    stored_jobs = {j.name: j for j in jobs}
    stored_queues = {q.name: q for q in queues}
    listed = [
        _job_model(job, redactor, stored_jobs.pop(job.name, None)) for job in app.jobs.values()
    ]
    listed += [
        models.JobInfo(
            name=j.name,
            queue=j.queue,
            aliases=[],
            max_concurrency=j.max_concurrency,
            known=False,
            enabled=j.enabled,
            redact=[],
            args_schema=None,
            doc=None,
        )
        for j in stored_jobs.values()
    ]
    queue_rows = []
    for name in sorted(set(app.queues) | set(stored_queues)):
        stored = stored_queues.get(name)
        limit = stored.max_concurrency if stored else app.queues[name].max_concurrency
        queue_rows.append(
            models.QueueInfo(
                name=name, max_concurrency=limit, enabled=stored.enabled if stored else None
            )
        )
    return models.Jobs(
        app=app.name,
        title=title,
        jobs=sorted(listed, key=lambda j: j.name),
        queues=queue_rows,
    )


def _job_model(job: Job[Any, Any], redactor: Redactor, stored: JobState | None) -> models.JobInfo:
    return models.JobInfo(
        name=job.name,
        queue=job.queue,
        aliases=list(job.aliases),
        max_concurrency=job.max_concurrency,
        known=True,
        enabled=None if stored is None else stored.enabled,
        redact=list(job.redact),
        args_schema=redactor.schema(job.name, job.args.json_schema()),
        doc=(job.fn.__doc__ or "").strip() or None,
    )


def worker_model(worker: WorkerState) -> models.Worker:
    return models.Worker(
        id=worker.id,
        host=worker.host,
        pid=worker.pid,
        queues=list(worker.queues),
        jobs=list(worker.jobs),
        concurrency=worker.concurrency,
        running=worker.running,
        runs=[models.WorkerRun(id=run_id, job=job) for run_id, job in worker.runs],
        started_at=worker.started_at,
        heartbeat_at=worker.heartbeat_at,
        silent_for=worker.silent_for,
        alive=worker.alive,
    )


def schedule_model(schedule: ScheduleState, redactor: Redactor) -> models.Schedule:
    """A schedule; its arguments are redacted by its job's rules like a run's."""
    return models.Schedule(
        name=schedule.name,
        job=schedule.job,
        cron=schedule.cron,
        every=None if schedule.every is None else schedule.every.total_seconds(),
        timezone=schedule.timezone,
        misfire=str(schedule.misfire),
        all_nodes=schedule.all_nodes,
        enabled=schedule.enabled,
        paused=schedule.paused,
        next_fire_at=schedule.next_fire_at,
        last_fire_at=schedule.last_fire_at,
        args=redactor.args(schedule.job, schedule.args),
    )


def activity_model(activity: Activity) -> models.Activity:
    return models.Activity(
        at=activity.at,
        window=activity.window.total_seconds(),
        queues=[_load_model(q) for q in activity.queues],
        job_loads=[_load_model(j) for j in activity.job_loads],
        minutes=[models.FinishedCount(**_count_fields(c)) for c in activity.minutes],
        jobs=[models.JobTotals(**_count_fields(c), p50=c.p50, p95=c.p95) for c in activity.jobs],
    )


def _load_model(load: Load) -> models.Load:
    return models.Load(
        name=load.name,
        pending=load.pending,
        ready=load.ready,
        oldest_age=load.oldest_age,
        running=load.running,
        max_concurrency=load.limit,
        enabled=load.enabled,
    )


def _count_fields(count: FinishedCount) -> dict[str, Any]:
    return {
        "minute": count.minute,
        "job": count.job,
        "queue": count.queue,
        "succeeded": count.succeeded,
        "failed": count.failed,
        "cancelled": count.cancelled,
    }


def explanation_model(explanation: Explanation) -> models.Explanation:
    return models.Explanation(
        run_id=explanation.run_id,
        status=explanation.status,
        blocked=explanation.blocked,
        reasons=[
            models.Reason(code=r.code, message=r.message, data=r.data) for r in explanation.reasons
        ],
    )


def dumps(value: Any) -> bytes:
    """JSON bytes; a model is written from ``model_dump()`` so times and enums come out as
    orjson writes them (what the viewer has always read)."""
    if isinstance(value, BaseModel):
        value = value.model_dump()
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
