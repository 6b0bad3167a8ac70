"""Prometheus metrics (``pip install 'asyncjobs[metrics]'``): what each process exposes.

* A worker (``Worker(metrics_port=...)``, CLI ``--metrics-port``) counts what it did itself:
  runs started and attempts finished by job, queue and outcome, wait-time and duration
  histograms, and its own running runs against its concurrency. Served on its own small HTTP
  endpoint, bound to 127.0.0.1 unless told otherwise.
* The dashboard's ``/metrics`` shows the cluster as the database sees it: depth, ready runs,
  oldest ready age, running runs and limits by queue and by job, and live workers. One query
  per scrape (``cluster_gauges``), whatever the number of queues and jobs.

Each owner has a registry of its own (not prometheus_client's global one): two workers or
dashboards in one process do not collide, and a user's own metrics stay theirs. Both add the
process collectors (``process_*``, ``python_gc_*``, ``python_info``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from asyncjobs.errors import ConfigurationError
from asyncjobs.gauges import ClusterGauges, Load
from asyncjobs.runs import RunRecord

try:
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        GC_COLLECTOR,
        CollectorRegistry,
        Counter,
        GCCollector,
        Histogram,
        PlatformCollector,
        ProcessCollector,
        generate_latest,
        start_http_server,
    )
    from prometheus_client.core import GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError:  # pragma: no cover - the [metrics] extra is not installed
    METRICS = False
    Collector = object  # type: ignore[misc,assignment]
else:
    METRICS = True

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from asyncjobs.backends.base import Insights

logger = logging.getLogger(__name__)

#: what ``/metrics`` answers with (the Prometheus text format)
CONTENT_TYPE = CONTENT_TYPE_LATEST if METRICS else "text/plain; version=0.0.4; charset=utf-8"
#: seconds; from a few ms (a warm queue) to an hour (a backlog or a long job)
BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    600.0, 1800.0, 3600.0,
)  # fmt: skip


def require() -> None:
    """``ConfigurationError`` unless prometheus_client is installed."""
    if not METRICS:
        raise ConfigurationError(
            "Prometheus metrics need prometheus_client: pip install 'asyncjobs[metrics]'"
        )


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    if GC_COLLECTOR is not None:  # absent on interpreters without gc.get_stats
        GCCollector(registry=registry)
    return registry


# ---------------------------------------------------------------------- worker


class WorkerMetrics:
    """The counters and histograms of one worker, and its endpoint."""

    def __init__(self, worker_id: str, concurrency: int, running: Callable[[], int]) -> None:
        require()
        self.registry = registry = _registry()
        per_run = ["job", "queue"]
        self.started = Counter(
            "asyncjobs_runs_started", "Runs this worker claimed and started", per_run,
            registry=registry,
        )
        self.finished = Counter(
            "asyncjobs_runs_finished",
            "Attempts this worker finished, by outcome (succeeded, failed, retrying, cancelled, "
            "handed_back, lease_lost, aborted)",
            [*per_run, "status"], registry=registry,
        )
        self.wait = Histogram(
            "asyncjobs_run_wait_seconds",
            "From ready (created, not_before or retry time) to claimed, by the database clock",
            per_run, buckets=BUCKETS, registry=registry,
        )
        self.duration = Histogram(
            "asyncjobs_run_duration_seconds", "Time one attempt ran in this worker, by outcome",
            [*per_run, "status"], buckets=BUCKETS, registry=registry,
        )  # fmt: skip
        registry.register(_WorkerGauges(worker_id, concurrency, running))
        self._server: WSGIServer | None = None

    def run_started(self, record: RunRecord) -> None:
        self.started.labels(record.job, record.queue).inc()
        if record.started_at is not None:
            ready = max(record.created_at, record.not_before)
            waited = (record.started_at - ready).total_seconds()
            self.wait.labels(record.job, record.queue).observe(max(waited, 0.0))

    def run_finished(self, record: RunRecord, status: str, seconds: float) -> None:
        self.finished.labels(record.job, record.queue, status).inc()
        self.duration.labels(record.job, record.queue, status).observe(seconds)

    def serve(self, host: str, port: int) -> int:
        """Serve ``/metrics`` on a daemon thread; returns the port (``0`` picks a free one)."""
        try:
            self._server, _ = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise ConfigurationError(f"cannot serve metrics on {host}:{port}: {exc}") from exc
        bound: int = self._server.server_port
        return bound

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await asyncio.to_thread(server.shutdown)  # waits out its 0.5 s poll
            server.server_close()


class _WorkerGauges(Collector):
    """Read at scrape time (from the endpoint's thread: plain reads of ints)."""

    def __init__(self, worker_id: str, concurrency: int, running: Callable[[], int]) -> None:
        self._id = worker_id
        self._concurrency = concurrency
        self._running = running

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "asyncjobs_worker_info", "This worker's id (value 1)", labels=["worker_id"]
        )
        info.add_metric([self._id], 1)
        yield info
        yield GaugeMetricFamily(
            "asyncjobs_worker_running", "Runs executing in this worker now", self._running()
        )
        yield GaugeMetricFamily(
            "asyncjobs_worker_concurrency", "Runs this worker executes at most at once",
            self._concurrency,
        )  # fmt: skip


# ---------------------------------------------------------------------- dashboard


class ClusterMetrics:
    """``/metrics`` of the dashboard: the process collectors plus the database gauges, read
    once per scrape (concurrent scrapes share one read)."""

    def __init__(self, worker_ttl: float, streams: Callable[[], int]) -> None:
        require()
        self.worker_ttl = worker_ttl
        self.registry = _registry()
        self.registry.register(_Gauge("asyncjobs_dashboard_streams", "Open SSE streams", streams))
        self._reading: asyncio.Future[tuple[ClusterGauges, float]] | None = None

    async def render(self, backend: Insights) -> bytes:
        gauges, seconds = await self._read(backend)
        return generate_latest(_Joined(self.registry, cluster_families(gauges, seconds)))

    async def _read(self, backend: Insights) -> tuple[ClusterGauges, float]:
        reading = self._reading
        if reading is None or reading.done():  # none under way: a fresh read, never a stale one
            reading = self._reading = asyncio.ensure_future(self._query(backend))
        # shielded: a scraper that leaves does not cancel the read the others wait for
        return await asyncio.shield(reading)

    async def _query(self, backend: Insights) -> tuple[ClusterGauges, float]:
        began = time.perf_counter()
        gauges = await backend.cluster_gauges(self.worker_ttl)
        return gauges, time.perf_counter() - began


def cluster_families(gauges: ClusterGauges, seconds: float) -> list[Metric]:
    """The database gauges as metric families (queues, jobs, workers)."""
    families: list[Metric] = [
        *_load_families("queue", gauges.queues),
        *_load_families("job", gauges.jobs),
        GaugeMetricFamily(
            "asyncjobs_workers_alive", "Workers with a recent heartbeat", gauges.workers_alive
        ),
        GaugeMetricFamily(
            "asyncjobs_worker_slots", "Concurrency of the live workers, summed",
            gauges.worker_slots,
        ),
        GaugeMetricFamily(
            "asyncjobs_metrics_query_seconds", "How long this scrape's database read took",
            seconds,
        ),
    ]  # fmt: skip
    return families


_LOAD_FIELDS: tuple[tuple[str, str, Callable[[Load], Any]], ...] = (
    ("depth", "Pending runs (scheduled ones included)", lambda x: x.pending),
    ("ready", "Pending runs whose not_before has passed", lambda x: x.ready),
    ("oldest_ready_age_seconds", "How long the oldest ready pending run has waited",
     lambda x: x.oldest_age),
    ("running", "Running runs (parents waiting on children included)", lambda x: x.running),
    ("enabled", "1 when enabled, 0 when switched off (nothing is claimed)",
     lambda x: int(x.enabled)),
)  # fmt: skip


def _load_families(kind: str, loads: Iterable[Load]) -> list[Metric]:
    loads = list(loads)
    families: list[Metric] = []
    for field, text, value in _LOAD_FIELDS:
        family = GaugeMetricFamily(f"asyncjobs_{kind}_{field}", f"{text}, by {kind}", labels=[kind])
        for load in loads:
            family.add_metric([load.name], value(load))
        families.append(family)
    limit = GaugeMetricFamily(
        f"asyncjobs_{kind}_limit", f"Cluster-wide limit of running runs, by {kind} (limited only)",
        labels=[kind],
    )
    for load in loads:
        if load.limit is not None:
            limit.add_metric([load.name], load.limit)
    families.append(limit)
    return families


class _Gauge(Collector):
    def __init__(self, name: str, text: str, read: Callable[[], float]) -> None:
        self._family = (name, text)
        self._read = read

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(*self._family, self._read())


class _Joined(Collector):
    """A registry's metrics followed by families computed for this one scrape."""

    def __init__(self, registry: CollectorRegistry, extra: list[Metric]) -> None:
        self._registry = registry
        self._extra = extra

    def collect(self) -> Iterator[Metric]:
        yield from self._registry.collect()
        yield from self._extra
