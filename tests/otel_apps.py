"""The app of the observability tests (tests/test_otel.py, tests/test_metrics.py).

Imported by a worker process with ``ASYNCJOBS_TEST_SPANS=<dir>`` set, it installs the
OpenTelemetry SDK as the process's tracer provider, exporting every finished span as one
JSON line to ``<dir>/spans-<pid>.jsonl``: the test reads the files of all its processes and
checks one trace across them.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from asyncjobs import App, Context

SPANS_ENV = "ASYNCJOBS_TEST_SPANS"

app = App("otel")
app.queue("front")
app.queue("back")


@app.job(queue="back", retries=1, backoff_base=0)
async def child(ctx: Context, n: int, fail_first: bool = False) -> int:
    if fail_first and ctx.attempt == 1:
        raise RuntimeError(f"child {n}: the first attempt fails")
    return n * 10


@app.job(queue="front")
async def parent(ctx: Context, count: int) -> list[int]:
    """Runs ``count`` children (the last one fails once) and waits for them all."""
    return list(
        await asyncio.gather(
            *(child.run_async(n=n, fail_first=n == count - 1) for n in range(count))
        )
    )


@app.job(queue="front")
async def quick(ms: int = 0) -> None:
    await asyncio.sleep(ms / 1000)


def span_json(span: ReadableSpan) -> dict[str, Any]:
    """What the tests check of a span."""
    context = span.get_span_context()
    assert context is not None
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        "parent_id": None if span.parent is None else f"{span.parent.span_id:016x}",
        "attributes": dict(span.attributes or {}),
        "status": span.status.status_code.name,
        "events": [event.name for event in span.events],
        "pid": os.getpid(),
    }


class JsonLinesExporter(SpanExporter):
    """Appends each span as a JSON line to a file of this process."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / f"spans-{os.getpid()}.jsonl"

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self.path.open("ab") as out:
            for span in spans:
                out.write(orjson.dumps(span_json(span)) + b"\n")
        return SpanExportResult.SUCCESS


if SPANS_ENV in os.environ:
    _provider = TracerProvider()
    _provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(Path(os.environ[SPANS_ENV]))))
    trace.set_tracer_provider(_provider)
