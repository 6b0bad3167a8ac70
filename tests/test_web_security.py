"""Dashboard security: loopback by default, tokens, CSRF, Host checks, headers, redaction."""

from __future__ import annotations

import httpx
import pytest

from asyncjobs import App, ConfigurationError
from asyncjobs.__main__ import main
from asyncjobs.web import DashboardServer, DashboardSettings
from asyncjobs.web.security import check_bind, is_loopback
from tests.web_support import SSE_HEADERS, Card, dashboard, read_until_end, web_app

TOKEN = "s3cret-token-for-tests-0123456789"
SECRETS = ("hunter2-password", "4111-1111-1111-1111")


def test_loopback_addresses_are_told_apart() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "127.8.9.1", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.168.1.5", "example.com", ""]))


def test_a_non_loopback_address_needs_a_token_or_insecure() -> None:
    with pytest.raises(
        ConfigurationError, match=r"refusing to serve the dashboard on '0\.0\.0\.0'"
    ):
        check_bind("0.0.0.0", DashboardSettings())
    check_bind("0.0.0.0", DashboardSettings(token=TOKEN))
    check_bind("0.0.0.0", DashboardSettings(insecure=True))
    check_bind("127.0.0.1", DashboardSettings())
    app, _ = web_app()
    with pytest.raises(ConfigurationError, match="without a token"):
        DashboardServer(app.asgi("postgresql://unused/db"), "0.0.0.0", 0)
    with pytest.raises(ConfigurationError, match="at least 16"):
        DashboardSettings(token="short")


def test_the_cli_refuses_to_serve_on_all_interfaces_without_a_token(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ASYNCJOBS_DASHBOARD_TOKEN", raising=False)
    code = main(
        [
            "dashboard",
            "asyncjobs.demo:app",
            "--dsn",
            "postgresql://unused/db",
            "--host",
            "0.0.0.0",
            "--port",
            "0",
        ]
    )
    assert code == 1
    assert "refusing to serve the dashboard" in capsys.readouterr().err


@pytest.mark.anyio
async def test_posts_need_the_csrf_token_and_our_own_origin(dsn: str) -> None:
    app, _ = web_app()
    async with dashboard(app, dsn) as server, httpx.AsyncClient(base_url=server.url) as http:
        path, body = "/api/jobs/leaf/trigger", {"args": {"n": 1}}
        assert (await http.post(path, json=body)).status_code == 403  # no cookie, no header
        page = await http.get("/")
        csrf = http.cookies["asyncjobs_csrf"]
        assert "SameSite=Strict" in page.headers["set-cookie"]
        assert (await http.post(path, json=body)).status_code == 403  # cookie only
        wrong = await http.post(path, json=body, headers={"x-csrf-token": "guess"})
        assert wrong.status_code == 403 and "CSRF" in wrong.json()["error"]["message"]
        foreign = await http.post(
            path, json=body, headers={"x-csrf-token": csrf, "origin": "https://evil.example"}
        )
        assert foreign.status_code == 403
        ok = await http.post(
            path, json=body, headers={"x-csrf-token": csrf, "origin": server.url[:-1]}
        )
        assert ok.status_code == 201
        for action in (
            "/api/runs/1/cancel",
            "/api/jobs/leaf/enabled",
            "/api/queues/default/enabled",
        ):
            assert (await http.post(action, json={"enabled": False})).status_code == 403


@pytest.mark.anyio
async def test_with_a_token_the_api_needs_it_and_the_viewer_logs_in_once(dsn: str) -> None:
    app, _ = web_app()
    async with (
        app.worker(dsn, concurrency=2),
        dashboard(app, dsn, token=TOKEN) as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        assert (await http.get("/")).status_code == 200  # the page holds no data
        assert (await http.get("/static/trace.js")).status_code == 200
        denied = await http.get("/api/runs")
        assert denied.status_code == 401 and denied.headers["www-authenticate"].startswith("Bearer")
        assert (await http.get("/api/events", headers=SSE_HEADERS)).status_code == 401
        assert (
            await http.post("/api/jobs/leaf/trigger", json={"args": {"n": 1}})
        ).status_code == 403
        bearer = {"authorization": f"Bearer {TOKEN}"}
        assert (await http.get("/api/runs", headers=bearer)).status_code == 200
        made = await http.post("/api/jobs/leaf/trigger", json={"args": {"n": 1}}, headers=bearer)
        assert made.status_code == 201  # a bearer call carries no ambient credential: no CSRF
        assert (
            await http.get("/api/runs", headers={"authorization": "Bearer nope"})
        ).status_code == 401

        assert (await http.get("/?token=wrong")).status_code == 403
        login = await http.get("/?token=" + TOKEN + "&x=1")
        assert login.status_code == 303 and login.headers["location"] == "/?x=1"
        cookie = login.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
        assert (await http.get("/api/runs")).status_code == 200  # the session cookie
        run_id = made.json()["id"]
        messages = await read_until_end(http, f"/api/runs/{run_id}/events")
        assert messages[-1].event == "end"
        path = "/api/jobs/leaf/trigger"
        assert (await http.post(path, json={"args": {"n": 2}})).status_code == 403  # no CSRF
        csrf = http.cookies["asyncjobs_csrf"]
        again = await http.post(path, json={"args": {"n": 2}}, headers={"x-csrf-token": csrf})
        assert again.status_code == 201


@pytest.mark.anyio
async def test_foreign_host_names_are_refused_without_a_token(dsn: str) -> None:
    """A page on evil.example whose name resolves to 127.0.0.1 (DNS rebinding) gets nothing."""
    app, _ = web_app()
    async with (
        dashboard(app, dsn, allowed_hosts=["jobs.internal"]) as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        rebound = await http.get("/api/runs", headers={"host": "evil.example"})
        assert rebound.status_code == 403 and "Host" in rebound.json()["error"]["message"]
        assert (await http.get("/", headers={"host": "evil.example:80"})).status_code == 403
        for host in ("localhost:8000", "127.0.0.1", "[::1]:9", "jobs.internal"):
            assert (await http.get("/api/runs", headers={"host": host})).status_code == 200


@pytest.mark.anyio
async def test_every_response_carries_the_security_headers(dsn: str) -> None:
    app, _ = web_app()
    async with dashboard(app, dsn) as server, httpx.AsyncClient(base_url=server.url) as http:
        for path in ("/", "/api/jobs", "/static/main.js", "/api/nope"):
            response = await http.get(path)
            csp = response.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp, path
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["referrer-policy"] == "no-referrer"


def test_the_viewer_never_parses_data_as_html() -> None:
    """Every string reaches the page through text nodes (see static/dom.js)."""
    from asyncjobs.web.routes import STATIC

    for script in STATIC.glob("*.js"):
        source = script.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in source, f"{script.name} uses {sink}"
    assert "<script>" not in (STATIC / "index.html").read_text()  # no inline script (CSP)


@pytest.mark.anyio
async def test_redacted_arguments_never_leave_the_server(dsn: str) -> None:
    app, _ = web_app()
    async with (
        app.client(dsn) as client,
        app.worker(dsn, concurrency=2),
        dashboard(app, dsn) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as http,
    ):
        card = Card(holder="Ada", number=SECRETS[1])
        async with http.stream("GET", "/api/events", headers=SSE_HEADERS) as feed:
            run = await client.trigger_async(
                "secretive", user="ada", password=SECRETS[0], card=card
            )
            await client.wait(run.id, timeout=20)
            feed_text = ""
            async for chunk in feed.aiter_text():
                feed_text += chunk
                if '"succeeded"' in feed_text:
                    break
        bodies = [
            feed_text,
            (await http.get("/api/runs")).text,
            (await http.get(f"/api/runs/{run.id}")).text,
            (await http.get(f"/api/runs/{run.id}/tree")).text,
            (await http.get("/api/runs?job=secretive&status=succeeded")).text,
            "".join(str(m.data) for m in await read_until_end(http, f"/api/runs/{run.id}/events")),
        ]
        for body in bodies:
            assert not any(secret in body for secret in SECRETS), body[:300]
            assert "[redacted]" in body and "Ada" in body
        detail = (await http.get(f"/api/runs/{run.id}")).json()["run"]
        assert detail["args"] == {
            "user": "ada",
            "password": "[redacted]",
            "card": {"holder": "Ada", "number": "[redacted]"},
        }
        assert (await client.get_run(run.id)).args["password"] == SECRETS[0]  # stored as is

        # a dashboard whose app does not know the job cannot know what to hide
        other = App("other")
        async with dashboard(other, dsn) as blind, httpx.AsyncClient(base_url=blind.url) as h2:
            shown = (await h2.get(f"/api/runs/{run.id}")).json()["run"]["args"]
            assert SECRETS[0] not in str(shown) and "[redacted]" in str(shown)


def test_a_redaction_path_must_name_a_parameter() -> None:
    app = App("redact")
    with pytest.raises(ConfigurationError, match="'pasword' is not a field there"):

        @app.job(redact=["pasword"])
        async def login(user: str, password: str) -> None: ...

    with pytest.raises(ConfigurationError, match="not a string"):

        @app.job(redact="password")
        async def login2(user: str, password: str) -> None: ...
