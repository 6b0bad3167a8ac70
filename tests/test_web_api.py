"""The dashboard's HTTP API: runs (filters, paging, detail, tree), jobs with their schema,
trigger, cancel, enable/disable, the OpenAPI description, and mounting in another app."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount, Route

from asyncjobs import App, Client
from tests.web_support import dashboard, wait_for, web_app

pytestmark = pytest.mark.anyio
#: the ``api`` fixture: the test app, an open client, an HTTP client
ApiFixture = tuple[App, Client, httpx.AsyncClient]


@pytest.fixture
async def api(dsn: str) -> AsyncIterator[ApiFixture]:
    """The test app, an open client and an HTTP client holding the CSRF cookie."""
    app, gates = web_app()
    async with (
        app.client(dsn) as client,
        app.worker(dsn, concurrency=4),
        dashboard(app, dsn) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as http,
    ):
        assert (await http.get("/")).status_code == 200  # sets the CSRF cookie
        http.headers["x-csrf-token"] = http.cookies["asyncjobs_csrf"]
        yield app, client, http
        for gate in gates.events.values():
            gate.set()


async def test_runs_are_listed_filtered_and_paged(api: ApiFixture) -> None:
    _, client, http = api
    leaves = [await client.trigger_async("leaf", n=n) for n in range(3)]
    tree = await client.trigger_async("tree", width=2)
    failed = await client.trigger_async("broken", text="no")
    from_api = (await http.post("/api/jobs/leaf/trigger", json={"args": {"n": 9}})).json()
    for run_id in [r.id for r in [*leaves, tree, failed]] + [from_api["id"]]:
        await client.wait(run_id, timeout=20)

    async def ids(query: str) -> list[int]:
        response = await http.get(f"/api/runs?{query}")
        assert response.status_code == 200, response.text
        return [r["id"] for r in response.json()["runs"]]

    everything = await ids("")
    assert everything == sorted(everything, reverse=True) and len(everything) == 8
    assert await ids("job=leaf&trigger=user") == [r.id for r in reversed(leaves)]
    assert await ids("status=failed") == [failed.id]
    assert await ids("trigger=api") == [from_api["id"]]
    children = await ids(f"parent={tree.id}")
    assert len(children) == 2 and await ids(f"root={tree.id}") == [*children, tree.id]
    now = datetime.now(UTC)
    later = quote((now + timedelta(minutes=1)).isoformat())
    assert await ids(f"since={later}") == []
    assert await ids(f"until={later}") == everything
    assert await ids(f"since={(now - timedelta(hours=1)).isoformat()}") == everything
    first = (await http.get("/api/runs?limit=3")).json()
    assert [r["id"] for r in first["runs"]] == everything[:3]
    second = await ids(f"limit=3&cursor={first['next_cursor']}")
    assert second == everything[3:6]
    assert first["events_cursor"].count("-") == 1
    for bad in (
        "status=done",
        "trigger=x",
        "limit=0",
        "cursor=abc",
        "since=yesterday",
        "since=2024-01-01T00:00:00",
    ):
        response = await http.get(f"/api/runs?{bad}")
        assert response.status_code == 400, bad
        assert response.json()["error"]["type"] == "BadRequest"


async def test_run_detail_tree_and_a_runs_events(api: ApiFixture) -> None:
    _, client, http = api
    tree = await client.trigger_async("tree", width=2)
    await client.wait(tree.id, timeout=20)
    detail = (await http.get(f"/api/runs/{tree.id}")).json()["run"]
    assert detail["status"] == "succeeded" and detail["result"] == 1
    assert detail["args"] == {"width": 2, "gate": ""} and detail["duration"] > 0
    listed = (await http.get(f"/api/runs?root={tree.id}")).json()["runs"]
    assert "result" not in listed[0]
    child = next(r for r in listed if r["id"] != tree.id)
    shape = (await http.get(f"/api/runs/{child['id']}/tree")).json()
    assert shape["root_run_id"] == tree.id and not shape["truncated"]
    assert sorted(r["id"] for r in shape["runs"]) == sorted(r["id"] for r in listed)
    assert all(r["version"] > 0 for r in shape["runs"])
    events = (await http.get(f"/api/runs/{tree.id}/events")).json()["events"]
    assert [e["kind"] for e in events][:3] == ["pending", "running", "log"]
    later = (await http.get(f"/api/runs/{tree.id}/events?after={events[1]['id']}")).json()
    assert later["events"] == events[2:]
    assert (await http.get("/api/runs/424242")).status_code == 404
    assert (await http.get("/api/runs/424242/tree")).status_code == 404


async def test_jobs_come_with_their_argument_schema_and_triggers_are_validated(
    api: ApiFixture,
) -> None:
    app, client, http = api
    listing = (await http.get("/api/jobs")).json()
    jobs = {j["name"]: j for j in listing["jobs"]}
    assert set(jobs) == set(app.jobs)
    secretive = jobs["secretive"]
    assert secretive["redact"] == ["password", "card.number"]
    assert secretive["args_schema"]["properties"]["password"]["format"] == "password"
    assert secretive["args_schema"]["required"] == ["user", "password", "card"]
    assert jobs["tree"]["doc"].startswith("Waits for its gate")
    assert {q["name"] for q in listing["queues"]} >= {"default"}

    ok = await http.post("/api/jobs/leaf/trigger", json={"args": {"n": 4}})
    assert ok.status_code == 201 and ok.json()["created"] is True
    run = await client.get_run(ok.json()["id"])
    assert run.trigger.value == "api" and run.args == {"n": 4}

    async def post(path: str, **options: Any) -> httpx.Response:
        return await http.post(path, **options)

    unknown = await post("/api/jobs/nope/trigger", json={"args": {}})
    assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "UnknownJob"
    invalid = await post("/api/jobs/leaf/trigger", json={"args": {"n": "seven"}})
    assert invalid.status_code == 422
    assert invalid.json()["error"]["errors"][0]["loc"] == ["n"]
    extra = await post("/api/jobs/leaf/trigger", json={"args": {"n": 1, "m": 2}})
    assert extra.status_code == 422
    assert (await post("/api/jobs/leaf/trigger", json={"args": [1]})).status_code == 422
    assert (
        await post(
            "/api/jobs/leaf/trigger", content=b"{nope", headers={"content-type": "application/json"}
        )
    ).status_code == 400
    assert (
        await post(
            "/api/jobs/leaf/trigger",
            content=b'{"args": {"n": 1}}',
            headers={"content-type": "text/plain"},
        )
    ).status_code == 415
    huge = {"args": {"n": 1}, "pad": "x" * (1024 * 1024 + 1)}
    assert (await post("/api/jobs/leaf/trigger", json=huge)).status_code == 413


async def test_cancel_and_enable_disable(api: ApiFixture) -> None:
    _, client, http = api
    run = await client.trigger_async("hold", gate="cancel-me")
    await wait_for(lambda: _status_is(client, run.id, "running"))
    cancelled = await http.post(f"/api/runs/{run.id}/cancel", json={})
    assert cancelled.status_code == 200
    assert cancelled.json()["runs"] == [{"id": run.id, "status": "running"}]  # requested
    await wait_for(lambda: _status_is(client, run.id, "cancelled"))
    assert (await http.post("/api/runs/999999/cancel", json={})).status_code == 404
    assert (
        await http.post(f"/api/runs/{run.id}/cancel", json={"cascade": "yes"})
    ).status_code == 400

    off = await http.post("/api/jobs/leaf/enabled", json={"enabled": False})
    assert off.json() == {"name": "leaf", "enabled": False}
    jobs = {j["name"]: j for j in (await http.get("/api/jobs")).json()["jobs"]}
    assert jobs["leaf"]["enabled"] is False and jobs["tree"]["enabled"] is True
    waiting = await client.trigger_async("leaf", n=1)
    assert (await client.get_run(waiting.id)).status.value == "pending"
    await http.post("/api/jobs/leaf/enabled", json={"enabled": True})
    await client.wait(waiting.id, timeout=20)

    queue = await http.post("/api/queues/default/enabled", json={"enabled": False})
    assert queue.json() == {"name": "default", "enabled": False}
    queues = {q["name"]: q for q in (await http.get("/api/jobs")).json()["queues"]}
    assert queues["default"]["enabled"] is False
    await http.post("/api/queues/default/enabled", json={"enabled": True})
    assert (await http.post("/api/jobs/nope/enabled", json={"enabled": True})).status_code == 404
    assert (await http.post("/api/queues/nope/enabled", json={"enabled": True})).status_code == 409
    assert (await http.post("/api/jobs/leaf/enabled", json={"enabled": 1})).status_code == 400


async def _status_is(client: Client, run_id: int, status: str) -> bool:
    return bool((await client.get_run(run_id)).status.value == status)


async def test_mounted_in_a_starlette_app_with_or_without_its_lifespan(dsn: str) -> None:
    app, _ = web_app()
    for use_lifespan in (True, False):
        board = app.asgi(dsn)

        async def home(request: object) -> object:
            from starlette.responses import PlainTextResponse

            return PlainTextResponse("host app")

        host = Starlette(
            routes=[Route("/", home), Mount("/jobs", board)],
            lifespan=board.lifespan if use_lifespan else None,
        )
        config = uvicorn.Config(host, port=0, log_level="warning", lifespan="on")
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())

        def started(s: uvicorn.Server = server) -> bool:
            return s.started

        await wait_for(_async(started))
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                assert (await http.get("/")).text == "host app"
                page = await http.get("/jobs/")
                assert page.status_code == 200 and "static/main.js" in page.text
                assert "Path=/jobs/" in page.headers["set-cookie"]
                assert (await http.get("/jobs/static/main.js")).status_code == 200
                listing = await http.get("/jobs/api/jobs")
                assert listing.status_code == 200 and listing.json()["app"] == "webtest"
        finally:
            server.should_exit = True
            await task
            if not use_lifespan:
                await board.state.stop()


def _async(check: Callable[[], object]) -> Callable[[], Awaitable[object]]:
    async def wrapped() -> object:
        return check()

    return wrapped
