"""What the cluster is doing now: workers, queue load, and the runs that finished lately.

``Client.get_workers`` and ``Client.activity`` answer with these; the dashboard's workers and
queues views show them. Each part is read in one cheap statement (see ``sql/insights.sql``: the
load now is ``/metrics``' ``cluster_gauges``, which reads the partial indexes of pending and
running runs; the per-minute counts find their starting row by a binary search over the
primary key).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from asyncjobs.gauges import Load

#: The window ``Client.activity`` looks back over unless told otherwise.
DEFAULT_WINDOW = timedelta(hours=1)
#: Longest window ``Client.activity`` accepts (the chart is per minute).
MAX_WINDOW = timedelta(hours=24)
#: How many of its running runs ``Client.get_workers`` lists per worker.
MAX_LISTED_RUNS = 50


@dataclass(frozen=True, slots=True)
class WorkerState:
    """A registered worker as ``Client.get_workers`` sees it."""

    id: str
    host: str
    pid: int
    queues: tuple[str, ...]
    jobs: tuple[str, ...]
    #: how many runs it may run at once
    concurrency: int
    #: how many runs it holds now
    running: int
    #: (run id, job) of the runs it holds, the first ``MAX_LISTED_RUNS`` by id
    runs: tuple[tuple[int, str], ...]
    started_at: datetime
    heartbeat_at: datetime
    #: seconds since its last heartbeat, by the database clock
    silent_for: float
    #: whether it heartbeat within the ``worker_ttl`` asked for (a silent worker's runs are
    #: rescued by the next sweep)
    alive: bool


@dataclass(frozen=True, slots=True)
class FinishedCount:
    """Runs of one job that finished, by final status: in one minute (``minute`` set) or over
    the whole window (``minute`` is ``None``, with the percentiles)."""

    minute: datetime | None
    job: str
    queue: str
    succeeded: int
    failed: int
    #: cancelled or expired
    cancelled: int
    #: median and 95th percentile duration (seconds) of the last attempt of the runs that
    #: succeeded or failed; only on window totals
    p50: float | None = None
    p95: float | None = None

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed + self.cancelled


@dataclass(frozen=True, slots=True)
class Activity:
    """``Client.activity``: the load of every queue now and the runs that finished within
    ``window`` before ``at`` (the database clock), per minute and per job. Runs that took
    longer than ``window`` from creation to finish are not counted."""

    at: datetime
    window: timedelta
    #: each queue now: pending, ready, oldest ready age, running, limit, switch
    queues: tuple[Load, ...]
    #: each job now, the same
    job_loads: tuple[Load, ...]
    #: per minute and job, oldest minute first
    minutes: tuple[FinishedCount, ...]
    #: per job, over the whole window
    jobs: tuple[FinishedCount, ...]
