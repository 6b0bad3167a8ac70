"""asyncjobs adapter for the shared anchor harness (../shared/bench-anchors/_common.py).

Everything a user gets is on: limits machinery, fenced batched completions, run events,
NOTIFY wake-ups. The producer is a Client (its own pool); the worker is an in-process
``Worker`` with concurrency C, as the harness requires.

Usage: python benchmarks/bench_asyncjobs.py [harness options]; see benchmarks/README.md.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg

# ../shared/bench-anchors beside the repository (BENCH_HARNESS overrides)
HARNESS = Path(os.environ.get("BENCH_HARNESS")
               or Path(__file__).resolve().parents[2] / "shared" / "bench-anchors")
sys.path.insert(0, str(HARNESS))

import _common  # noqa: E402

import asyncjobs  # noqa: E402
from asyncjobs import App, Worker  # noqa: E402
from asyncjobs.backends.postgres import PostgresBackend  # noqa: E402

app = App("bench")
_on_job: Callable[[int], None] = lambda i: None  # noqa: E731  (set by start_worker)


@app.job
async def bench_noop(i: int) -> None:
    _on_job(i)


class Producer:
    def __init__(self, client: Any) -> None:
        self.client = client

    async def enqueue_one(self, i: int) -> None:
        await self.client.trigger_async(bench_noop, i=i)

    async def enqueue_many(self, idx: list[int]) -> None:
        await self.client.trigger_many(bench_noop, [{"i": i} for i in idx])

    async def close(self) -> None:
        await self.client.__aexit__(None, None, None)


class RunningWorker:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def stop(self) -> None:
        self.worker.stop()
        await self.worker.wait()


class AsyncjobsAdapter:
    name = "asyncjobs"
    version = "0.1.0"

    def __init__(self) -> None:
        self.config: dict[str, Any] = {
            "producer": "Client (asyncpg pool, 1..10 connections)",
            "worker": "Worker(concurrency=C), claims batches up to free capacity",
            "asyncpg": asyncpg.__version__,
            "package": asyncjobs.__file__,
        }

    async def install(self, dsn: str) -> None:
        backend = PostgresBackend(dsn, migrate=True)
        await backend.open()
        await backend.close()

    async def open_producer(self, dsn: str) -> Producer:
        client = app.client(dsn)
        await client.__aenter__()
        return Producer(client)

    async def start_worker(
        self, dsn: str, concurrency: int, on_job: Callable[[int], None]
    ) -> RunningWorker:
        global _on_job
        _on_job = on_job
        worker = app.worker(dsn, concurrency=concurrency)
        await worker.__aenter__()
        return RunningWorker(worker)

    async def count_enqueued(self, conn: asyncpg.Connection) -> int:
        return int(await conn.fetchval("SELECT count(*) FROM asyncjobs.runs"))

    async def count_done(self, conn: asyncpg.Connection) -> int:
        return int(await conn.fetchval(
            "SELECT count(*) FROM asyncjobs.runs WHERE status = 'succeeded'"))

    async def analyze(self, conn: asyncpg.Connection) -> None:
        await conn.execute("ANALYZE asyncjobs.runs; ANALYZE asyncjobs.run_events")


if __name__ == "__main__":
    _common.main(AsyncjobsAdapter())
