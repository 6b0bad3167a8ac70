"""Deduplication under a real race: many processes, many connections, one dedup id.

Four processes (``python -m tests.proc_apps storm``), each with its own pool, directly and
through PgBouncer in transaction mode (``tests.pgbouncer``), wait at a barrier and then fire 60
concurrent triggers of the same ``(job, dedup_id)``. The partial unique index must let exactly
one run in; every other trigger must learn that run's id.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import orjson
import pytest

from asyncjobs import DuplicateRun
from tests.pgbouncer import Route
from tests.proc_apps import dedup_app, once

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
PROCESSES = 4
TRIGGERS_EACH = 60
DEDUP_ID = "order-7"


def _start_storm(dsn: str, mode: str, route: Route) -> subprocess.Popen[str]:
    pooled = [dsn] if route.bouncer else []  # LISTEN goes straight to the server
    command = [sys.executable, "-m", "tests.proc_apps", "storm", route.dsn(dsn), DEDUP_ID,
               str(TRIGGERS_EACH), mode, *pooled]  # fmt: skip
    return subprocess.Popen(
        command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


def _storm(dsn: str, route: Route) -> list[dict[str, Any]]:
    """Start every process, release them together, gather every outcome."""
    # one process asks for the holder back instead of an error
    modes = ["raise"] * (PROCESSES - 1) + ["return"]
    processes = [_start_storm(dsn, mode, route) for mode in modes]
    try:
        for process in processes:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "ready"
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        outcomes: list[dict[str, Any]] = []
        for process, mode in zip(processes, modes, strict=True):
            out, _ = process.communicate(timeout=60)
            assert process.returncode == 0
            outcomes += [{**o, "mode": mode} for o in orjson.loads(out)]
        return outcomes
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


async def test_concurrent_triggers_of_one_dedup_id_make_one_run(dsn: str, route: Route) -> None:
    outcomes = await anyio.to_thread.run_sync(_storm, dsn, route)
    assert len(outcomes) == PROCESSES * TRIGGERS_EACH

    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT id, job, dedup_id, status::text FROM asyncjobs.runs")
    finally:
        await conn.close()
    assert [(r["job"], r["dedup_id"], r["status"]) for r in rows] == [("once", DEDUP_ID, "pending")]
    run_id = rows[0]["id"]

    created = [o for o in outcomes if o.get("created")]
    assert created == [{"run": run_id, "created": True, "mode": created[0]["mode"]}]
    others = [o for o in outcomes if not o.get("created")]
    for outcome in others:
        if outcome["mode"] == "raise":
            assert outcome == {"duplicate": run_id, "job": "once", "dedup_id": DEDUP_ID,
                               "mode": "raise"}  # fmt: skip
        else:
            assert outcome == {"run": run_id, "created": False, "mode": "return"}


async def test_dedup_id_is_free_again_once_the_run_finished(dsn: str, route: Route) -> None:
    job = once.options(dedup_id=DEDUP_ID)
    options = route.options(dsn)
    async with dedup_app.client(route.dsn(dsn), **options) as client:
        first = await client.trigger_async(job, n=1)
        with pytest.raises(DuplicateRun) as caught:
            await client.trigger_async(job, n=2)
        assert caught.value.existing_run_id == first.id
        async with dedup_app.worker(route.dsn(dsn), concurrency=1, poll_interval=0.05, **options):
            assert await first.result(timeout=30) == 2
        second = await client.trigger_async(job, n=3)
        assert second.created and second.id != first.id
        assert (await client.get_run(second.id)).dedup_id == DEDUP_ID
