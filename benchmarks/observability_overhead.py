"""What OpenTelemetry and Prometheus cost per trigger and per attempt, without the database.

    python benchmarks/observability_overhead.py [--n 20000]

Times the exact wrappers the client and the worker use (``telemetry.traced_trigger`` around
the insert, ``AttemptObserver.attempt`` around ``_attempt``) around a no-op coroutine, against
the plain call (what runs when the wrapper is off), in the same process:

* ``api, no SDK`` — opentelemetry-api installed, no SDK configured (the common case: FastAPI
  pulls the API in); spans are the API's non-recording ones;
* ``SDK, recording`` — an SDK TracerProvider with a span processor whose exporter drops
  everything, i.e. the cost of real spans without the export;
* ``metrics`` — a worker with ``metrics_port`` (counters and histograms, no tracing).

A worker's attempt also costs its claim, completion and events (a few hundred µs of database
work per run, see benchmarks/README.md); these numbers are what the wrappers add on top.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from asyncjobs import telemetry
from asyncjobs.backends.base import Completion, Enqueued
from asyncjobs.metrics import WorkerMetrics
from asyncjobs.observe import AttemptObserver
from asyncjobs.runs import RunRecord, RunStatus, Trigger


class _Drop(SpanExporter):
    def export(self, spans: Sequence[object]) -> SpanExportResult:  # type: ignore[override]
        return SpanExportResult.SUCCESS


class _Execution:
    error: BaseException | None = None


NOW = datetime.now(UTC)
RECORD = RunRecord(
    id=1, job="job", queue="default", args={}, status=RunStatus.RUNNING, trigger=Trigger.USER,
    priority=0, attempt=1, max_attempts=1, created_at=NOW, not_before=NOW, started_at=NOW,
    trace_context={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
)  # fmt: skip
DONE = Completion(1, 1, RunStatus.SUCCEEDED, result_json="null")
ENQUEUED = [Enqueued(1, True)]


async def _insert(trace_context: str | None) -> list[Enqueued]:
    return ENQUEUED


async def _attempt() -> Completion:
    return DONE


async def _per_call(n: int, call: Callable[[], Awaitable[object]]) -> float:
    """Median over 5 rounds of the µs per call."""
    rounds = []
    for _ in range(5):
        began = time.perf_counter()
        for _ in range(n):
            await call()
        rounds.append((time.perf_counter() - began) / n * 1e6)
    return statistics.median(rounds)


async def _measure(n: int, label: str, observer: AttemptObserver) -> None:
    plain_trigger = await _per_call(n, lambda: _insert(None))
    traced = await _per_call(
        n, lambda: telemetry.traced_trigger("job", "default", Trigger.USER, _insert)
    )
    plain_attempt = await _per_call(n, _attempt)
    observed = await _per_call(n, lambda: observer.attempt(RECORD, _attempt(), _Execution()))
    print(
        f"{label:<18} trigger +{traced - plain_trigger:6.1f} µs   "
        f"attempt +{observed - plain_attempt:6.1f} µs"
    )


async def main(n: int) -> None:
    assert telemetry.TRACING, "install opentelemetry-api to measure it"
    await _measure(n, "api, no SDK", AttemptObserver(None, tracing=True))
    metrics = WorkerMetrics("bench", 10, lambda: 0)
    plain = await _per_call(n, _attempt)
    counted = await _per_call(
        n, lambda: AttemptObserver(metrics, tracing=False).attempt(RECORD, _attempt(), _Execution())
    )
    print(f"{'metrics':<18} trigger +{0.0:6.1f} µs   attempt +{counted - plain:6.1f} µs")
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_Drop()))
    telemetry.set_tracer_provider(provider)
    await _measure(n, "SDK, recording", AttemptObserver(None, tracing=True))
    telemetry.set_tracer_provider(None)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="calls per round (default 20000)")
    asyncio.run(main(parser.parse_args().n))
