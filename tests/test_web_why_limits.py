"""The run page's "why pending" panel names issue 14's reasons readably, in headless Chromium:
a full per-key limit (the key, its slots, the holders as links) and a rate limit (the next
allowed start as a local time with a live countdown).

With ``ASYNCJOBS_DOCS_SCREENSHOT=1`` the README's ``docs/screenshot-why-limits.png`` is written.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from asyncjobs import App, Context
from tests.test_web_browser import CHROMIUM, chromium, open_page
from tests.test_web_views_browser import shoot
from tests.web_support import Gates, dashboard, wait_for, web_app

__all__ = ["chromium"]  # the module's one browser (a fixture, imported to be shared)

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium"),
]


def limits_app() -> tuple[App, Gates]:
    """``web_app`` plus a job limited per tenant to one run at a time and to one start an
    hour: a second run for a tenant waits on both."""
    app, gates = web_app()

    @app.job(concurrency_key="tenant", key_concurrency=1, rate_limit="1/h")
    async def sync_tenant(ctx: Context, tenant: str, gate: str) -> None:
        """Copies one tenant's data; waits for its gate."""
        await gates[gate].wait()

    return app, gates


async def test_key_limit_and_rate_limit_in_the_why_panel(
    dsn: str, tmp_path: Path, chromium: Any
) -> None:
    app, gates = limits_app()
    async with (
        app.client(dsn) as client,
        app.worker(dsn, concurrency=4),
        dashboard(app, dsn) as server,
        open_page(chromium) as (page, problems),
    ):
        holder = await client.trigger_async("sync_tenant", tenant="acme", gate="first")

        async def running() -> bool:
            return (await client.get_run(holder.id)).status.value == "running"

        await wait_for(running)
        waiter = await client.trigger_async("sync_tenant", tenant="acme", gate="second")
        explained = await client.explain(waiter.id)
        codes = {r.code.value for r in explained.reasons}
        assert {"key_limit_full", "rate_limited"} <= codes, explained
        await page.goto(f"{server.url}#/runs/{waiter.id}")

        key = page.locator('#why [data-code="key_limit_full"]')
        await key.wait_for()
        assert await key.locator(".key").inner_text() == "acme"
        assert "1 of 1 running" in await key.inner_text()
        link = key.locator(f'.holders a[href="#/runs/{holder.id}"]')
        assert f"#{holder.id} sync_tenant" in await link.inner_text()

        rate = page.locator('#why [data-code="rate_limited"]')
        await rate.wait_for()
        facts = rate.locator(".next-start")
        assert "job sync_tenant: next start allowed at" in await facts.inner_text()
        # the next start as a local time (the browser runs in this process's time zone)
        data = next(r.data for r in explained.reasons if r.code.value == "rate_limited")
        local: datetime = data["next_start_at"].astimezone()
        shown = facts.locator("b")
        assert await shown.get_attribute("title") == local.strftime("%Y-%m-%d %H:%M:%S")
        assert (await shown.inner_text()).startswith(local.strftime("%H:%M:%S"))
        # about an hour to go, and counting down while the page is open
        countdown = facts.locator(".countdown")
        first = await countdown.inner_text()
        assert re.fullmatch(r"\(in (59m \d+s|1h 0m)\)", first), first
        await page.wait_for_function(
            "(before) => document.querySelector('#why .countdown').textContent !== before",
            arg=first,
        )
        await shoot(chromium, page, "why-limits", tmp_path)

        gates["first"].set()
        await client.wait(holder.id, timeout=20)
        await client.cancel(waiter.id)  # its next start is an hour away
        assert problems == []
