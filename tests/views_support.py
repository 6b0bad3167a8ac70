"""The app and data the dashboard's cluster views are tested with (API and browser)."""

from __future__ import annotations

from datetime import timedelta

import asyncpg

from asyncjobs import App, Context
from tests.web_support import Gates, web_app

SCHEDULE_SECRET = "schedule-secret-0xdeadbeef"


def views_app() -> tuple[App, Gates]:
    """``web_app`` plus a schedule with a redacted argument and a job limited to one run."""
    app, gates = web_app()

    @app.job(
        every=timedelta(hours=6),
        initial_delay=timedelta(hours=1),
        schedule_args={"region": "eu", "api_key": SCHEDULE_SECRET},
        redact=["api_key"],
        misfire="skip",
    )
    async def nightly_report(ctx: Context, region: str, api_key: str) -> str:
        """Builds the nightly report of a region."""
        return region

    @app.job(schedule="*/15 * * * *", timezone="Europe/Berlin")
    async def sweep_carts(ctx: Context) -> int:
        """Drops abandoned shopping carts every quarter of an hour."""
        return 0

    @app.job(max_concurrency=1)
    async def single(ctx: Context, gate: str) -> None:
        """One at a time cluster-wide: a second run waits on the limit."""
        await gates[gate].wait()

    @app.job(retries=1, backoff_base=600)
    async def flaky(ctx: Context, text: str) -> None:
        """Fails with ``text``; its retry waits ten minutes."""
        raise ValueError(text)

    return app, gates


async def backdate(dsn: str, minutes: float) -> None:
    """Spread the finished runs over the last ``minutes`` (keeping id order = creation order,
    which the per-minute query relies on), as if they had run over that time."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            """
            WITH ranked AS (
                SELECT id, row_number() OVER (ORDER BY id DESC) AS back,
                       count(*) OVER () AS n
                  FROM asyncjobs.runs WHERE finished_at IS NOT NULL
            )
            UPDATE asyncjobs.runs r
               SET created_at = now() - make_interval(secs => k.offset_s + 0.5),
                   started_at = now() - make_interval(secs => k.offset_s + 0.4),
                   finished_at = now() - make_interval(secs => k.offset_s)
                                 + (r.finished_at - r.started_at)
              FROM (SELECT id, (back - 1) * $1::float8 * 60 / n AS offset_s FROM ranked) k
             WHERE r.id = k.id
            """,
            minutes,
        )
    finally:
        await conn.close()
