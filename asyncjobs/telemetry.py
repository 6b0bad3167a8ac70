"""OpenTelemetry tracing: a PRODUCER span per trigger, a CONSUMER span per execution attempt.

Optional (``pip install 'asyncjobs[otel]'``): only ``opentelemetry-api`` is used, no SDK and no
exporter is chosen here. Without an SDK configured the API's spans do nothing (measured in
``benchmarks/otel_overhead.py``); without the package at all ``TRACING`` is False, found once
at import, and callers skip this module with that one check.

The trace crosses the database: the trigger span's context is injected with the configured
propagator (W3C ``traceparent``/``tracestate`` by default) into a small JSON object stored on
the run (``runs.trace_context``). The worker extracts it, so the execution span is a child of
the trigger span, which was itself a child of whatever span was current when ``trigger`` was
called: a web request's span, or — for a child run — the parent run's execution span. Every
attempt of a run (retries, restarts) is a sibling span under the same trigger span.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import orjson

from asyncjobs.backends.base import Enqueued
from asyncjobs.runs import RunRecord, Trigger

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, StatusCode
except ImportError:  # pragma: no cover - the [otel] extra is not installed
    TRACING = False
else:
    TRACING = True

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer, TracerProvider

logger = logging.getLogger(__name__)

#: the most bytes of propagation headers stored per run (the table checks it too)
MAX_CONTEXT_BYTES = 4096
#: headers kept when a propagator's carrier is over ``MAX_CONTEXT_BYTES`` (baggage dropped)
_TRACE_HEADERS = ("traceparent", "tracestate")

_tracer: Tracer | None = None


def set_tracer_provider(provider: TracerProvider | None) -> None:
    """Make asyncjobs' spans with ``provider`` instead of the global one (``None``: the
    global one again), e.g. in a test that must not touch the process-wide provider."""
    global _tracer
    _tracer = None if provider is None else provider.get_tracer("asyncjobs")


def _get_tracer() -> Tracer:
    # the global tracer is looked up per span: an SDK configured after asyncjobs was imported
    # takes effect at once (the API's proxy would too, but only for tracers taken from it)
    return _tracer or trace.get_tracer("asyncjobs")


# ---------------------------------------------------------------------- client side


async def traced_trigger(
    job: str,
    queue: str,
    trigger: Trigger,
    insert: Callable[[str | None], Awaitable[list[Enqueued]]],
) -> list[Enqueued]:
    """Run ``insert(trace_context)`` inside a ``asyncjobs.trigger <job>`` PRODUCER span whose
    context it stores with the runs."""
    with _get_tracer().start_as_current_span(
        f"asyncjobs.trigger {job}", kind=SpanKind.PRODUCER
    ) as span:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        enqueued = await insert(encode_context(carrier))
        if span.is_recording():
            span.set_attributes(_attributes(job, queue, trigger, "send"))
            if len(enqueued) == 1:
                span.set_attribute("asyncjobs.run_id", enqueued[0].run_id)
                span.set_attribute("asyncjobs.created", enqueued[0].created)
            else:
                span.set_attribute("asyncjobs.run_count", len(enqueued))
        return enqueued


def encode_context(carrier: dict[str, str]) -> str | None:
    """The propagator's headers as stored on the run: JSON, at most ``MAX_CONTEXT_BYTES``
    (big baggage is dropped, the trace headers are kept); ``None`` when there is no trace."""
    if not carrier:
        return None
    encoded = orjson.dumps(carrier)
    if len(encoded) > MAX_CONTEXT_BYTES:
        kept = {k: v for k, v in carrier.items() if k in _TRACE_HEADERS}
        encoded = orjson.dumps(kept)
        if not kept or len(encoded) > MAX_CONTEXT_BYTES:
            logger.debug("trace context of %d bytes not stored", len(encoded))
            return None
    return encoded.decode()


# ---------------------------------------------------------------------- worker side


@contextmanager
def execution_span(record: RunRecord) -> Iterator[Span]:
    """The CONSUMER span of one attempt, current while the job runs (so runs it triggers
    become its children), with the stored trace context as its parent. The caller ends it
    with ``finish``; exceptions are recorded there, not by the context manager."""
    # an empty Context, not the current one: a run without a stored context starts a trace of
    # its own instead of joining whatever span the worker itself was started in
    parent = propagate.extract(record.trace_context or {}, context=otel_context.Context())
    with _get_tracer().start_as_current_span(
        f"asyncjobs.run {record.job}",
        context=parent,
        kind=SpanKind.CONSUMER,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        if span.is_recording():
            span.set_attributes(_attributes(record.job, record.queue, record.trigger, "process"))
            span.set_attribute("asyncjobs.run_id", record.id)
            span.set_attribute("asyncjobs.attempt", record.attempt)
            span.set_attribute("asyncjobs.max_attempts", record.max_attempts)
            if record.parent_run_id is not None:
                span.set_attribute("asyncjobs.parent_run_id", record.parent_run_id)
        yield span


def finish(span: Span, status: str, error: BaseException | None) -> None:
    """Record the attempt's outcome (``asyncjobs.status``); a failed attempt (``failed``, or
    ``retrying``: a retry follows) gets its exception and status ERROR."""
    if not span.is_recording():
        return
    span.set_attribute("asyncjobs.status", status)
    if error is not None and status in ("failed", "retrying"):
        span.record_exception(error)
        span.set_status(StatusCode.ERROR, f"{type(error).__name__}: {error}"[:1000])


def _attributes(job: str, queue: str, trigger: Trigger, operation: str) -> dict[str, Any]:
    return {
        "asyncjobs.job": job,
        "asyncjobs.queue": queue,
        "asyncjobs.trigger": trigger.value,
        # the messaging conventions, so generic tools group the spans by queue
        "messaging.system": "asyncjobs",
        "messaging.destination.name": queue,
        "messaging.operation.type": operation,
    }
