"""Service-to-service HTTP: the README's curl lines, run as they are against a real dashboard
(uvicorn on a free port) with a token; bearer calls need no CSRF token, browser sessions do."""

from __future__ import annotations

import os
import re
from pathlib import Path

import anyio
import httpx
import orjson
import pytest

from asyncjobs import App
from asyncjobs.web.security import SESSION_COOKIE, session_value
from tests.web_support import dashboard

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "service-token-0123456789abcdef"
CURL_BLOCK = re.compile(r"```bash\n(# trigger: 201.*?)```", re.DOTALL)
pytestmark = pytest.mark.anyio


def readme_curl_commands() -> list[str]:
    """The README's curl block as separate commands (continuations joined, comments out)."""
    (block,) = CURL_BLOCK.findall((ROOT / "README.md").read_text())
    joined = block.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.startswith("curl ")]


def shop() -> App:
    app = App("shop")

    @app.job
    async def send_receipt(order_id: int, email: str) -> str:
        return f"<receipt-{order_id}@shop>"

    return app


async def test_the_readme_curl_lines_trigger_read_and_cancel(dsn: str) -> None:
    commands = readme_curl_commands()
    assert len(commands) == 3
    async with dashboard(shop(), dsn, token=TOKEN) as server:
        env = {**os.environ, "ASYNCJOBS_URL": server.url.rstrip("/"), "ASYNCJOBS_TOKEN": TOKEN}
        answers = []
        for command in commands:
            with anyio.fail_after(30):
                done = await anyio.run_process(["bash", "-c", command], env=env, check=False)
            assert done.returncode == 0, (command, done.stdout, done.stderr)
            answers.append(orjson.loads(done.stdout))
    triggered, read, cancelled = answers
    assert triggered == {"id": 1, "job": "send_receipt", "created": True}
    run = read["run"]
    assert (run["id"], run["status"], run["args"]) == (
        1, "pending", {"order_id": 7, "email": "a@b.c"})
    assert (run["result"], run["error"]) == (None, None)
    assert cancelled == {"runs": [{"id": 1, "status": "cancelled"}]}


async def test_token_requests_skip_csrf_and_sessions_keep_it(dsn: str) -> None:
    other = App("billing")  # a job the dashboard's own app does not define

    @other.job
    async def refund(order_id: int) -> None: ...

    async with dashboard(shop(), dsn, token=TOKEN) as server, httpx.AsyncClient(
        base_url=server.url
    ) as http:
        url = "api/jobs/send_receipt/trigger"
        body = {"args": {"order_id": 1, "email": "x@y.z"}}
        bearer = {"authorization": f"Bearer {TOKEN}"}
        assert (await http.post(url, json=body, headers=bearer)).status_code == 201
        wrong = await http.post(url, json=body, headers={"authorization": "Bearer nope-nope"})
        assert wrong.status_code == 403
        assert (await http.post(url, json=body)).status_code == 403
        # a browser session (the cookie) still needs the CSRF header
        session = {"cookie": f"{SESSION_COOKIE}={session_value(TOKEN)}"}
        refused = await http.post(url, json=body, headers=session)
        assert refused.status_code == 403 and "CSRF" in refused.text
        bad = await http.post(url, json={"args": {"order_id": "x"}}, headers=bearer)
        assert bad.status_code == 422
        assert {tuple(e["loc"]) for e in bad.json()["error"]["errors"]} >= {("order_id",)}
        # by name: a job another app's worker stored
        async with other.client(dsn) as storing:
            await storing.backend.register_definitions(*other.definitions())
        remote = await http.post("api/jobs/refund/trigger", json={"args": {"order_id": 3}},
                                 headers=bearer)
        assert remote.status_code == 201 and remote.json()["job"] == "refund"
        missing = await http.post("api/jobs/nope/trigger", json={"args": {}}, headers=bearer)
        assert missing.status_code == 404
