"""The OpenAPI document against the real API: every route it serves is described (and only
those), and every response of every route, called with realistic data (runs in each state,
a failed run, progress and logs, a schedule, a worker), fits the document's schema for its
path, method, status and content type. Also: a run or schedule model cannot carry arguments
that did not pass through redaction. PostgreSQL only."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_spec
from pydantic import ValidationError
from starlette.routing import Route

from asyncjobs import App
from asyncjobs.web import models
from asyncjobs.web.openapi import documented_routes, openapi_document
from asyncjobs.web.redaction import RedactedArgs, Redactor
from asyncjobs.web.routes import Api
from tests.views_support import SCHEDULE_SECRET, views_app
from tests.web_support import SSE_HEADERS, Gates, dashboard, sse_messages, wait_for

pytestmark = pytest.mark.anyio


@dataclass
class Checker:
    """Validates responses against the document and records which operations and statuses
    were seen."""

    document: dict[str, Any]
    seen: dict[tuple[str, str], set[int]] = field(default_factory=dict)

    def operation(self, method: str, url_path: str) -> tuple[str, dict[str, Any]]:
        for path, item in self.document["paths"].items():
            pattern = "^" + re.sub(r"\\{\w+\\}", "[^/]+", re.escape(path)) + "$"
            if re.match(pattern, url_path) and method.lower() in item:
                return path, item[method.lower()]
        raise AssertionError(f"{method} {url_path} is not in the document")

    def schema(self, response: httpx.Response) -> tuple[dict[str, Any], str]:
        request = response.request
        path, operation = self.operation(request.method, request.url.path)
        status = response.status_code
        described = operation["responses"].get(str(status))
        assert described, f"{request.method} {path} answered {status}: {response.text[:300]}"
        media = response.headers["content-type"].split(";")[0].strip()
        assert media in described["content"], f"{request.method} {path} {status} sent {media}"
        self.seen.setdefault((path, request.method), set()).add(status)
        return described["content"][media]["schema"], media

    def validate(self, schema: dict[str, Any], value: Any) -> None:
        # refs are "#/components/schemas/X": give the schema the document's components
        root = {"components": self.document["components"], **schema}
        validator = Draft202012Validator(root, format_checker=Draft202012Validator.FORMAT_CHECKER)
        errors = sorted(validator.iter_errors(value), key=lambda e: list(e.path))
        assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:5])

    def check(self, response: httpx.Response, status: int) -> Any:
        assert response.status_code == status, response.text[:500]
        schema, media = self.schema(response)
        if media == "application/json":
            body = response.json()
            self.validate(schema, body)
            return body
        self.validate(schema, response.text)
        return response.text

    async def stream(self, http: httpx.AsyncClient, path: str, count: int) -> list[Any]:
        """The first ``count`` messages of an SSE endpoint, each checked."""
        messages = []
        async with http.stream("GET", path, headers=SSE_HEADERS) as response:
            schema, media = self.schema(response)
            assert response.status_code == 200 and media == "text/event-stream"
            async for message in sse_messages(response):
                self.validate(schema, message.data)
                assert message.event == message.data["kind"]
                messages.append(message.data)
                if len(messages) == count or message.event == "end":
                    break
        return messages


@pytest.fixture
async def served(dsn: str) -> AsyncIterator[tuple[Any, httpx.AsyncClient, Gates, Checker]]:
    app, gates = views_app()
    async with (
        app.client(dsn) as client,
        app.worker(dsn, concurrency=4),
        dashboard(app, dsn) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as http,
    ):
        assert (await http.get("/")).status_code == 200  # sets the CSRF cookie
        http.headers["x-csrf-token"] = http.cookies["asyncjobs_csrf"]
        document = (await http.get("/api/openapi.json")).json()
        validate_spec(document)
        checker = Checker(document)
        checker.check(await http.get("/api/openapi.json"), 200)
        yield client, http, gates, checker
        for gate in gates.events.values():
            gate.set()


async def test_every_route_answers_what_the_document_says(
    served: tuple[Any, httpx.AsyncClient, Gates, Checker],
) -> None:
    client, http, gates, check = served
    # runs in every state: finished trees with progress and logs, failed, running, pending
    tree = await client.trigger_async("tree", width=2)
    broken = await client.trigger_async("broken", text="it broke")
    secret = await client.trigger_async(
        "secretive", user="u", password="hunter2", card={"holder": "h", "number": "4111"}
    )
    flaky = await client.trigger_async("flaky", text="first attempt fails")
    for run in (tree, broken, secret):
        await client.wait(run.id, timeout=30)
    running = await client.trigger_async("single", gate="one")
    blocked = await client.trigger_async("single", gate="two")
    await wait_for(lambda: _status_is(client, running.id, "running"))
    await wait_for(lambda: _has_error(client, flaky.id))

    await _runs_and_trees(check, http, tree.id, broken.id, secret.id, blocked.id)
    await _streams(check, http, tree.id)
    await _actions(check, http, running.id, blocked.id, broken.id)
    await _cluster(check, http)
    await _errors(check, http)
    await _every_query_parameter(check, http, tree.id)

    documented = {
        (path, method.upper()) for path, item in check.document["paths"].items() for method in item
    }
    assert set(check.seen) == documented, documented - set(check.seen)
    gates["one"].set()
    gates["two"].set()


async def _runs_and_trees(
    check: Checker, http: httpx.AsyncClient, tree: int, broken: int, secret: int, blocked: int
) -> None:
    page = check.check(await http.get("/api/runs", params={"limit": 2}), 200)
    assert len(page["runs"]) == 2 and page["next_cursor"]
    check.check(await http.get("/api/runs", params={"cursor": page["next_cursor"]}), 200)
    filters: dict[str, str | int] = {
        "status": "failed",
        "roots": 1,
        "since": "2000-01-01T00:00:00+00:00",
    }
    failed = check.check(await http.get("/api/runs", params=filters), 200)
    assert [r["id"] for r in failed["runs"]] == [broken]
    assert "traceback" not in failed["runs"][0]["error"]
    statuses = set()
    for run_id in (tree, broken, secret, blocked):
        run = check.check(await http.get(f"/api/runs/{run_id}"), 200)["run"]
        statuses.add(run["status"])
        check.check(await http.get(f"/api/runs/{run_id}/explain"), 200)
    assert statuses == {"succeeded", "failed", "pending"}
    detail = check.check(await http.get(f"/api/runs/{broken}"), 200)["run"]
    assert detail["error"]["message"] == "it broke" and detail["error"]["traceback"]
    hidden = check.check(await http.get(f"/api/runs/{secret}"), 200)["run"]["args"]
    assert "hunter2" not in orjson.dumps(hidden).decode()
    explained = check.check(await http.get(f"/api/runs/{blocked}/explain"), 200)
    assert explained["blocked"] and explained["reasons"]
    trace = check.check(await http.get(f"/api/runs/{tree}/tree"), 200)
    assert len(trace["runs"]) == 3 and any(r["progress"] for r in trace["runs"])
    events = check.check(await http.get(f"/api/runs/{tree}/events"), 200)["events"]
    assert {"log", "progress", "succeeded"} <= {e["kind"] for e in events}


async def _streams(check: Checker, http: httpx.AsyncClient, tree: int) -> None:
    trace = await check.stream(http, f"/api/runs/{tree}/events", 10_000)
    assert trace[0]["kind"] == "snapshot" and trace[-1]["kind"] == "end"
    feed = await check.stream(http, "/api/events?limit=5", 1)
    assert feed[0]["kind"] == "snapshot" and feed[0]["runs"]
    # resuming from the snapshot's cursor: the next message carries events
    async with http.stream(
        "GET", "/api/events", headers={**SSE_HEADERS, "last-event-id": feed[0]["cursor"]}
    ) as response:
        schema, _ = check.schema(response)
        await http.post("/api/jobs/echo/trigger", json={"args": {"text": "hello"}})
        async for message in sse_messages(response):
            check.validate(schema, message.data)
            if message.data["events"]:
                break


async def _actions(
    check: Checker, http: httpx.AsyncClient, running: int, blocked: int, broken: int
) -> None:
    triggered = check.check(
        await http.post("/api/jobs/hold/trigger", json={"args": {"gate": "never"}}), 201
    )
    cancelled = check.check(
        await http.post(f"/api/runs/{triggered['id']}/cancel", json={"cascade": True}), 200
    )
    assert cancelled["runs"][0]["id"] == triggered["id"]
    retried = check.check(await http.post(f"/api/runs/{broken}/retry", json={}), 201)
    assert retried["retry_of"] == broken
    check.check(await http.post(f"/api/runs/{blocked}/retry", json={}), 422)
    check.check(await http.post("/api/jobs/nope/trigger", json={"args": {}}), 404)
    check.check(await http.post("/api/jobs/leaf/trigger", json={"args": {"n": "x"}}), 422)
    for path, name in (("jobs", "echo"), ("queues", "default"), ("schedules", "nightly_report")):
        for enabled in (False, True):
            url = f"/api/{path}/{name}/enabled"
            switched = check.check(await http.post(url, json={"enabled": enabled}), 200)
            assert switched == {"name": name, "enabled": enabled}
    check.check(await http.post("/api/jobs/nope/enabled", json={"enabled": True}), 404)
    check.check(await http.post("/api/queues/nope/enabled", json={"enabled": True}), 409)


async def _cluster(check: Checker, http: httpx.AsyncClient) -> None:
    workers = check.check(await http.get("/api/workers", params={"ttl": 60}), 200)
    assert workers["workers"] and workers["workers"][0]["runs"]
    schedules = check.check(await http.get("/api/schedules"), 200)["schedules"]
    assert {s["name"] for s in schedules} >= {"nightly_report", "sweep_carts"}
    assert SCHEDULE_SECRET not in orjson.dumps(schedules).decode()
    activity = check.check(await http.get("/api/activity", params={"window": 600}), 200)
    assert activity["jobs"] and activity["queues"]
    jobs = check.check(await http.get("/api/jobs"), 200)
    assert {j["name"] for j in jobs["jobs"]} >= {"tree", "secretive"}
    check.check(await http.get("/api/stats"), 200)
    metrics = check.check(await http.get("/metrics"), 200)
    assert "asyncjobs_" in metrics


async def _errors(check: Checker, http: httpx.AsyncClient) -> None:
    check.check(await http.get("/api/runs/999999999"), 404)
    check.check(await http.get("/api/runs/999999999/tree"), 404)
    check.check(await http.get("/api/runs", params={"limit": 0}), 400)
    check.check(await http.get("/api/runs", params={"status": "sleeping"}), 400)
    check.check(await http.get("/api/runs", params={"job": "a\x00b"}), 422)
    check.check(await http.post("/api/runs/1/cancel", content=b"{}"), 415)
    check.check(await http.post("/api/runs/1/cancel", json={"cascade": "yes"}), 400)
    big = b'{"args": "' + b"x" * (1024 * 1024) + b'"}'
    headers = {"content-type": "application/json"}
    check.check(await http.post("/api/jobs/echo/trigger", content=big, headers=headers), 413)
    async with httpx.AsyncClient(base_url=str(http.base_url), timeout=30) as stranger:
        check.check(await stranger.post("/api/runs/1/cancel", json={}), 403)


#: example values of the documented string parameters, by name
EXAMPLES = {"job": "leaf", "after": "0", "since": "2000-01-01T00:00:00+00:00"}


async def _every_query_parameter(check: Checker, http: httpx.AsyncClient, run_id: int) -> None:
    """Each JSON GET answers 200 with every documented query parameter set: the handlers
    read what the document lists (by name, in range)."""
    sent = 0
    for path, item in check.document["paths"].items():
        operation = item.get("get", {})
        query = [p for p in operation.get("parameters", []) if p["in"] == "query"]
        if not query or "application/json" not in operation["responses"]["200"]["content"]:
            continue
        params = {p["name"]: _example(check, p["name"], p["schema"]) for p in query}
        check.check(await http.get(path.replace("{run_id}", str(run_id)), params=params), 200)
        sent += len(params)
    assert sent >= 15


def _example(check: Checker, name: str, schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        schema = check.document["components"]["schemas"][schema["$ref"].split("/")[-1]]
    if "enum" in schema:
        return str(schema["enum"][-1])
    if schema.get("type") == "integer":
        return str(schema.get("default", schema.get("minimum", 1)))
    return EXAMPLES.get(name, EXAMPLES["since"] if name == "until" else "x")


async def _status_is(client: Any, run_id: int, status: str) -> bool:
    return bool((await client.get_run(run_id)).status.value == status)


async def _has_error(client: Any, run_id: int) -> bool:
    return (await client.get_run(run_id)).error is not None


def test_the_document_describes_exactly_the_served_routes() -> None:
    app, _ = views_app()
    routes = Api(None).routes()  # type: ignore[arg-type]
    document = openapi_document(app, Redactor(app), routes)
    described = {(p, m.upper()) for p, item in document["paths"].items() for m in item}
    served = {(path, method) for path, method, _ in documented_routes(routes)}
    assert described == served
    assert ("/metrics", "GET") in served and ("/api/runs/{run_id}", "GET") in served
    assert set(document["components"]["schemas"]) >= {f"args.{name}" for name in app.jobs}
    # a route nobody described makes the document fail to build
    with pytest.raises(LookupError, match="/api/new"):
        openapi_document(app, Redactor(app), [*routes, Route("/api/new", _nothing)])


def _nothing() -> None:
    raise AssertionError


def test_run_arguments_only_pass_through_redaction() -> None:
    app = App("redaction")
    redactor = Redactor(app, redact_unknown_jobs=True)
    with pytest.raises(TypeError):
        RedactedArgs({"password": "x"})
    with pytest.raises(TypeError):
        RedactedArgs({"password": "x"}, object())
    fields: dict[str, Any] = {"name": "s", "job": "j", "cron": None, "every": 1.0}
    fields |= {"timezone": "UTC", "misfire": "skip", "all_nodes": False, "enabled": True}
    fields |= {"paused": False, "next_fire_at": None, "last_fire_at": None}
    with pytest.raises(ValidationError, match="Redactor"):
        models.Schedule(**fields, args={"password": "x"})
    sneaked = models.Schedule.model_construct(**fields, args={"password": "x"})  # type: ignore[arg-type]
    with pytest.raises(Exception, match="Redactor"):
        sneaked.model_dump()
    redacted = models.Schedule(**fields, args=redactor.args("unknown", {"password": "x"}))
    assert "x" not in orjson.dumps(redacted.model_dump()["args"]).decode()
