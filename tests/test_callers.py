"""Any caller can trigger: by name from a process without the job's code, from sync code in
many threads, and plain ``def`` jobs run in threads. One worker process
(``asyncjobs worker tests.caller_apps:app``) serves the whole module."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import anyio
import asyncpg
import orjson
import pytest

import asyncjobs
from asyncjobs import (
    App,
    Client,
    InvalidArguments,
    JobRef,
    RunFailed,
    RunStatus,
    RunTimeout,
    SyncClient,
    UnknownJob,
)

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
pytestmark = pytest.mark.anyio


def _registered(dsn: str) -> bool:
    async def check() -> bool:
        conn = await asyncpg.connect(dsn)
        try:
            return bool(await conn.fetchval("SELECT count(*) FROM asyncjobs.jobs"))
        finally:
            await conn.close()

    return anyio.run(check)


@pytest.fixture(scope="module")
def worker_dsn(module_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The module's database with a worker process of ``tests.caller_apps`` serving it."""
    log = tmp_path_factory.mktemp("callers") / "worker.log"
    with log.open("wb") as output, subprocess.Popen(
        [sys.executable, "-m", "asyncjobs", "worker", "tests.caller_apps:app", "--dsn",
         module_dsn, "--concurrency", "16", "--poll-interval", "0.2", "--drain-timeout", "1"],
        cwd=ROOT, env=ENV, stdout=output, stderr=output,
    ) as worker:
        try:
            deadline = time.monotonic() + 60
            while not _registered(module_dsn):  # the worker stores its jobs when it starts
                assert worker.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "the worker did not register its jobs"
                time.sleep(0.05)
            yield module_dsn
        finally:
            worker.terminate()
            worker.wait(30)


async def _count(dsn: str, where: str = "true") -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM asyncjobs.runs WHERE {where}"))
    finally:
        await conn.close()


# ---------------------------------------------------------------------- by name


async def test_a_process_without_the_code_triggers_by_name(worker_dsn: str) -> None:
    with anyio.fail_after(90):
        done = await anyio.run_process(
            [sys.executable, "-m", "tests.caller_remote", worker_dsn], cwd=ROOT, env=ENV,
            check=False,
        )
    assert done.returncode == 0, done.stderr.decode()
    seen = orjson.loads(done.stdout.decode().strip().splitlines()[-1])
    assert seen["imported"] is False  # it never had the job's code
    assert seen["sum"] == 5
    assert seen["typed"] == [3.0, "float"]  # JobRef("add", float) validates the result
    assert seen["by_alias"] == 42
    assert seen["default_arg"] == "hello ann!"  # the worker fills in the default
    errors = {tuple(e["loc"]): e["type"] for e in seen["invalid"]["errors"]}
    assert errors == {("b",): "type", ("c",): "extra_forbidden"}
    assert "b: " in seen["invalid"]["message"]
    assert "no worker has stored it" in seen["unknown"]
    assert seen["options"] == {
        "priority": 9, "dedup_id": "remote-1", "queue": "side", "max_attempts": 2,
        "trigger": "api", "delay_s": pytest.approx(3600, abs=5),
    }
    assert seen["defaults"] == {"priority": 3, "queue": "default", "max_attempts": 2}
    assert seen["outcome"] == {"ok": False, "status": "failed", "type": "ValueError",
                               "message": "no", "traceback": True}
    # the refused triggers wrote nothing
    assert await _count(worker_dsn, "args->>'b' = 'two'") == 0
    assert await _count(worker_dsn, "job = 'no_such_job'") == 0


async def test_unknown_until_a_worker_stores_the_job(dsn: str) -> None:
    async with Client(dsn) as client:
        with pytest.raises(UnknownJob, match="no worker has stored it"):
            await client.trigger_json("add", {"a": 1, "b": 2})
        with pytest.raises(UnknownJob):
            await client.run_async("add", a=1, b=2)
    assert await _count(dsn) == 0


async def test_the_validator_is_compiled_once_and_refreshed_on_change(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from asyncjobs import remote, schema_validation

    compiled: list[str] = []
    real = schema_validation.compile_schema  # the function remote imported

    def counting(job: str, schema: dict[str, object]) -> object:
        compiled.append(job)
        return real(job, schema)

    monkeypatch.setattr(remote, "compile_schema", counting)
    old, new = App("v1"), App("v2")

    @old.job(name="resize")
    async def resize_v1(width: int) -> None: ...

    @new.job(name="resize", priority=5)
    async def resize_v2(width: int, height: int) -> None: ...

    async with old.client(dsn) as storing, Client(dsn) as client:
        await storing.backend.register_definitions(*old.definitions())
        for width in (1, 2, 3):
            await client.trigger_async("resize", width=width)
        assert compiled == ["resize"]
        await storing.backend.register_definitions(*new.definitions())  # a new deployment
        with pytest.raises(InvalidArguments) as refused:
            await client.trigger_async("resize", width=4)
        assert refused.value.errors[0]["loc"] == ["height"]
        run = await client.trigger_async("resize", width=4, height=3)
        assert (await run.get()).priority == 5
        many = await client.trigger_many("resize", [{"width": 5, "height": 1},
                                                    {"width": 6, "height": 2}])
        assert [r.job.name for r in many] == ["resize", "resize"]
        with pytest.raises(InvalidArguments):  # one bad item: none is written
            await client.trigger_many("resize", [{"width": 7, "height": 1}, {"width": 8}])
        assert compiled == ["resize", "resize"]
    assert await _count(dsn) == 6


async def test_by_name_refuses_what_json_cannot_hold(dsn: str) -> None:
    app = App("store")

    @app.job
    async def take(payload: dict[str, object]) -> None: ...

    async with app.client(dsn) as storing, Client(dsn) as client:
        await storing.backend.register_definitions(*app.definitions())
        for bad in ({"payload": {"x": "a\x00b"}}, {"payload": {"x": float("nan")}},
                    {"payload": {"x": 2**70}}, {"payload": {"x": "\udc80"}}, ["payload"]):
            with pytest.raises(InvalidArguments):
                await client.trigger_json("take", bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidArguments, match="by keyword"):
            await client.trigger_async("take", {"x": 1})
        for name in ("ta\x00ke", "x" * 201, ""):
            with pytest.raises(InvalidArguments, match="job name"):
                await client.trigger_json(name, {})
    assert await _count(dsn) == 0


# ---------------------------------------------------------------------- results


async def test_wait_returns_outcomes_without_raising(worker_dsn: str) -> None:
    async with Client(worker_dsn) as client:
        ok = await (await client.trigger_async(JobRef("add", int), a=2, b=2)).wait(timeout=30)
        assert (ok.ok, ok.status, ok.value, ok.error) == (True, RunStatus.SUCCEEDED, 4, None)
        failed = await (await client.trigger_async("boom", message="x")).wait(timeout=30)
        assert not failed.ok and failed.value is None and failed.error is not None
        assert failed.error.type == "ValueError" and "raise ValueError" in failed.error.traceback
        held = await client.trigger_json("add", {"a": 1, "b": 1}, not_before=timedelta(hours=1))
        with pytest.raises(RunTimeout):
            await held.wait(timeout=0.2)
        await held.cancel()
        cancelled = await held.wait(timeout=30)
        assert (cancelled.ok, cancelled.status, cancelled.error) == (
            False, RunStatus.CANCELLED, None)
        with pytest.raises(RunFailed):  # result() still raises
            await (await client.trigger_async("boom", message="y")).result(timeout=30)


# ---------------------------------------------------------------------- plain def jobs


async def test_plain_functions_run_in_threads_with_their_context(worker_dsn: str) -> None:
    async with Client(worker_dsn) as client:
        value = await client.run_json("sync_add", {"a": 1, "b": 2}, wait_timeout=30)
        assert value["sum"] == 3 and value["main"] is False
        run = await client.trigger_json("sync_context", {"n": 4})
        assert await run.result(timeout=30) == {"same": True, "run_id": run.id, "n": 4}
        kinds = [e.kind for e in await client.get_events(run.id)]
        assert "progress" in kinds  # sent from the thread through anyio.from_thread
        started = time.monotonic()
        slow = await (await client.trigger_json("sync_sleeper", {"seconds": 5})).wait(30)
        assert slow.error is not None and slow.error.type == "asyncjobs.errors.JobTimeout"
        assert time.monotonic() - started < 4  # the run did not wait for the thread


async def test_plain_jobs_are_bounded_by_the_worker_concurrency(dsn: str) -> None:
    app = App("threads")
    lock = threading.Lock()
    active, peak = [0], [0]

    @app.job
    def busy(n: int) -> int:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1
        return n

    async with app.worker(dsn, concurrency=3, poll_interval=0.05), app.client(dsn) as client:
        runs = [await client.trigger_async(busy, n=n) for n in range(12)]
        assert [await r.result(timeout=30) for r in runs] == list(range(12))
    assert 1 <= peak[0] <= 3


async def test_calling_a_job_calls_the_function() -> None:
    from tests import caller_apps

    assert await caller_apps.add(2, 3) == 5
    assert caller_apps.sync_add(a=1, b=1)["sum"] == 2  # a def job: no await
    with pytest.raises(TypeError, match="takes a Context first"):
        caller_apps.sync_context(n=1)


# ---------------------------------------------------------------------- sync client


def test_sync_client_in_eight_threads_runs_a_thousand_jobs(worker_dsn: str) -> None:
    before = set(threading.enumerate())
    per_thread = 125
    with SyncClient(worker_dsn) as jobs:

        def caller(offset: int) -> list[int]:
            runs = [jobs.trigger("add", a=offset, b=i) for i in range(per_thread)]
            return [run.result(timeout=60) - offset for run in runs]

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(caller, range(8)))
        assert results == [list(range(per_thread))] * 8
        page = jobs.get_runs(job="add", status="succeeded", limit=10)
        assert len(page.runs) == 10 and page.next_cursor is not None
    assert set(threading.enumerate()) == before  # the client's loop thread is gone


def test_sync_client_reads_cancels_and_closes(worker_dsn: str) -> None:
    app = App("typed")

    @app.job(name="add")
    async def add(a: int, b: int) -> int:
        raise NotImplementedError("the worker process of tests.caller_apps runs it")

    jobs = SyncClient(app, worker_dsn)
    try:
        assert jobs.run(add, 1, 2, timeout=30) == 3
        assert jobs.run_json("add", {"a": 1, "b": 5}, result_type=float) == 6.0
        held = jobs.trigger_json("add", {"a": 0, "b": 0}, not_before=timedelta(hours=1))
        assert held.get().status is RunStatus.PENDING
        assert held.cancel() == [(held.id, RunStatus.CANCELLED)]
        assert jobs.wait(held.id, timeout=30).status is RunStatus.CANCELLED
        failed = jobs.trigger("boom", message="z").wait(timeout=30)
        assert failed.error is not None and failed.error.message == "z"
        with pytest.raises(InvalidArguments):
            jobs.trigger(add, a="x", b=1)
    finally:
        jobs.close()
    jobs.close()  # twice is fine
    with pytest.raises(asyncjobs.ConfigurationError, match="closed"):
        jobs.get_run(1)
