"""Per-job summaries: the last successful run, and counts and durations over a window."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from asyncjobs.runs import RunStatus


@dataclass(frozen=True, slots=True)
class LastSuccess:
    """The most recently finished successful run of a job."""

    run_id: int
    finished_at: datetime
    #: seconds its last attempt ran
    duration: float | None


@dataclass(frozen=True, slots=True)
class JobSummary:
    """``Client.job_summary``: the runs of one job created within ``window`` before ``at``.

    ``counts`` has every status (zero when none); ``p50`` / ``p95`` are the median and 95th
    percentile duration, in seconds, of the last attempt of the runs that finished (succeeded
    or failed) — ``None`` when none did. ``last_success`` looks at all time, not the window.
    """

    job: str
    window: timedelta
    at: datetime
    counts: Mapping[RunStatus, int] = field(default_factory=dict)
    p50: float | None = None
    p95: float | None = None
    last_success: LastSuccess | None = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())
