"""The dashboard's response and request bodies as pydantic models.

The serialize functions (``asyncjobs/web/serialize.py``) build these from the client's data
types; the OpenAPI document (``asyncjobs/web/openapi.py``) is generated from their JSON
schemas, so the description cannot drift from what is sent. Responses are written with
orjson from ``model_dump()`` (times as RFC 3339 with ``+00:00``, as the viewer reads them).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, PlainValidator, WithJsonSchema

from asyncjobs.explain import ReasonCode
from asyncjobs.runs import RunStatus, Trigger
from asyncjobs.web.redaction import RedactedArgs


def _only_redacted(value: Any) -> RedactedArgs:
    if not isinstance(value, RedactedArgs):
        raise ValueError("arguments must pass through Redactor.args")
    return value


def _write_redacted(value: Any) -> dict[str, Any]:
    # model_construct() skips validation: refuse here too, so nothing unredacted is written
    return _only_redacted(value).value


Args = Annotated[
    RedactedArgs,
    PlainValidator(_only_redacted),
    PlainSerializer(_write_redacted),
    WithJsonSchema({"type": "object", "description": "Redacted per job"}),
]


class Model(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")


# ---------------------------------------------------------------- runs and events


class _RunFields(Model):
    """What every run body has; the two below add their own ``error`` (and more) after
    these, in the order the dashboard has always sent them."""

    id: int
    job: str
    queue: str
    status: RunStatus
    trigger: Trigger
    priority: int
    attempt: int
    max_attempts: int
    retries: int = Field(description="failed attempts retried")
    restarts: int = Field(description="times taken back from a worker that vanished")
    max_restarts: int
    parent_run_id: int | None
    root_run_id: int
    created_at: datetime
    not_before: datetime
    not_after: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    duration: float | None
    worker_id: str | None
    cancel_requested: bool
    progress: float | None
    status_message: str | None
    dedup_id: str | None
    args: Args
    version: int = Field(description="Larger is newer")


class RunSummary(_RunFields):
    """A run as run lists and the run table's stream show it."""

    error: dict[str, Any] | None = Field(description="type, message, attempt (no traceback)")


class Run(_RunFields):
    """A run with its result, its error's traceback and every attempt's error."""

    result: Any
    error: dict[str, Any] | None = Field(description="type, message, attempt, traceback")
    errors: list[dict[str, Any]] = Field(description="every attempt's error")


class Event(Model):
    id: int
    cursor: str
    run_id: int
    root_run_id: int
    at: datetime
    kind: str = Field(
        description="pending, running, succeeded, failed, cancelled, expired, retrying, "
        "cancel_requested, progress, log"
    )
    data: dict[str, Any]


class EventSummary(Model):
    """An event of the run table's stream: no data."""

    id: int
    run_id: int
    kind: str
    at: datetime


class RunPage(Model):
    runs: list[RunSummary]
    next_cursor: int | None
    events_cursor: str = Field(description="Feed position before the read")


class RunDetail(Model):
    run: Run


class Tree(Model):
    root_run_id: int
    runs: list[Run]
    truncated: bool


class Events(Model):
    events: list[Event]


class Update(Model):
    """One message of a trace stream (``/api/runs/{run_id}/events``)."""

    kind: Literal["snapshot", "events", "end"]
    cursor: str
    runs: list[Run]
    events: list[Event]
    truncated: bool


class FeedUpdate(Model):
    """One message of the run table's stream (``/api/events``)."""

    kind: Literal["snapshot", "events", "end"]
    cursor: str
    runs: list[RunSummary]
    events: list[EventSummary]
    truncated: bool


# ---------------------------------------------------------------- jobs and queues


class JobInfo(Model):
    name: str
    queue: str
    aliases: list[str]
    max_concurrency: int | None
    known: bool = Field(description="Registered in this app")
    enabled: bool | None = Field(description="null until a worker stored the job")
    redact: list[str]
    args_schema: dict[str, Any] | None
    doc: str | None


class QueueInfo(Model):
    name: str
    max_concurrency: int | None
    enabled: bool | None = Field(description="null until a worker stored the queue")


class Jobs(Model):
    app: str
    title: str
    jobs: list[JobInfo]
    queues: list[QueueInfo]


# ---------------------------------------------------------------- actions


class CancelledRun(Model):
    id: int
    status: RunStatus


class Cancelled(Model):
    runs: list[CancelledRun]


class Triggered(Model):
    id: int
    job: str
    created: bool = Field(description="false: an active run with the dedup id was returned")


class Retried(Triggered):
    retry_of: int


class Switched(Model):
    name: str
    enabled: bool


class CancelBody(Model):
    cascade: bool = False


class TriggerBody(Model):
    args: dict[str, Any] = Field(
        default_factory=dict, description="Must match #/components/schemas/args.<job>"
    )


class SwitchBody(Model):
    enabled: bool


# ---------------------------------------------------------------- cluster views


class WorkerRun(Model):
    id: int
    job: str


class Worker(Model):
    id: str
    host: str
    pid: int
    queues: list[str]
    jobs: list[str]
    concurrency: int
    running: int
    runs: list[WorkerRun]
    started_at: datetime
    heartbeat_at: datetime
    silent_for: float
    alive: bool


class Workers(Model):
    worker_ttl: int
    workers: list[Worker]


class Schedule(Model):
    name: str
    job: str
    cron: str | None
    every: float | None = Field(description="seconds")
    timezone: str
    misfire: str
    all_nodes: bool
    enabled: bool
    paused: bool
    next_fire_at: datetime | None
    last_fire_at: datetime | None
    args: Args


class Schedules(Model):
    schedules: list[Schedule]


class Load(Model):
    name: str
    pending: int
    ready: int
    oldest_age: float
    running: int
    max_concurrency: int | None
    enabled: bool


class FinishedCount(Model):
    minute: datetime | None
    job: str
    queue: str
    succeeded: int
    failed: int
    cancelled: int


class JobTotals(FinishedCount):
    p50: float | None
    p95: float | None


class Activity(Model):
    at: datetime
    window: float
    queues: list[Load]
    job_loads: list[Load]
    minutes: list[FinishedCount]
    jobs: list[JobTotals]


class Reason(Model):
    code: ReasonCode
    message: str
    data: dict[str, Any]


class Explanation(Model):
    run_id: int
    status: RunStatus
    blocked: bool
    reasons: list[Reason]


# ---------------------------------------------------------------- the dashboard itself


class BroadcasterStats(Model):
    subscribers: int
    reads: int
    batches: int
    events: int
    dropped: int
    max_queued: int
    queue_size: int
    position: str | None


class Stats(Model):
    streams: int
    max_streams: int
    broadcaster: BroadcasterStats


class ErrorDetail(Model):
    model_config = ConfigDict(extra="allow")

    type: str
    message: str
    errors: list[Any] | None = Field(
        default=None, description="InvalidArguments: what does not fit"
    )
    existing_run_id: int | None = Field(default=None, description="DuplicateRun: the active run")


class Error(Model):
    """Every 4xx and 5xx body."""

    error: ErrorDetail
