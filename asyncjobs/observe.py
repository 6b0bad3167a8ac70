"""What a worker reports about each attempt: an OpenTelemetry span (asyncjobs/telemetry.py)
and Prometheus counters and histograms (asyncjobs/metrics.py), each only when enabled.

The worker holds ``None`` instead of an observer when neither is (OpenTelemetry not installed,
no ``metrics_port``): then an attempt costs one ``is None`` check more, nothing else.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Protocol

from asyncjobs import telemetry
from asyncjobs.backends.base import Completion
from asyncjobs.runs import RunRecord, RunStatus

if TYPE_CHECKING:  # prometheus_client is imported only by a worker that serves metrics
    from asyncjobs.metrics import WorkerMetrics


class _Failing(Protocol):
    #: the exception of a failed attempt, set by the worker before the attempt returns
    error: BaseException | None


def observer(metrics: WorkerMetrics | None) -> AttemptObserver | None:
    """An observer when tracing or metrics are on, else ``None``."""
    if metrics is None and not telemetry.TRACING:
        return None
    return AttemptObserver(metrics, telemetry.TRACING)


def outcome(completion: Completion | None) -> str:
    """The ``status`` label and span attribute of a finished attempt."""
    if completion is None:
        return "lease_lost"  # the run was rescued elsewhere: this attempt's result is void
    if completion.handback:
        return "handed_back"
    if completion.status is RunStatus.FAILED and completion.retry_in is not None:
        return "retrying"
    return completion.status.value


class AttemptObserver:
    def __init__(self, metrics: WorkerMetrics | None, tracing: bool) -> None:
        self.metrics = metrics
        self.tracing = tracing

    async def attempt(
        self,
        record: RunRecord,
        attempt: Awaitable[Completion | None],
        execution: _Failing,
    ) -> Completion | None:
        """Await ``attempt`` (the worker's ``_attempt``) inside the run's span, then count it."""
        if self.metrics is not None:
            self.metrics.run_started(record)
        began = time.perf_counter()
        status = "aborted"  # the worker itself is being torn down mid-attempt
        try:
            if not self.tracing:
                completion = await attempt
                status = outcome(completion)
                return completion
            with telemetry.execution_span(record) as span:
                try:
                    completion = await attempt
                    status = outcome(completion)
                    return completion
                finally:
                    telemetry.finish(span, status, execution.error)
        finally:
            if self.metrics is not None:
                self.metrics.run_finished(record, status, time.perf_counter() - began)

