"""Queries that must stay bounded behind a large backlog (issue 16; the figures at 5M
pending runs are in benchmarks/README.md, "Large backlogs").

``explain()`` of a ready run counts the ready runs ahead of it only up to
``AHEAD_COUNTED`` (+1, to know there are more): an exact count would walk the whole pending
index of the queue. The backlog is written server-side (``generate_series``), as the
benchmark does.
"""

from __future__ import annotations

import asyncpg
import pytest

from asyncjobs import App, ReasonCode
from asyncjobs.backends.base import WorkerInfo
from asyncjobs.explain import AHEAD_COUNTED

pytestmark = pytest.mark.anyio

app = App("scale")


@app.job
async def plain() -> None:
    pass


async def _backlog(dsn: str, n: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO asyncjobs.runs (id, job, queue, args, root_run_id)"
            " SELECT g, $1, 'default', '{}', g FROM generate_series(1, $2::bigint) g",
            plain.name, n,
        )  # fmt: skip
        await conn.execute(f"SELECT setval('asyncjobs.run_ids', {n})")
    finally:
        await conn.close()


async def test_explain_counts_the_runs_ahead_only_up_to_a_cap(dsn: str) -> None:
    await _backlog(dsn, AHEAD_COUNTED + 5)
    async with app.client(dsn) as client:
        await client.backend.register_definitions(*app.definitions())
        info = WorkerInfo("w1", "host", 1, ("default",), (plain.name,), 4)
        await client.backend.register_worker(info)
        last = await client.explain(AHEAD_COUNTED + 5)
        exact = await client.explain(AHEAD_COUNTED + 1)  # exactly AHEAD_COUNTED before it
    assert last.codes == [ReasonCode.READY]
    assert last.reasons[0].data == {"ahead": AHEAD_COUNTED, "ahead_capped": True,
                                    "queue": "default"}  # fmt: skip
    assert f"more than {AHEAD_COUNTED} ready runs" in str(last)
    assert exact.reasons[0].data == {"ahead": AHEAD_COUNTED, "queue": "default"}
    assert f"; {AHEAD_COUNTED} ready runs" in str(exact)
