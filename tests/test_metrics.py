"""Prometheus metrics (asyncjobs/metrics.py), tested by scraping: the dashboard's ``/metrics``
against the database, its guard, its one cheap query, and a worker's own endpoint."""

from __future__ import annotations

import asyncio
import json
import socket
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from asyncjobs import App, ConfigurationError
from asyncjobs.backends.base import WorkerInfo
from asyncjobs.gauges import ClusterGauges, Load
from asyncjobs.metrics import ClusterMetrics
from asyncjobs.sql import QUERIES
from tests.plan_support import plan_nodes
from tests.web_support import dashboard

pytestmark = pytest.mark.anyio

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _parse(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _shop() -> App:
    app = App("shop")
    app.queue("mail", max_concurrency=2)
    app.queue("idle")

    @app.job(queue="mail", max_concurrency=1)
    async def send(n: int) -> None:
        pass

    @app.job
    async def report(n: int) -> None:
        pass

    return app


async def test_dashboard_metrics_match_the_database(dsn: str) -> None:
    app = _shop()
    later = datetime.now(UTC) + timedelta(hours=1)
    async with app.client(dsn) as client:
        await client.backend.register_definitions(*app.definitions())
        await client.trigger_many("send", [{"n": n} for n in range(4)])
        await client.trigger_async(app.get_job("send").options(not_before=later), n=9)
        await client.trigger_many("report", [{"n": n} for n in range(3)])
        info = WorkerInfo("w-1", "host", 1, ("mail",), ("send",), 4)
        await client.backend.register_worker(info)
        (claimed,) = await client.backend.claim("w-1", ["mail"], ["send"], 1, 30)

        async with dashboard(app, dsn) as server, httpx.AsyncClient(base_url=server.url) as http:
            response = await http.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=")
        samples = _parse(response.text)

    conn = await asyncpg.connect(dsn)
    try:
        depth = {queue: n for queue, n in await conn.fetch(
            "SELECT queue, count(*) FROM asyncjobs.runs WHERE status = 'pending' GROUP BY queue"
        )}  # fmt: skip
        oldest = await conn.fetchval(
            "SELECT extract(epoch FROM now() - min(not_before))::float8 FROM asyncjobs.runs"
            " WHERE status = 'pending' AND queue = 'mail' AND not_before <= now()"
        )
    finally:
        await conn.close()
    assert depth == {"mail": 4, "default": 3}
    for queue in ("mail", "default", "idle"):
        assert samples[("asyncjobs_queue_depth", (("queue", queue),))] == depth.get(queue, 0)
    assert samples[("asyncjobs_queue_ready", (("queue", "mail"),))] == 3  # one is scheduled
    assert samples[("asyncjobs_queue_running", (("queue", "mail"),))] == 1
    assert samples[("asyncjobs_queue_limit", (("queue", "mail"),))] == 2
    assert ("asyncjobs_queue_limit", (("queue", "default"),)) not in samples  # unlimited
    assert samples[("asyncjobs_queue_enabled", (("queue", "idle"),))] == 1
    age = samples[("asyncjobs_queue_oldest_ready_age_seconds", (("queue", "mail"),))]
    assert 0 < age <= oldest
    assert samples[("asyncjobs_queue_oldest_ready_age_seconds", (("queue", "idle"),))] == 0
    assert samples[("asyncjobs_job_running", (("job", claimed.job),))] == 1
    assert samples[("asyncjobs_job_limit", (("job", "send"),))] == 1
    assert samples[("asyncjobs_job_depth", (("job", "report"),))] == 3
    assert samples[("asyncjobs_workers_alive", ())] == 1
    assert samples[("asyncjobs_worker_slots", ())] == 4
    assert samples[("asyncjobs_dashboard_streams", ())] == 0
    assert samples[("asyncjobs_metrics_query_seconds", ())] > 0
    assert ("process_cpu_seconds_total", ()) in samples


async def test_metrics_are_guarded_like_the_api(dsn: str) -> None:
    app = _shop()
    async with (
        dashboard(app, dsn, token="s3cret-s3cret-s3cret") as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        assert (await http.get("/metrics")).status_code == 401
        wrong = await http.get("/metrics", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401
        right = await http.get("/metrics", headers={"authorization": "Bearer s3cret-s3cret-s3cret"})
        assert right.status_code == 200
        assert ("asyncjobs_workers_alive", ()) in _parse(right.text)
    async with (
        dashboard(app, dsn) as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        # without a token, only loopback Host names (DNS rebinding)
        rebound = await http.get("/metrics", headers={"host": "evil.example"})
        assert rebound.status_code == 403


async def test_the_gauges_query_reads_no_finished_run(dsn: str) -> None:
    """One query per scrape, walking only the partial indexes of pending and running runs:
    its cost does not grow with the history of finished runs."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("""
            INSERT INTO asyncjobs.queues (name, max_concurrency) VALUES ('q0', 5), ('q1', NULL);
            INSERT INTO asyncjobs.runs (job, queue, args, root_run_id, status, finished_at)
            SELECT 'j' || g % 7, 'q' || g % 2, '{}', g, 'succeeded', now()
              FROM generate_series(1, 30000) g;
            INSERT INTO asyncjobs.runs (job, queue, args, root_run_id)
            SELECT 'j' || g % 7, 'q' || g % 2, '{}', g FROM generate_series(1, 200) g;
            ANALYZE asyncjobs.runs;
        """)  # fmt: skip
        explained = await conn.fetchval(
            "EXPLAIN (FORMAT JSON) " + QUERIES["cluster_gauges"].text,
            # :now NULL: the database clock
            *QUERIES["cluster_gauges"].arguments(
                (), {"worker_ttl": timedelta(seconds=30), "now": None}
            ),
        )
    finally:
        await conn.close()
    plan = json.loads(explained)[0]["Plan"]
    scans = [n for n in plan_nodes(plan) if n.get("Relation Name") == "runs"]
    assert len(scans) == 2, scans  # pending and running, each read once
    assert {n["Node Type"] for n in scans} <= {"Index Scan", "Index Only Scan", "Bitmap Heap Scan"}



class _SlowBackend:
    """Counts reads; each waits until released."""

    def __init__(self) -> None:
        self.reads = 0
        self.release = asyncio.Event()

    async def cluster_gauges(self, worker_ttl_seconds: float) -> ClusterGauges:
        self.reads += 1
        await self.release.wait()
        return ClusterGauges((Load("q", self.reads, 0, 0.0, 0, None, True),), (), 0, 0)


async def test_concurrent_scrapes_share_one_read() -> None:
    backend = _SlowBackend()
    cluster = ClusterMetrics(30.0, lambda: 0)
    scrapes = [asyncio.ensure_future(cluster.render(backend)) for _ in range(3)]  # type: ignore[arg-type]
    await asyncio.sleep(0)
    backend.release.set()
    bodies = await asyncio.gather(*scrapes)
    assert backend.reads == 1
    assert all(b'asyncjobs_queue_depth{queue="q"} 1.0' in body for body in bodies)
    again = await cluster.render(backend)  # type: ignore[arg-type]
    assert backend.reads == 2 and b'asyncjobs_queue_depth{queue="q"} 2.0' in again


async def test_worker_endpoint_counts_its_runs(dsn: str) -> None:
    app = App("counting")

    @app.job(retries=0)
    async def work(fail: bool) -> None:
        if fail:
            raise ValueError("no")

    async with app.client(dsn) as client:
        runs = await client.trigger_many(work, [{"fail": n == 0} for n in range(5)])
        worker = app.worker(dsn, metrics_port=0, poll_interval=0.1, concurrency=3)
        async with worker:
            assert worker.metrics_url is not None
            assert worker.metrics_url.startswith("http://127.0.0.1:")
            for run in runs:
                await run.wait(timeout=30)
            async with httpx.AsyncClient() as http:
                samples = _parse((await http.get(worker.metrics_url)).text)
        with pytest.raises(httpx.ConnectError):  # the endpoint ends with the worker
            async with httpx.AsyncClient() as http:
                await http.get(worker.metrics_url)
    labels = (("job", "work"), ("queue", "default"))
    assert samples[("asyncjobs_runs_started_total", labels)] == 5 == worker.stats.claimed
    assert worker.stats.by_job == {"work": 5}
    succeeded = samples[("asyncjobs_runs_finished_total", (*labels, ("status", "succeeded")))]
    failed = samples[("asyncjobs_runs_finished_total", (*labels, ("status", "failed")))]
    assert (succeeded, failed) == (4, 1) == (worker.stats.succeeded, worker.stats.failed)
    assert samples[("asyncjobs_run_wait_seconds_count", labels)] == 5
    assert samples[("asyncjobs_worker_concurrency", ())] == 3
    assert samples[("asyncjobs_worker_running", ())] == 0
    assert samples[("asyncjobs_worker_info", (("worker_id", worker.id),))] == 1


async def test_a_taken_metrics_port_is_a_configuration_error(dsn: str) -> None:
    app = _shop()
    with pytest.raises(ConfigurationError, match="metrics_port must be 0 to 65535"):
        app.worker(dsn, metrics_port=70000)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        worker = app.worker(dsn, metrics_port=taken.getsockname()[1])
        with pytest.raises(ConfigurationError, match="cannot serve metrics"):
            await worker.__aenter__()
