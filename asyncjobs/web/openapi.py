"""The OpenAPI 3.1 description of the dashboard's HTTP API, served at ``/api/openapi.json``.

Generated: the component schemas are the response and request models' JSON schemas
(``asyncjobs/web/models.py``, which the handlers send), the paths and their parameters come
from the route table, and ``OPERATIONS`` below adds what a route cannot say by itself: what
it means, its query parameters (as a model), its body and its status codes. A served route
without an entry here makes the document fail to build. The trigger endpoint's argument
schemas are each job's own (``job.args.json_schema()``, redaction marked) as ``args.<job>``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from starlette.convertors import FloatConvertor, IntegerConvertor
from starlette.routing import BaseRoute, Route

from asyncjobs.web import models
from asyncjobs.web.queries import (
    ActivityQuery,
    FeedQuery,
    RunEventsQuery,
    RunsQuery,
    TreeQuery,
    WorkersQuery,
)

if TYPE_CHECKING:
    from asyncjobs.app import App
    from asyncjobs.web.redaction import Redactor

JSON = "application/json"
SSE = "text/event-stream"
TEXT = "text/plain"
REF = "#/components/schemas/{model}"
#: (model, schema mode) -> its ``$ref``
Refs = dict[tuple[Any, str], dict[str, Any]]


@dataclass(frozen=True)
class Body:
    """One response: a model as JSON, a model per SSE message, or plain text."""

    description: str
    model: type[BaseModel] | None = None
    media: str = JSON


@dataclass(frozen=True)
class Operation:
    summary: str
    responses: dict[int, Body | list[Body]]
    description: str = ""
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    body_required: bool = True
    #: guarded by the security middleware (every /api path but this document, and /metrics)
    errors: dict[int, Body] = field(default_factory=dict)


def _error(description: str) -> Body:
    return Body(description, models.Error)


#: what any guarded endpoint may answer
GUARDED = {
    400: _error("Malformed parameters or body"),
    401: _error("A token is configured and none was sent"),
    403: _error("Forbidden: no token, no CSRF token, foreign Origin or Host"),
    422: _error("A value cannot be stored or compared (e.g. a NUL in a name)"),
    503: _error("The database is unavailable"),
}
POSTED = {
    **GUARDED,
    413: _error("The body is larger than 1 MiB"),
    415: _error("The body is not application/json"),
}
NO_RUN = {404: _error("No such run")}
POST_NOTE = (
    "Needs the token when one is configured (Bearer header, or the session cookie plus the "
    "`X-CSRF-Token` header equal to the `asyncjobs_csrf` cookie) and a JSON body."
)
STREAM_NOTE = (
    "Server-sent events. Each message's `id` is a feed cursor (`<xid>-<event id>`); reconnect "
    "with `Last-Event-ID` (EventSource does it) to resume with no gap and no duplicate. "
    "The message's `event` is its `kind`: `snapshot`, `events` and (trace streams only) `end`; "
    "its `data` is the schema shown."
)
BUSY = {503: _error("Too many open streams, or the database is unavailable")}


def _switch(kind: str) -> Operation:
    return Operation(
        f"Enable or disable a {kind} cluster-wide",
        {
            200: Body("Switched", models.Switched),
            404: _error(f"No such {kind}"),
            409: _error("Not stored yet: no worker has registered it"),
        },
        POST_NOTE,
        body=models.SwitchBody,
        errors=POSTED,
    )


OPERATIONS: dict[tuple[str, str], Operation] = {
    ("/api/openapi.json", "GET"): Operation(
        "This document", {200: Body("The OpenAPI document")}, errors={}
    ),
    ("/api/runs", "GET"): Operation(
        "List runs, newest first",
        {200: Body("A page of runs", models.RunPage)},
        query=RunsQuery,
        errors=GUARDED,
    ),
    ("/api/runs/{run_id}", "GET"): Operation(
        "One run, with result, error and traceback",
        {200: Body("The run", models.RunDetail), **NO_RUN},
        errors=GUARDED,
    ),
    ("/api/runs/{run_id}/tree", "GET"): Operation(
        "Every run of the trace tree the run belongs to",
        {200: Body("The tree", models.Tree), **NO_RUN},
        query=TreeQuery,
        errors=GUARDED,
    ),
    ("/api/runs/{run_id}/events", "GET"): Operation(
        "Live events of the run's whole tree (SSE), or the run's own events",
        {
            200: [
                Body("The stream (with `Accept: text/event-stream`)", models.Update, SSE),
                Body("The run's own stored events", models.Events),
            ],
            **NO_RUN,
        },
        STREAM_NOTE + " The stream ends after `end`: every run of the tree has finished and "
        "every event was sent. Without `Accept: text/event-stream` the run's own stored "
        "events come back as JSON (`after` = event id, `limit`).",
        query=RunEventsQuery,
        errors={**GUARDED, **BUSY},
    ),
    ("/api/runs/{run_id}/cancel", "POST"): Operation(
        "Cancel a run (and with cascade its descendants)",
        {200: Body("The runs whose status changed", models.Cancelled), **NO_RUN},
        POST_NOTE,
        body=models.CancelBody,
        body_required=False,
        errors=POSTED,
    ),
    ("/api/runs/{run_id}/explain", "GET"): Operation(
        "Why the run is where it is (Client.explain): a reason code, a sentence and its data "
        "for each thing holding a pending run back",
        {200: Body("The explanation", models.Explanation), **NO_RUN},
        errors=GUARDED,
    ),
    ("/api/runs/{run_id}/retry", "POST"): Operation(
        "Run a finished run again with the same arguments (trigger `retry`, its parent is "
        "the old run)",
        {
            201: Body("Triggered", models.Retried),
            **NO_RUN,
            409: _error("A run with the same dedup id is active"),
            422: _error("The run has not finished"),
        },
        POST_NOTE,
        body=models.CancelBody,
        body_required=False,
        errors=POSTED,
    ),
    ("/api/events", "GET"): Operation(
        "Live changes of every run (SSE), for the run table",
        {200: Body("The stream", models.FeedUpdate, SSE)},
        STREAM_NOTE + " Without a cursor the first message is a `snapshot` of the first page "
        "of runs (filtered like /api/runs); events carry no data here.",
        query=FeedQuery,
        errors={**GUARDED, **BUSY},
    ),
    ("/api/jobs", "GET"): Operation(
        "Jobs (with their argument JSON schema) and queues",
        {200: Body("Jobs and queues", models.Jobs)},
        errors=GUARDED,
    ),
    ("/api/jobs/{name}/trigger", "POST"): Operation(
        "Trigger a run (trigger type `api`)",
        {
            201: Body("Triggered", models.Triggered),
            404: _error("No such job"),
            409: _error("A run with the same dedup id is active"),
            422: _error("The arguments do not fit the job"),
        },
        POST_NOTE + " `args` must match the job's schema, `args.<job>` in the components.",
        body=models.TriggerBody,
        errors=POSTED,
    ),
    ("/api/jobs/{name}/enabled", "POST"): _switch("job"),
    ("/api/queues/{name}/enabled", "POST"): _switch("queue"),
    ("/api/schedules/{name}/enabled", "POST"): _switch("schedule"),
    ("/api/stats", "GET"): Operation(
        "Open streams and broadcaster counters",
        {200: Body("Counters", models.Stats)},
        errors=GUARDED,
    ),
    ("/api/workers", "GET"): Operation(
        "Registered workers: queues, concurrency, running runs, heartbeat",
        {200: Body("The workers", models.Workers)},
        query=WorkersQuery,
        errors=GUARDED,
    ),
    ("/api/schedules", "GET"): Operation(
        "Stored schedules: timing, next and last fire, misfire policy, switch (arguments "
        "redacted like runs')",
        {200: Body("The schedules", models.Schedules)},
        errors=GUARDED,
    ),
    ("/api/activity", "GET"): Operation(
        "Queue load now, and the runs finished within the window per minute and per job "
        "(with p50/p95 duration)",
        {200: Body("The activity", models.Activity)},
        query=ActivityQuery,
        errors=GUARDED,
    ),
    ("/metrics", "GET"): Operation(
        "Prometheus metrics of the cluster and this dashboard (text exposition format)",
        {
            200: Body("The metrics", media=TEXT),
            501: _error("asyncjobs[metrics] (prometheus_client) is not installed"),
        },
        "Guarded like the API: loopback only without a token, else the bearer token.",
        errors={k: v for k, v in GUARDED.items() if k != 400},
    ),
}


def documented_routes(routes: Iterable[BaseRoute]) -> list[tuple[str, str, Route]]:
    """(OpenAPI path, method, route) of every served endpoint the document describes: the
    API and ``/metrics`` (not the page and its static files)."""
    found = []
    for route in routes:
        if not isinstance(route, Route):
            continue
        if not (route.path.startswith("/api/") or route.path == "/metrics"):
            continue
        for method in sorted((route.methods or set()) - {"HEAD"}):
            found.append((_openapi_path(route.path), method, route))
    return found


def _openapi_path(path: str) -> str:
    return re.sub(r"{(\w+):\w+}", r"{\1}", path)


def openapi_document(app: App, redactor: Redactor, routes: Iterable[BaseRoute]) -> dict[str, Any]:
    served = documented_routes(routes)
    operations = [(path, method, route, _operation(path, method)) for path, method, route in served]
    schemas, refs = _components([op for *_, op in operations])
    paths: dict[str, dict[str, Any]] = {}
    for path, method, route, operation in operations:
        paths.setdefault(path, {})[method.lower()] = _describe(route, operation, refs)
    for job in app.jobs.values():
        schemas |= _job_arguments(job.name, redactor.schema(job.name, job.args.json_schema()))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": f"asyncjobs dashboard ({app.name})",
            "version": "1",
            "description": "Runs, trace trees and live events of an asyncjobs app.",
        },
        "paths": paths,
        "components": {"schemas": schemas},
    }


def _operation(path: str, method: str) -> Operation:
    try:
        return OPERATIONS[path, method]
    except KeyError:
        raise LookupError(f"{method} {path} is served but not described in OPERATIONS") from None


def _bodies(operation: Operation) -> list[Body]:
    listed: list[Body] = []
    for body in [*operation.responses.values(), *operation.errors.values()]:
        listed += body if isinstance(body, list) else [body]
    return listed


def _components(
    operations: list[Operation],
) -> tuple[dict[str, Any], Refs]:
    """Every model's JSON schema, nested models and enums as shared components."""
    wanted: set[tuple[type[BaseModel], JsonSchemaMode]] = set()
    for operation in operations:
        wanted |= {(b.model, "serialization") for b in _bodies(operation) if b.model}
        wanted |= {(m, "validation") for m in (operation.body, operation.query) if m}
    ordered = sorted(wanted, key=lambda item: (item[0].__name__, item[1]))
    refs, top = models_json_schema(ordered, ref_template=REF)
    schemas = dict(top.get("$defs", {}))
    queries = {op.query for op in operations if op.query}
    for query in queries:  # parameters, not bodies: listed inline in each operation
        schemas.pop(query.__name__, None)
    return schemas, {key: dict(value) for key, value in refs.items()}


def _describe(route: Route, operation: Operation, refs: Refs) -> dict[str, Any]:
    described: dict[str, Any] = {"summary": operation.summary}
    if operation.description:
        described["description"] = operation.description
    parameters = _path_parameters(route) + _query_parameters(operation.query)
    if parameters:
        described["parameters"] = parameters
    if operation.body is not None:
        described["requestBody"] = {
            "required": operation.body_required,
            "content": {JSON: {"schema": refs[operation.body, "validation"]}},
        }
    responses = {**operation.errors, **operation.responses}
    described["responses"] = {
        str(status): _response(body, refs) for status, body in sorted(responses.items())
    }
    return described


def _response(body: Body | list[Body], refs: Refs) -> dict[str, Any]:
    bodies = body if isinstance(body, list) else [body]
    content = {}
    for one in bodies:
        if one.model is not None:
            schema = refs[one.model, "serialization"]
        else:
            schema = {"type": "string"} if one.media == TEXT else {"type": "object"}
        content[one.media] = {"schema": schema}
    return {"description": " / ".join(one.description for one in bodies), "content": content}


def _path_parameters(route: Route) -> list[dict[str, Any]]:
    kinds = {IntegerConvertor: "integer", FloatConvertor: "number"}
    return [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": {"type": kinds.get(type(convertor), "string")},
        }
        for name, convertor in route.param_convertors.items()
    ]


def _query_parameters(query: type[BaseModel] | None) -> list[dict[str, Any]]:
    if query is None:
        return []
    schema = query.model_json_schema(ref_template=REF)
    parameters = []
    for name, field_schema in schema["properties"].items():
        description = field_schema.pop("description", "")
        field_schema.pop("title", None)
        field_schema = _not_null(field_schema)
        parameters.append(
            {
                "name": name,
                "in": "query",
                "required": False,
                "description": description,
                "schema": field_schema,
            }
        )
    return parameters


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """An optional parameter is absent, never null: ``T | None`` is documented as ``T``."""
    options = schema.get("anyOf")
    if not options or {"type": "null"} not in options:
        return schema
    kept = [option for option in options if option != {"type": "null"}]
    rest = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
    return {**rest, **kept[0]} if len(kept) == 1 else {**rest, "anyOf": kept}


def _job_arguments(job: str, schema: dict[str, Any]) -> dict[str, Any]:
    """A job's argument schema as ``args.<job>``, its ``$defs`` hoisted beside it as
    ``args.<job>.<name>`` (a ``#/$defs/...`` ref would point into the document's root)."""
    prefix = f"args.{job}"

    def moved(value: Any) -> Any:
        if isinstance(value, dict):
            ref = value.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                value = {**value, "$ref": REF.format(model=f"{prefix}.{ref[8:]}")}
            return {key: moved(item) for key, item in value.items()}
        if isinstance(value, list):
            return [moved(item) for item in value]
        return value

    defs = schema.get("$defs", {})
    top = {key: value for key, value in schema.items() if key != "$defs"}
    return {prefix: moved(top)} | {f"{prefix}.{name}": moved(d) for name, d in defs.items()}
