"""The OpenAPI 3.1 description of the dashboard's HTTP API, served at ``/api/openapi.json``.

Written out rather than derived from the routes, so it can say what each endpoint means; a
test checks that it names exactly the routes there are. The trigger endpoint's body schema
is each job's own argument schema (``job.args.json_schema()``, redaction marked).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from asyncjobs.runs import RunStatus, Trigger

if TYPE_CHECKING:
    from asyncjobs.app import App
    from asyncjobs.web.serialize import Redactor

JSON = "application/json"
SSE = "text/event-stream"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }


def _path(name: str, kind: str = "integer") -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": kind}}


ERRORS = {
    "400": _json(_ref("Error"), "Malformed parameters or body"),
    "401": _json(_ref("Error"), "A token is configured and none was sent"),
    "403": _json(_ref("Error"), "Forbidden: no token, no CSRF token, foreign Origin or Host"),
}
POST_NOTE = (
    "Needs the token when one is configured (Bearer header, or the session cookie plus the "
    "`X-CSRF-Token` header equal to the `asyncjobs_csrf` cookie) and a JSON body."
)
RUN_FILTERS = [
    _query("job", "Job name"),
    _query("status", "Run status", {"enum": [s.value for s in RunStatus]}),
    _query("trigger", "Why the run exists", {"enum": [t.value for t in Trigger]}),
    _query("parent", "Parent run id", {"type": "integer"}),
    _query("root", "Root run id (a whole trace tree)", {"type": "integer"}),
    _query("since", "Created at or after (ISO 8601 with time zone)", {"format": "date-time"}),
    _query("until", "Created before (ISO 8601 with time zone)", {"format": "date-time"}),
    _query("roots", "1: only root runs (no children)", {"enum": ["0", "1"]}),
    _query("limit", "Page size (1-1000, default 50)", {"type": "integer"}),
]
STREAM_NOTE = (
    "Server-sent events. Each message's `id` is a feed cursor (`<xid>-<event id>`); reconnect "
    "with `Last-Event-ID` (EventSource does it) to resume with no gap and no duplicate. "
    "Messages are `snapshot`, `events` and (trace streams only) `end`, each an `Update`."
)


def openapi_document(app: App, redactor: Redactor) -> dict[str, Any]:
    schemas = _schemas()
    for job in app.jobs.values():
        schemas[f"args.{job.name}"] = redactor.schema(job.name, job.args.json_schema())
    return {
        "openapi": "3.1.0",
        "info": {
            "title": f"asyncjobs dashboard ({app.name})",
            "version": "1",
            "description": "Runs, trace trees and live events of an asyncjobs app.",
        },
        "paths": _paths(app),
        "components": {"schemas": schemas},
    }


def _paths(app: App) -> dict[str, Any]:
    run_id = [_path("run_id")]
    return {
        "/api/runs": {
            "get": {
                "summary": "List runs, newest first",
                "parameters": [
                    *RUN_FILTERS,
                    _query("cursor", "next_cursor of the previous page", {"type": "integer"}),
                ],
                "responses": {"200": _json(_ref("RunPage")), **ERRORS},
            }
        },
        "/api/runs/{run_id}": {
            "get": {
                "summary": "One run, with result, error and traceback",
                "parameters": run_id,
                "responses": {
                    "200": _json({"type": "object", "properties": {"run": _ref("Run")}}),
                    "404": _json(_ref("Error"), "No such run"),
                    **ERRORS,
                },
            }
        },
        "/api/runs/{run_id}/tree": {
            "get": {
                "summary": "Every run of the trace tree the run belongs to",
                "parameters": [*run_id, _query("limit", "At most this many runs (default 5000)")],
                "responses": {"200": _json(_ref("Tree")), "404": _json(_ref("Error")), **ERRORS},
            }
        },
        "/api/runs/{run_id}/events": {
            "get": {
                "summary": "Live events of the run's whole tree (SSE), or the run's own events",
                "description": STREAM_NOTE + " The stream ends after `end`: every run of the tree "
                "has finished and every event was sent. Without `Accept: text/event-stream` the "
                "run's own stored events come back as JSON (`after` = event id, `limit`).",
                "parameters": [
                    *run_id,
                    _query("after", "Resume cursor (as Last-Event-ID)"),
                    _query("limit", "JSON only: at most this many events"),
                ],
                "responses": {
                    "200": {
                        "description": "The stream, or the events",
                        "content": {
                            SSE: {"schema": _ref("Update")},
                            JSON: {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "events": {"type": "array", "items": _ref("Event")}
                                    },
                                }
                            },
                        },
                    },
                    "404": _json(_ref("Error")),
                    "503": _json(_ref("Error"), "Too many open streams"),
                    **ERRORS,
                },
            }
        },
        "/api/runs/{run_id}/cancel": {
            "post": {
                "summary": "Cancel a run (and with cascade its descendants)",
                "description": POST_NOTE,
                "parameters": run_id,
                "requestBody": {
                    "content": {
                        JSON: {
                            "schema": {
                                "type": "object",
                                "properties": {"cascade": {"type": "boolean", "default": False}},
                            }
                        }
                    }
                },
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "runs": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "properties": {
                                            "id": {"type": "integer"},
                                            "status": {"type": "string"},
                                        },
                                    },
                                }
                            },
                        }
                    ),
                    "404": _json(_ref("Error")),
                    **ERRORS,
                },
            }
        },
        "/api/events": {
            "get": {
                "summary": "Live changes of every run (SSE), for the run table",
                "description": STREAM_NOTE + " Without a cursor the first message is a `snapshot` "
                "of the first page of runs (filtered like /api/runs); events carry no data here.",
                "parameters": [*RUN_FILTERS, _query("after", "Resume cursor (as Last-Event-ID)")],
                "responses": {
                    "200": {
                        "description": "The stream",
                        "content": {SSE: {"schema": _ref("Update")}},
                    },
                    "503": _json(_ref("Error"), "Too many open streams"),
                    **ERRORS,
                },
            }
        },
        "/api/jobs": {
            "get": {
                "summary": "Jobs (with their argument JSON schema) and queues",
                "responses": {"200": _json(_ref("Jobs")), **ERRORS},
            }
        },
        "/api/jobs/{name}/trigger": {
            "post": {
                "summary": "Trigger a run (trigger type `api`)",
                "description": POST_NOTE
                + " `args` must match the job's schema: "
                + ", ".join(f"`{n}`: #/components/schemas/args.{n}" for n in sorted(app.jobs)),
                "parameters": [_path("name", "string")],
                "requestBody": {
                    "required": True,
                    "content": {
                        JSON: {
                            "schema": {"type": "object", "properties": {"args": {"type": "object"}}}
                        }
                    },
                },
                "responses": {
                    "201": _json(
                        {
                            "type": "object",
                            "properties": {
                                "id": {"type": "integer"},
                                "job": {"type": "string"},
                                "created": {"type": "boolean"},
                            },
                        },
                        "Triggered",
                    ),
                    "404": _json(_ref("Error"), "No such job"),
                    "409": _json(_ref("Error"), "A run with the same dedup id is active"),
                    "422": _json(_ref("Error"), "The arguments do not fit the job"),
                    **ERRORS,
                },
            }
        },
        "/api/jobs/{name}/enabled": {"post": _switch("job")},
        "/api/queues/{name}/enabled": {"post": _switch("queue")},
        "/api/stats": {
            "get": {
                "summary": "Open streams and broadcaster counters",
                "responses": {"200": _json({"type": "object"}), **ERRORS},
            }
        },
        "/api/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {"200": _json({"type": "object"})},
            }
        },
        **_cluster_paths(),
    }


def _cluster_paths() -> dict[str, Any]:
    """The workers, schedules and queue views, and "why pending" / "run it again"."""
    run_id = [_path("run_id")]
    listed = {"type": "object"}
    return {
        "/api/workers": {
            "get": {
                "summary": "Registered workers: queues, concurrency, running runs, heartbeat",
                "parameters": [
                    _query(
                        "ttl",
                        "Seconds of silence after which a worker is not alive (default 30)",
                        {"type": "integer"},
                    ),
                ],
                "responses": {"200": _json(listed), **ERRORS},
            }
        },
        "/api/schedules": {
            "get": {
                "summary": "Stored schedules: timing, next and last fire, misfire policy, "
                "switch (arguments redacted like runs')",
                "responses": {"200": _json(listed), **ERRORS},
            }
        },
        "/api/schedules/{name}/enabled": {"post": _switch("schedule")},
        "/api/activity": {
            "get": {
                "summary": "Queue load now, and the runs finished within the window per minute "
                "and per job (with p50/p95 duration)",
                "parameters": [
                    _query(
                        "window",
                        "Seconds to look back (60-86400, default 3600)",
                        {"type": "integer"},
                    ),
                ],
                "responses": {"200": _json(listed), **ERRORS},
            }
        },
        "/api/runs/{run_id}/explain": {
            "get": {
                "summary": "Why the run is where it is (Client.explain): a reason code, a "
                "sentence and its data for each thing holding a pending run back",
                "parameters": run_id,
                "responses": {"200": _json(listed), "404": _json(_ref("Error")), **ERRORS},
            }
        },
        "/api/runs/{run_id}/retry": {
            "post": {
                "summary": "Run a finished run again with the same arguments (trigger `retry`, "
                "its parent is the old run)",
                "description": POST_NOTE,
                "parameters": run_id,
                "responses": {
                    "201": _json(listed, "Triggered"),
                    "404": _json(_ref("Error")),
                    "409": _json(_ref("Error"), "A run with the same dedup id is active"),
                    "422": _json(_ref("Error"), "The run has not finished"),
                    **ERRORS,
                },
            }
        },
    }


def _switch(kind: str) -> dict[str, Any]:
    return {
        "summary": f"Enable or disable a {kind} cluster-wide",
        "description": POST_NOTE,
        "parameters": [_path("name", "string")],
        "requestBody": {
            "required": True,
            "content": {
                JSON: {
                    "schema": {
                        "type": "object",
                        "required": ["enabled"],
                        "properties": {"enabled": {"type": "boolean"}},
                    }
                }
            },
        },
        "responses": {
            "200": _json(
                {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "enabled": {"type": "boolean"}},
                }
            ),
            "404": _json(_ref("Error")),
            "409": _json(_ref("Error"), "Not stored yet: no worker has registered it"),
            **ERRORS,
        },
    }


def _schemas() -> dict[str, Any]:
    nullable_time = {"type": ["string", "null"], "format": "date-time"}
    return {
        "Error": {
            "type": "object",
            "properties": {
                "error": {
                    "type": "object",
                    "properties": {
                        "type": {"type": "string"},
                        "message": {"type": "string"},
                        "errors": {"type": "array"},
                        "existing_run_id": {"type": "integer"},
                    },
                }
            },
        },
        "Run": {
            "type": "object",
            "properties": {
                "id": {"type": "integer"},
                "job": {"type": "string"},
                "queue": {"type": "string"},
                "status": {"enum": [s.value for s in RunStatus]},
                "trigger": {"enum": [t.value for t in Trigger]},
                "priority": {"type": "integer"},
                "attempt": {"type": "integer"},
                "max_attempts": {"type": "integer"},
                "retries": {"type": "integer", "description": "failed attempts retried"},
                "restarts": {
                    "type": "integer",
                    "description": "times taken back from a worker that vanished",
                },
                "max_restarts": {"type": "integer"},
                "parent_run_id": {"type": ["integer", "null"]},
                "root_run_id": {"type": "integer"},
                "created_at": {"type": "string", "format": "date-time"},
                "not_before": {"type": "string", "format": "date-time"},
                "not_after": nullable_time,
                "started_at": nullable_time,
                "finished_at": nullable_time,
                "duration": {"type": ["number", "null"]},
                "worker_id": {"type": ["string", "null"]},
                "cancel_requested": {"type": "boolean"},
                "progress": {"type": ["number", "null"]},
                "status_message": {"type": ["string", "null"]},
                "dedup_id": {"type": ["string", "null"]},
                "args": {"type": "object", "description": "Redacted per job"},
                "result": {"description": "Detail only"},
                "error": {
                    "type": ["object", "null"],
                    "description": "type, message, attempt; traceback in detail only",
                },
                "errors": {"type": "array", "description": "Detail only: every attempt's error"},
                "version": {"type": "integer", "description": "Larger is newer"},
            },
        },
        "Event": {
            "type": "object",
            "properties": {
                "id": {"type": "integer"},
                "cursor": {"type": "string"},
                "run_id": {"type": "integer"},
                "root_run_id": {"type": "integer"},
                "at": {"type": "string", "format": "date-time"},
                "kind": {
                    "type": "string",
                    "description": "pending, running, succeeded, failed, "
                    "cancelled, expired, retrying, cancel_requested, progress, log",
                },
                "data": {"type": "object"},
            },
        },
        "RunPage": {
            "type": "object",
            "properties": {
                "runs": {"type": "array", "items": _ref("Run")},
                "next_cursor": {"type": ["integer", "null"]},
                "events_cursor": {"type": "string", "description": "Feed position before the read"},
            },
        },
        "Tree": {
            "type": "object",
            "properties": {
                "root_run_id": {"type": "integer"},
                "truncated": {"type": "boolean"},
                "runs": {"type": "array", "items": _ref("Run")},
            },
        },
        "Update": {
            "type": "object",
            "properties": {
                "kind": {"enum": ["snapshot", "events", "end"]},
                "cursor": {"type": "string"},
                "runs": {"type": "array", "items": _ref("Run")},
                "events": {"type": "array", "items": _ref("Event")},
                "truncated": {"type": "boolean"},
            },
        },
        "Jobs": {
            "type": "object",
            "properties": {
                "jobs": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string"},
                            "queue": {"type": "string"},
                            "known": {"type": "boolean", "description": "Registered in this app"},
                            "enabled": {
                                "type": ["boolean", "null"],
                                "description": "null until a worker stored the job",
                            },
                            "redact": {"type": "array", "items": {"type": "string"}},
                            "args_schema": {"type": ["object", "null"]},
                        },
                    },
                },
                "queues": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string"},
                            "max_concurrency": {"type": ["integer", "null"]},
                            "enabled": {"type": ["boolean", "null"]},
                        },
                    },
                },
            },
        },
    }
