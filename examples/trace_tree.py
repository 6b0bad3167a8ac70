"""Runs triggered from inside a job form a trace tree; read it back and cancel subtrees."""

import asyncio
import os

from asyncjobs import App, Context, RunCancelled
from asyncjobs.trace import build_tree, render_tree

DSN = os.environ.get("ASYNCJOBS_DSN", "postgresql://127.0.0.1/postgres")

app = App("trace")


@app.job
async def leaf(n: int) -> int:
    return n * n


@app.job
async def branch(ctx: Context, n: int) -> int:
    await ctx.log(f"branch {n} fans out")
    squares = await asyncio.gather(*(leaf.run_async(n=i) for i in range(n)))
    return sum(squares)


@app.job
async def root(ctx: Context) -> int:
    totals = await asyncio.gather(branch.run_async(n=2), branch.run_async(n=3))
    return sum(totals)


@app.job
async def forever() -> None:
    await asyncio.sleep(3600)


async def main() -> None:
    async with app.worker(DSN, concurrency=2, migrate=True), app.client(DSN) as client:
        run = await client.trigger_async(root)
        print("result:", await run.result(timeout=30))
        tree = await client.get_runs(root_run_id=run.id, limit=100)
        print(render_tree(build_tree(tree.runs)))
        children = await client.get_runs(parent_run_id=run.id)
        print("children of the root:", sorted(r.job for r in children.runs))

        slow = await client.trigger_async(forever)
        await client.cancel(slow.id, cascade=True)  # pending or running: both stop
        try:
            await slow.result(timeout=10)
        except RunCancelled:
            print("run", slow.id, "cancelled")


if __name__ == "__main__":
    asyncio.run(main())
