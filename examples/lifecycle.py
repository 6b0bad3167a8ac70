"""Hooks, progress and logs, "why is this run pending?", summaries, and a renamed job."""

import asyncio
import logging
import os
from datetime import timedelta

from asyncjobs import App, Context, Worker

DSN = os.environ.get("ASYNCJOBS_DSN", "postgresql://127.0.0.1/postgres")

app = App("imports")
log = logging.getLogger("imports")


@app.job(aliases=["import_csv"])  # renamed from import_csv: runs stored under it still run
async def import_file(ctx: Context, path: str) -> int:
    rows = 300
    for n in range(rows):
        if n % 100 == 0:
            await ctx.progress(n / rows, f"row {n} of {rows}")  # shown live, stored on the run
    await ctx.log("parsed", level="info", rows=rows)  # a log line with structured fields
    log.warning("3 rows skipped in %s", path)  # `logging` inside a job goes to the run's log
    return rows


@app.on("started")
def announce(worker: Worker) -> None:
    print("worker started, serving", worker.queues)


@app.on("executed")
async def done(ctx: Context) -> None:
    print(f"run {ctx.run_id} of {ctx.job} done")


@app.on("failed")
async def alert(ctx: Context, error: BaseException) -> None:
    print(f"run {ctx.run_id} failed: {error!r}")  # a hook that raises is logged, never fatal


async def main() -> None:
    async with app.worker(DSN, migrate=True), app.client(DSN) as client:
        run = await client.trigger_async(import_file, path="a.csv")
        await run.result(timeout=10)
        for event in await client.get_events(run.id):
            if event.kind in ("progress", "log"):
                print(" ", event.kind, event.data.get("message"), event.data.get("fields", ""))

        # the old name still triggers it (and runs stored under it before the rename run)
        old = await client.trigger_json("import_csv", {"path": "b.csv"})
        print("old name ->", await old.result(timeout=10), "rows")

        # disable the job: its runs wait, and explain() says why
        await client.set_job_enabled("import_file", False)  # `asyncjobs disable job import_file`
        waiting = await client.trigger_async(import_file.options(not_before=timedelta(minutes=5)),
                                             path="c.csv")  # fmt: skip
        print(await client.explain(waiting.id))
        await client.set_job_enabled("import_file", True)
        await client.cancel(waiting.id)

        summary = await client.job_summary(import_file, window=timedelta(hours=24))
        counts = {status.value: n for status, n in summary.counts.items() if n}
        print("last 24 h:", counts, f"p50 {summary.p50:.3f} s, p95 {summary.p95:.3f} s")
        last = await client.last_success(import_file)
        assert last is not None
        print(f"last success: run {last.run_id} at {last.finished_at:%H:%M:%S}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)  # lets INFO records reach the run's log too
    asyncio.run(main())
