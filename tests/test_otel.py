"""OpenTelemetry: one trace from a web request through a parent run to its child runs, across
two real worker processes, with the right parentage (asyncjobs/telemetry.py).

The test process plays the web service: its "request" span is current when it triggers the
parent. Worker A serves queue ``front`` (the parent), worker B queue ``back`` (the children),
so every child runs in another process than its parent. Each worker exports its spans as
JSON lines (tests/otel_apps.py); the test reads them all.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import orjson
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from asyncjobs import SyncClient, telemetry
from tests.otel_apps import SPANS_ENV, app, parent, quick, span_json

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
CHILDREN = 3


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """asyncjobs' spans in this process go to memory (the global provider is left alone)."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    telemetry.set_tracer_provider(provider)
    try:
        yield memory
    finally:
        telemetry.set_tracer_provider(None)
        provider.shutdown()


def _start_worker(dsn: str, queue: str, folder: Path, *extra: str) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "asyncjobs", "worker", "tests.otel_apps:app", "--dsn", dsn,
        "--queues", queue, "--concurrency", "4", "--poll-interval", "0.2", *extra,
    ]  # fmt: skip
    with (folder / f"worker-{queue}.log").open("wb") as log:
        return subprocess.Popen(
            command, cwd=ROOT, env={**os.environ, SPANS_ENV: str(folder)},
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip


def _stop(workers: list[subprocess.Popen[bytes]]) -> None:
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    for worker in workers:
        try:
            assert worker.wait(timeout=30) == 0
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
            raise


def _metrics_url(log: Path) -> str:
    """The worker logs where it serves its metrics once it has started."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = re.search(rb"metrics on (http://\S+/metrics)", log.read_bytes())
        if found:
            return found.group(1).decode()
        time.sleep(0.05)
    raise AssertionError(f"no metrics endpoint in {log.read_text()}")


def _samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_one_trace_from_a_request_to_child_runs_in_another_process(
    dsn: str, tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    workers = [
        _start_worker(dsn, "front", tmp_path),
        _start_worker(dsn, "back", tmp_path, "--metrics-port", "0"),
    ]
    try:
        async with app.client(dsn):
            # the web framework's span, current while the route triggers the parent
            web = TracerProvider().get_tracer("web")
            with web.start_as_current_span("GET /checkout", kind=trace.SpanKind.SERVER) as request:
                run = await parent.trigger_async(count=CHILDREN)
            assert await run.result(timeout=90) == [n * 10 for n in range(CHILDREN)]
            stored = (await run.get()).trace_context
        back = _samples(_metrics_url(tmp_path / "worker-back.log"))
    finally:
        _stop(workers)

    request_id = f"{request.get_span_context().span_id:016x}"
    trace_id = f"{request.get_span_context().trace_id:032x}"
    local = [span_json(s) for s in exporter.get_finished_spans()]
    remote = _exported(tmp_path)
    spans = local + remote
    assert {s["trace_id"] for s in spans} == {trace_id}

    # the request → the parent's trigger span (here) → its execution span (worker A)
    (trigger,) = [s for s in local if s["name"] == "asyncjobs.trigger parent"]
    assert (trigger["kind"], trigger["parent_id"]) == ("PRODUCER", request_id)
    assert _attrs(trigger, "job", "queue", "trigger", "run_id") == (
        "parent", "front", "user", run.id
    )  # fmt: skip
    assert stored is not None and trace_id in stored["traceparent"]
    (execution,) = [s for s in remote if s["name"] == "asyncjobs.run parent"]
    assert (execution["kind"], execution["parent_id"]) == ("CONSUMER", trigger["span_id"])
    assert _attrs(execution, "run_id", "attempt", "status") == (run.id, 1, "succeeded")
    process_a = execution["pid"]

    # the children's trigger spans are children of the parent's execution span, in A...
    triggers = [s for s in remote if s["name"] == "asyncjobs.trigger child"]
    assert len(triggers) == CHILDREN
    for span in triggers:
        assert (span["parent_id"], span["pid"]) == (execution["span_id"], process_a)
        assert _attrs(span, "trigger", "queue") == ("child", "back")
    by_run = {s["attributes"]["asyncjobs.run_id"]: s for s in triggers}

    # ... and each child attempt is a child of its trigger span, in worker B
    attempts = [s for s in remote if s["name"] == "asyncjobs.run child"]
    assert len(attempts) == CHILDREN + 1  # the last child failed once and was retried
    for span in attempts:
        assert span["pid"] != process_a
        assert span["parent_id"] == by_run[span["attributes"]["asyncjobs.run_id"]]["span_id"]
    failed = [s for s in attempts if s["status"] == "ERROR"]
    assert len(failed) == 1
    assert _attrs(failed[0], "attempt", "status") == (1, "retrying")
    assert failed[0]["events"] == ["exception"]
    retried = failed[0]["attributes"]["asyncjobs.run_id"]
    statuses = sorted(_attrs(s, "attempt", "status") for s in attempts if _run(s) == retried)
    assert statuses == [(1, "retrying"), (2, "succeeded")]

    # worker B's own endpoint counted exactly the attempts it ran
    labels = (("job", "child"), ("queue", "back"))
    assert back[("asyncjobs_runs_started_total", labels)] == CHILDREN + 1
    assert back[("asyncjobs_runs_finished_total", (*labels, ("status", "succeeded")))] == CHILDREN
    assert back[("asyncjobs_runs_finished_total", (*labels, ("status", "retrying")))] == 1
    assert back[("asyncjobs_run_duration_seconds_count", (*labels, ("status", "succeeded")))] == 3
    assert back[("asyncjobs_run_wait_seconds_count", labels)] == CHILDREN + 1


def _exported(folder: Path) -> list[dict[str, Any]]:
    """The spans the worker processes wrote (each at its end, before its run completed)."""
    return [
        orjson.loads(line)
        for path in folder.glob("spans-*.jsonl")
        for line in path.read_bytes().splitlines()
    ]


def _run(span: dict[str, Any]) -> int:
    return int(span["attributes"]["asyncjobs.run_id"])


def _attrs(span: dict[str, Any], *names: str) -> tuple[Any, ...]:
    return tuple(span["attributes"].get(f"asyncjobs.{name}") for name in names)


async def test_a_run_triggered_outside_any_trace_starts_its_own(
    dsn: str, exporter: InMemorySpanExporter
) -> None:
    """No current span: the trigger span is a root and the execution span its child; a run
    stored without a context (a schedule's, an old client's) gets a root span of its own, not
    one under whatever span the worker was started in."""
    outer = TracerProvider().get_tracer("tests")
    async with app.client(dsn) as client:
        run = await client.trigger_async(quick)
        conn = await asyncpg.connect(dsn)
        try:
            bare = await conn.fetchval(
                "INSERT INTO asyncjobs.runs (job, queue, args, root_run_id)"
                " VALUES ('quick', 'front', '{}', 0) RETURNING id"
            )
            await conn.execute("UPDATE asyncjobs.runs SET root_run_id = id WHERE id = $1", bare)
        finally:
            await conn.close()
        with outer.start_as_current_span("worker start-up"):
            worker = app.worker(dsn, queues=["front"], poll_interval=0.1)
        async with worker:
            await run.result(timeout=30)
            await client.wait(bare, timeout=30)
    spans = {
        f"{s.name} {(s.attributes or {}).get('asyncjobs.run_id')}": s
        for s in exporter.get_finished_spans()
    }
    trigger = spans[f"asyncjobs.trigger quick {run.id}"]
    assert trigger.parent is None
    execution = spans[f"asyncjobs.run quick {run.id}"]
    assert execution.parent is not None and execution.parent.span_id == trigger.context.span_id
    assert execution.context.trace_id == trigger.context.trace_id
    orphan = spans[f"asyncjobs.run quick {bare}"]
    assert orphan.parent is None


async def test_sync_callers_and_retries_join_the_callers_trace(
    dsn: str, exporter: InMemorySpanExporter
) -> None:
    """A Django-style caller (``SyncClient`` from a thread with a current span) and an
    operator's "run it again" both store the trace they were called in."""
    web = TracerProvider().get_tracer("web")
    async with app.client(dsn) as client, app.worker(dsn, queues=["front"], poll_interval=0.1):
        first = await client.trigger_async(quick)
        await first.result(timeout=30)

        def sync_request() -> tuple[int, int]:
            with web.start_as_current_span("POST /sync") as span, SyncClient(app, dsn) as sync:
                return sync.trigger(quick).id, span.get_span_context().trace_id

        sync_run, sync_trace = await anyio.to_thread.run_sync(sync_request)
        with web.start_as_current_span("POST /retry") as span:
            again = await client.retry(first.id)
        retry_trace = span.get_span_context().trace_id
        await client.wait(again.id, timeout=30)
        await client.wait(sync_run, timeout=30)
        stored = {r: (await client.get_run(r)).trace_context or {} for r in (sync_run, again.id)}
    assert f"{sync_trace:032x}" in stored[sync_run]["traceparent"]
    assert f"{retry_trace:032x}" in stored[again.id]["traceparent"]
    executions = {
        (s.attributes or {}).get("asyncjobs.run_id"): s
        for s in exporter.get_finished_spans()
        if s.name == "asyncjobs.run quick"
    }
    assert executions[again.id].context.trace_id == retry_trace
    assert _attrs(span_json(executions[again.id]), "trigger") == ("retry",)


def test_stored_context_is_bounded() -> None:
    traceparent = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
    assert telemetry.encode_context({}) is None
    small = {"traceparent": traceparent, "baggage": "k=v"}
    assert orjson.loads(telemetry.encode_context(small) or "") == small
    # baggage past the limit is dropped, the trace headers stay
    big = {"traceparent": traceparent, "tracestate": "a=b", "baggage": "k=" + "v" * 5000}
    kept = orjson.loads(telemetry.encode_context(big) or "")
    assert kept == {"traceparent": traceparent, "tracestate": "a=b"}
    assert telemetry.encode_context({"baggage": "k=" + "v" * 5000}) is None


async def test_without_the_extras_nothing_is_observed(dsn: str) -> None:
    """Without opentelemetry-api and prometheus_client, asyncjobs imports, runs jobs and
    stores no context; the worker keeps no observer at all (not one call per run), and asking
    for metrics is a ConfigurationError that says what to install."""
    script = """
import asyncio, sys
import httpx
sys.modules["opentelemetry"] = None  # as if they were not installed
sys.modules["prometheus_client"] = None
from asyncjobs import ConfigurationError, metrics, telemetry
from tests.otel_apps import app, quick
assert not telemetry.TRACING and not metrics.METRICS
try:
    app.worker(sys.argv[1], metrics_port=0)
except ConfigurationError as exc:
    assert "asyncjobs[metrics]" in str(exc)
else:
    raise AssertionError("metrics_port without prometheus_client")

async def main():
    async with app.client(sys.argv[1]) as client:
        run = await quick.trigger_async()
        worker = app.worker(sys.argv[1], queues=["front"], poll_interval=0.1)
        assert worker._observer is None
        async with worker:
            await run.result(timeout=30)
        assert (await run.get()).trace_context is None
    transport = httpx.ASGITransport(app=app.asgi(sys.argv[1]))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        response = await http.get("/metrics")
    assert response.status_code == 501 and "asyncjobs[metrics]" in response.text, response.text
    print("ok")

asyncio.run(main())
"""
    script = script.replace("from tests.otel_apps import app, quick", _APP_WITHOUT_OTEL)
    with anyio.fail_after(120):
        done = await anyio.run_process([sys.executable, "-c", script, dsn], cwd=ROOT, check=False)
    assert done.returncode == 0 and done.stdout.strip() == b"ok", done.stderr.decode()


# tests/otel_apps.py imports the SDK; the script defines an equivalent app without it
_APP_WITHOUT_OTEL = """
from asyncjobs import App
app = App("otel")
app.queue("front")

@app.job(queue="front")
async def quick() -> None:
    pass
"""
