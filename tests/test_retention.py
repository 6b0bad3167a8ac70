"""Retention by default: workers delete finished trace trees (runs with their events and
stored errors) older than ``retention``, one worker at a time, in bounded batches."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from asyncjobs import App, ConfigurationError
from asyncjobs.__main__ import build_parser
from asyncjobs.client import Client
from asyncjobs.worker import DEFAULT_RETENTION, RETENTION_INTERVAL

pytestmark = pytest.mark.anyio

app = App("retention")


@app.job
async def work(n: int) -> int:
    if n % 10 == 0:  # some failures: their errors are stored on the run
        raise ValueError(f"run {n} failed on purpose")
    return n


@pytest.fixture
async def client(dsn: str) -> AsyncIterator[Client]:
    async with app.client(dsn) as opened:
        yield opened


async def _counts(conn: asyncpg.Connection) -> tuple[int, int]:
    row = await conn.fetchrow(
        "SELECT (SELECT count(*) FROM asyncjobs.runs) AS runs,"
        "       (SELECT count(*) FROM asyncjobs.run_events) AS events"
    )
    assert row is not None
    return row["runs"], row["events"]


def test_defaults_and_validation() -> None:
    assert timedelta(days=7) == DEFAULT_RETENTION
    assert RETENTION_INTERVAL <= 600  # at most every few minutes
    worker = app.worker("postgresql://unused")
    assert worker.retention == DEFAULT_RETENTION
    assert app.worker("postgresql://unused", retention=None).retention is None
    bad: list[dict[str, Any]] = [
        {"retention": timedelta(seconds=-1)},
        {"retention": 7},
        {"retention_interval": 0},
    ]
    for options in bad:
        with pytest.raises(ConfigurationError, match="retention"):
            app.worker("postgresql://unused", **options)
    parser = build_parser()
    base = ["worker", "tests.test_retention:app"]
    assert parser.parse_args(base).retention == timedelta(days=7)
    assert parser.parse_args([*base, "--retention", "off"]).retention is None
    assert parser.parse_args([*base, "--retention", "12h"]).retention == timedelta(hours=12)


async def test_tables_stop_growing_while_runs_keep_flowing(dsn: str, client: Client) -> None:
    """Soak: 9 s of steady triggering with a 1 s retention and two workers pruning. Row
    counts plateau: the last third holds no more than the middle third (growth would double
    it), far fewer than were written; once triggering stops, everything goes."""
    conn = await asyncpg.connect(dsn)
    workers = [
        app.worker(dsn, concurrency=20, retention=timedelta(seconds=1), retention_interval=0.3)
        for _ in range(2)
    ]
    samples: list[tuple[float, int, int]] = []
    triggered = 0
    try:
        async with workers[0], workers[1]:
            begun = time.monotonic()
            while (elapsed := time.monotonic() - begun) < 9:
                await client.trigger_many(work, [{"n": triggered + i} for i in range(20)])
                triggered += 20
                samples.append((elapsed, *await _counts(conn)))
                await asyncio.sleep(0.1)

            async def all_pruned() -> bool:
                return await _counts(conn) == (0, 0)

            deadline = time.monotonic() + 20
            while not await all_pruned():
                assert time.monotonic() < deadline, f"left: {await _counts(conn)}"
                await asyncio.sleep(0.1)
        pruned = sum(w.stats.pruned_trees for w in workers)
    finally:
        await conn.close()
    middle = [s for s in samples if 3 <= s[0] < 6]
    last = [s for s in samples if s[0] >= 6]
    for column, name in ((1, "runs"), (2, "events")):
        peak_middle = max(s[column] for s in middle)
        peak_last = max(s[column] for s in last)
        total = max(s[column] for s in samples)
        print(  # noqa: T201  (the figures; shown with -s)
            f"\n{name}: peak {peak_middle} in 3-6 s, {peak_last} in 6-9 s, "
            f"{triggered} runs triggered"
        )
        assert peak_last <= 1.5 * peak_middle, (name, peak_middle, peak_last)
        assert total < triggered * (4 if name == "events" else 1) / 2, (name, total)
    assert pruned == triggered  # every tree was deleted once, by one of the two


async def test_one_pruner_at_a_time(dsn: str, client: Client) -> None:
    async with app.worker(dsn, retention=None):
        runs = await client.trigger_many(work, [{"n": n} for n in range(1, 6)])
        for run in runs:
            await run.result(timeout=20)
    holder = await asyncpg.connect(dsn)
    try:
        async with holder.transaction():
            await holder.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended('asyncjobs:prune', 0))"
            )
            # another process is pruning: this one skips at once instead of waiting
            skipped = await asyncio.wait_for(client.prune(timedelta(0)), 5)
            assert skipped.trees == 0
        done = await client.prune(timedelta(0), batch_size=2)  # bounded batches, all of them
        assert (done.trees, done.runs) == (5, 5) and done.events >= 5 * 3
    finally:
        await holder.close()
