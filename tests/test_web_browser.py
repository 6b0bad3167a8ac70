"""The viewer in headless Chromium (Debian's ``chromium``, driven by Playwright).

Set ``ASYNCJOBS_DOCS_SCREENSHOT=1`` to also write ``docs/screenshot-trace.png`` (the demo's
trace page, as the README shows it).
"""

from __future__ import annotations

import base64
import contextlib
import os
import statistics
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from asyncjobs import App
from tests.web_support import XSS, Card, dashboard, web_app

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DOCS_SCREENSHOT = Path(__file__).parent.parent / "docs" / "screenshot-trace.png"

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.browser,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason="needs Debian's chromium at /usr/bin/chromium "
        "(apt-get install -y chromium; .ci/run installs it)",
    ),
]


@pytest.fixture(scope="module")
async def chromium() -> AsyncIterator[Any]:
    """One headless Chromium for the module (launching one takes seconds); a page per test."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@contextlib.asynccontextmanager
async def open_page(chromium: Any) -> AsyncIterator[tuple[Any, list[str]]]:
    """A page that records script errors and dialogs (an XSS would open one)."""
    page = await chromium.new_page(viewport={"width": 1400, "height": 860})
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("dialog", lambda dialog: problems.append(f"dialog: {dialog.message}"))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    try:
        yield page, problems
    finally:
        await page.close()


async def assert_not_blank(chromium: Any, png: bytes) -> None:
    """Decode the screenshot in a canvas and check it has real content: many colours, and
    a brightness spread far from a flat page."""
    page = await chromium.new_page()
    try:
        stats = await page.evaluate(
            """async (data) => {
                const img = new Image();
                img.src = "data:image/png;base64," + data;
                await img.decode();
                const canvas = document.createElement("canvas");
                canvas.width = img.width; canvas.height = img.height;
                const ctx = canvas.getContext("2d");
                ctx.drawImage(img, 0, 0);
                const px = ctx.getImageData(0, 0, img.width, img.height).data;
                const colours = new Set();
                let sum = 0, sq = 0, n = 0;
                for (let i = 0; i < px.length; i += 16) {
                    const y = 0.299 * px[i] + 0.587 * px[i + 1] + 0.114 * px[i + 2];
                    sum += y; sq += y * y; n++;
                    colours.add((px[i] << 16) | (px[i + 1] << 8) | px[i + 2]);
                }
                const mean = sum / n;
                return { colours: colours.size, std: Math.sqrt(sq / n - mean * mean) };
            }""",
            base64.b64encode(png).decode(),
        )
    finally:
        await page.close()
    assert stats["colours"] > 50 and stats["std"] > 10, stats


async def test_trigger_from_the_form_and_watch_the_tree_turn_green_live(
    dsn: str, tmp_path: Path, chromium: Any
) -> None:
    app, gates = web_app()
    async with (
        app.client(dsn) as client,
        app.worker(dsn, concurrency=4),
        dashboard(app, dsn) as server,
        open_page(chromium) as (page, problems),
    ):
        await page.goto(server.url + "#/jobs")
        await page.click('#jobs tr[data-job="tree"] a[data-action="open-trigger"]')
        await page.fill("#arg-width", "3")
        await page.fill("#arg-gate", "go")
        await page.click('#trigger-form button[type="submit"]')
        await page.wait_for_url("**/#/runs/*")
        run_id = int(page.url.rsplit("/", 1)[1])
        assert (await client.get_run(run_id)).trigger.value == "api"
        await page.evaluate("window.__stillTheSamePage = true")
        root = f'#tree tr[data-run-id="{run_id}"]'
        await page.wait_for_selector(f'{root}[data-status="running"]')
        assert await page.locator("#tree tr[data-run-id]").count() == 1
        gates["go"].set()  # the children appear and finish while we look
        await page.wait_for_selector(f'{root}[data-status="succeeded"]', timeout=20_000)
        rows = page.locator("#tree tr[data-run-id]")
        assert await rows.count() == 4
        assert set(await rows.evaluate_all("rs => rs.map(r => r.dataset.status)")) == {"succeeded"}
        assert await page.evaluate("window.__stillTheSamePage") is True, "no reload happened"
        await page.wait_for_selector('#live[data-state="ended"]')
        assert "3 of 3 leaves" in await page.locator("#details").inner_text()
        trace_png = await page.screenshot(path=str(tmp_path / "trace.png"), full_page=True)
        await assert_not_blank(chromium, trace_png)

        # the run table updates live too
        await page.click('a[data-nav="runs"]')
        await page.wait_for_selector(f'#runs tr[data-run-id="{run_id}"]')
        new = await client.trigger_async("leaf", n=5)
        await page.wait_for_selector(
            f'#runs tr[data-run-id="{new.id}"][data-status="succeeded"]', timeout=20_000
        )
        table_png = await page.screenshot(path=str(tmp_path / "runs.png"), full_page=True)
        await assert_not_blank(chromium, table_png)
        assert problems == []


async def test_cancel_a_running_run_from_the_page(dsn: str, chromium: Any) -> None:
    app, _ = web_app()
    async with (
        app.client(dsn) as client,
        app.worker(dsn, concurrency=2),
        dashboard(app, dsn) as server,
        open_page(chromium) as (page, problems),
    ):
        run = await client.trigger_async("hold", gate="forever")
        await page.goto(f"{server.url}#/runs/{run.id}")
        row = f'#tree tr[data-run-id="{run.id}"]'
        await page.wait_for_selector(f'{row}[data-status="running"]')
        await page.click(f'#details button[data-action="cancel"][data-run-id="{run.id}"]')
        await page.wait_for_selector(f'{row}[data-status="cancelled"]', timeout=20_000)
        assert (await client.get_run(run.id)).status.value == "cancelled"
        await page.wait_for_selector('#live[data-state="ended"]')
        assert await page.locator('#details button[data-action="cancel"]').count() == 0
        assert problems == []


async def test_script_in_args_and_logs_is_shown_as_text_and_secrets_stay_hidden(
    dsn: str, chromium: Any
) -> None:
    app, _ = web_app()
    async with (
        app.client(dsn) as client,
        app.worker(dsn, concurrency=2),
        dashboard(app, dsn) as server,
        open_page(chromium) as (page, problems),
    ):
        echo = await client.trigger_async("echo", text=XSS)
        secret = await client.trigger_async(
            "secretive",
            user=XSS,
            password="hunter2-password",
            card=Card(holder="Ada", number="4111-1111-1111-1111"),
        )
        for run in (echo, secret):
            await client.wait(run.id, timeout=20)
        await page.goto(f"{server.url}#/runs/{echo.id}")
        await page.wait_for_selector(f'#tree tr[data-run-id="{echo.id}"][data-status="succeeded"]')
        details = page.locator("#details")
        await details.locator(".logs .text").first.wait_for()
        assert XSS in await details.locator("pre.args").inner_text()
        assert XSS in await details.locator("pre.result").inner_text()
        assert await details.locator(".logs .text").first.inner_text() == XSS
        assert await page.locator("#view script, #view img").count() == 0
        assert await page.evaluate("window.__pwned") is None

        await page.goto(f"{server.url}#/runs/{secret.id}")
        await page.wait_for_selector(
            f'#tree tr[data-run-id="{secret.id}"][data-status="succeeded"]'
        )
        args = await page.locator("#details pre.args").inner_text()
        assert "[redacted]" in args and "Ada" in args and XSS in args
        html = await page.content()
        assert "hunter2-password" not in html and "4111-1111-1111-1111" not in html

        await page.goto(f"{server.url}#/")
        await page.wait_for_selector(f'#runs tr[data-run-id="{secret.id}"]')
        await page.goto(f"{server.url}#/jobs/secretive")
        assert await page.locator("#arg-password").get_attribute("type") == "password"
        assert problems == []


async def test_event_lag_from_the_database_to_the_browser(dsn: str, chromium: Any) -> None:
    """Each progress update is a state change written with its event; the page records,
    for every event it receives, now minus the event's database timestamp."""
    app, _ = web_app()
    async with (
        app.client(dsn) as client,
        app.worker(dsn, concurrency=2),
        dashboard(app, dsn) as server,
        open_page(chromium) as (page, problems),
    ):
        await page.goto(f"{server.url}#/")
        await page.wait_for_selector('#live[data-state="live"]')  # scripts loaded
        pulse = await client.trigger_async("pulse", count=100, every=0.02)
        await page.goto(f"{server.url}#/runs/{pulse.id}")
        await page.wait_for_selector('#live[data-state="ended"]', timeout=30_000)
        lags: list[float] = await page.evaluate("window.asyncjobs.lags")
        assert len(lags) >= 80
        cuts = statistics.quantiles(lags, n=100)
        p50, p99 = statistics.median(lags), cuts[98]
        report = (
            f"event lag, database → browser, {len(lags)} events: p50 {p50:.1f} ms, p99 {p99:.1f} ms"
        )
        print(f"\n{report}")  # noqa: T201 - the measurement is the point (pytest -s shows it)
        assert p50 < 250, report  # the target is 50 ms; generous for loaded CI machines
        assert problems == []


async def test_the_demo_trace_page(dsn: str, tmp_path: Path, chromium: Any) -> None:
    """The demo's checkout tree (three levels, progress, logs, a retry) in the viewer."""
    from asyncjobs.demo import app, checkout

    demo: App = app
    async with (
        demo.client(dsn) as client,
        demo.worker(dsn, concurrency=4),
        dashboard(demo, dsn, title="asyncjobs demo") as server,
        open_page(chromium) as (page, problems),
    ):
        run = await client.trigger_async(
            checkout, order_id=7, skus=["apple", "pear", "fig"], pace=0.2
        )
        await page.goto(f"{server.url}#/runs/{run.id}")
        await page.wait_for_selector('#live[data-state="ended"]', timeout=30_000)
        rows = page.locator("#tree tr[data-run-id]")
        assert await rows.count() == 8
        assert await page.locator('#tree tr[data-job="reserve_item"]').count() == 3
        await page.click('#tree tr[data-job="ship"]')
        await page.wait_for_selector("#details .logs .text")
        png = await page.screenshot(path=str(tmp_path / "demo-trace.png"))
        await assert_not_blank(chromium, png)
        if os.environ.get("ASYNCJOBS_DOCS_SCREENSHOT"):
            DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
            DOCS_SCREENSHOT.write_bytes(png)
        assert problems == []
