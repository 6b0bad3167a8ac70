"""Per-trigger options: priority, delayed start, expiry, deduplication."""

import asyncio
import os
from datetime import UTC, datetime, timedelta

from asyncjobs import App, DuplicateRun, RunExpired

DSN = os.environ.get("ASYNCJOBS_DSN", "postgresql://127.0.0.1/postgres")

app = App("options")


@app.job
async def reindex(tenant: str) -> str:
    return f"reindexed {tenant}"


async def main() -> None:
    async with app.client(DSN, migrate=True) as client:
        # higher priority runs first; not_before delays the start
        urgent = await client.trigger_async(reindex.options(priority=10), tenant="acme")
        later = await client.trigger_async(
            reindex.options(not_before=timedelta(seconds=1)), tenant="globex"
        )
        # a run that nobody starts before not_after expires instead of running late
        stale = await client.trigger_async(
            reindex.options(not_after=datetime.now(UTC)), tenant="initech"
        )
        # one active run per (job, dedup_id): the database enforces it
        first = await client.trigger_async(reindex.options(dedup_id="tenant-acme"), tenant="acme")
        try:
            await client.trigger_async(reindex.options(dedup_id="tenant-acme"), tenant="acme")
        except DuplicateRun as exc:
            print("duplicate of run", exc.existing_run_id, exc.existing_run_id == first.id)
        same = await client.trigger_async(
            reindex.options(dedup_id="tenant-acme", on_duplicate="return"), tenant="acme"
        )
        print("returned the existing run:", same.id == first.id, "created:", same.created)

        async with app.worker(DSN, sweep_interval=0.2):
            print(await urgent.result(timeout=10), "/", await later.result(timeout=10))
            await first.result(timeout=10)  # done: its dedup_id is free again
            try:
                await stale.result(timeout=10)
            except RunExpired:
                print("run", stale.id, "expired")


if __name__ == "__main__":
    asyncio.run(main())
