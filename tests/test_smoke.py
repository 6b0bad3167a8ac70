from __future__ import annotations

import pytest

from asyncjobs import App, Context

pytestmark = pytest.mark.anyio


async def test_parent_child_chain_with_concurrency_one(dsn: str) -> None:
    app = App("smoke")

    @app.job
    async def child(n: int) -> int:
        return n * 2

    @app.job
    async def parent(ctx: Context, n: int) -> int:
        return await child.run_async(n=n) + ctx.attempt

    async with app.worker(dsn, concurrency=1), app.client(dsn) as client:
        assert await client.run_async(parent, n=20) == 41
        page = await client.get_runs()
        assert [r.job for r in page.runs] == ["child", "parent"]
        child_run, parent_run = page.runs
        assert child_run.parent_run_id == parent_run.id
        assert child_run.root_run_id == parent_run.id == parent_run.root_run_id
