"""The hot path between a trigger and its start, and between a success and its waiting caller.

* a wake-up that arrives while a claim is in flight makes the worker claim again (the race is
  made deterministic by a hook in the claim, not by sleeping);
* one claim per run when an idle worker of this process is woken by a trigger of this
  process (the NOTIFY's echo and the freed slot do not claim again);
* ``run_async`` takes a success's result from the completion NOTIFY (no query); a result too
  big for the payload and a failure are looked up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pydantic
import pytest

from asyncjobs import App, Client, RunFailed, Worker
from asyncjobs.backends.base import Completion, JobDefinition, NewRun, Notification
from asyncjobs.backends.postgres import PostgresBackend
from asyncjobs.runs import RunRecord, RunStatus
from tests.faults import eventually

pytestmark = pytest.mark.anyio

WAIT = 20.0  # generous: other tests share the cores
#: long enough that nothing in these tests is found by polling: only wake-ups count
NO_POLL: dict[str, Any] = {"poll_interval": 60.0, "sweep_interval": 30.0, "heartbeat_interval": 5.0}


class HookedBackend(PostgresBackend):
    """Runs ``after_claim`` once, after a claim that took runs has run in the database and
    before the worker sees its result: the claim is still in flight for the worker."""

    after_claim: Callable[[], Awaitable[None]] | None = None

    async def claim(self, *args: Any, **kwargs: Any) -> list[RunRecord]:
        records = await super().claim(*args, **kwargs)
        hook = self.after_claim
        if records and hook is not None:
            self.after_claim = None
            await hook()
        return records


class CountingBackend(PostgresBackend):
    """Counts the statements that read finished runs (what a waiter would query)."""

    def __init__(self, dsn: str, **options: Any) -> None:
        super().__init__(dsn, **options)
        self.result_queries = 0

    async def terminal_runs(self, run_ids: Any) -> list[RunRecord]:
        self.result_queries += 1
        return await super().terminal_runs(run_ids)

    async def get_run(self, run_id: int) -> RunRecord | None:
        self.result_queries += 1
        return await super().get_run(run_id)


class Receipt(pydantic.BaseModel):
    number: int
    lines: list[str]


app = App("wakeups")
started: list[int] = []


@app.job
async def mark(i: int) -> int:
    started.append(i)
    return i


@app.job
async def receipt(number: int) -> Receipt:
    return Receipt(number=number, lines=[f"line {number}", "é ☃"])


@app.job
async def big(size: int) -> str:
    return "x" * size


@app.job
async def explode(message: str) -> None:
    raise ValueError(message)


@app.job
async def parent(message: str) -> str:
    try:
        await explode.run_async(message=message)
    except RunFailed as exc:
        return f"{exc.error_type}: {exc.error_message}"
    return "no error"


async def _eventually(check: Callable[[], bool], what: str) -> None:
    async def holds() -> bool:
        return check()

    await eventually(holds, WAIT, what)


async def _listening(*backends: PostgresBackend) -> None:
    for backend in backends:
        await asyncio.wait_for(backend._listener.connected.wait(), WAIT)


@pytest.mark.parametrize("path", ["local", "notify"])
async def test_a_wake_during_an_inflight_claim_is_not_lost(dsn: str, path: str) -> None:
    """The claim that takes run 1 comes back short (one of ten), which would mean "drained";
    run 2 is triggered after that claim's statement ran and before the worker saw its
    result. Only the wake-up it causes (from this process, or by NOTIFY from a client the
    process cannot wake itself: another DSN string) can start run 2 before the 60 s poll."""
    started.clear()
    backend = HookedBackend(dsn)
    other = dsn + ("&" if "?" in dsn else "?") + "application_name=other-client"
    async with (
        Worker(app, backend, concurrency=10, **NO_POLL) as worker,
        app.client(dsn if path == "local" else other) as client,
    ):
        await _listening(backend)

        async def trigger_second() -> None:
            await client.trigger_async(mark, i=2)

        backend.after_claim = trigger_second
        await client.trigger_async(mark, i=1)
        await _eventually(lambda: started == [1, 2], "run 2 started without a poll")
        assert backend.after_claim is None  # the hook did run inside the claim
        assert worker.stats.claimed == 2


async def test_one_claim_per_run_woken_in_process(dsn: str) -> None:
    """A trigger of this process wakes its idle worker directly: one claim, which takes the
    run and (being short) ends the round. The NOTIFY's echo and the slot the run gives back
    claim nothing more."""
    started.clear()
    async with app.worker(dsn, concurrency=10, **NO_POLL) as worker, app.client(dsn) as client:
        await _listening(worker.backend)  # type: ignore[arg-type]
        assert await client.run_async(mark, i=0) == 0
        claims = worker.stats.claims
        for i in range(1, 6):
            assert await client.run_async(mark, i=i) == i
        # the NOTIFY echoes of the last trigger have had every chance to arrive
        await client.run_async(mark, i=6)
        assert worker.stats.claims - claims == 6
        assert worker.stats.claimed == 7


async def _client(dsn: str) -> tuple[Client, CountingBackend]:
    backend = CountingBackend(dsn)
    return Client(app, backend, poll_interval=60.0), backend


async def test_run_async_takes_a_small_result_from_the_notification(dsn: str) -> None:
    client, backend = await _client(dsn)
    async with app.worker(dsn, concurrency=4, **NO_POLL), client:
        await client.run_async(mark, i=0)  # the client's LISTEN session is up after this
        await _listening(backend)
        backend.result_queries = 0
        for number in range(3):
            value = await client.run_async(receipt, number=number)
            assert value == Receipt(number=number, lines=[f"line {number}", "é ☃"])
            assert type(value) is Receipt  # typed exactly as when read from the run
        values = await asyncio.gather(*(client.run_async(mark, i=i) for i in range(20)))
        assert values == list(range(20))
        assert backend.result_queries == 0


async def test_a_result_over_the_payload_limit_still_arrives(dsn: str) -> None:
    client, backend = await _client(dsn)
    async with app.worker(dsn, concurrency=4, **NO_POLL), client:
        await client.run_async(mark, i=0)
        await _listening(backend)
        backend.result_queries = 0
        assert await client.run_async(big, size=20_000) == "x" * 20_000
        assert backend.result_queries == 1  # looked up: NOTIFY payloads end below 8,000 bytes


async def test_a_failing_child_raises_run_failed_with_its_error(dsn: str) -> None:
    client, _ = await _client(dsn)
    async with app.worker(dsn, concurrency=4, **NO_POLL), client:
        with pytest.raises(RunFailed) as failed:
            await client.run_async(explode, message="boom")
        assert (failed.value.error_type, failed.value.error_message) == ("ValueError", "boom")
        assert "raise ValueError(message)" in failed.value.traceback
        # awaited by a parent job: the same error reaches it
        assert await client.run_async(parent, message="deep") == "ValueError: deep"


async def test_the_results_that_fit_travel_smallest_first(dsn: str) -> None:
    """One completion batch with two small results and one too big: the NOTIFY names all
    three as done and carries the two small results only."""
    backend = PostgresBackend(dsn)
    await backend.open()
    received: list[Notification] = []
    backend.add_listener(lambda n: received.append(n) if n.done else None)
    try:
        await backend.register_definitions([], [JobDefinition("j", "q", None, {})])
        await _listening(backend)
        runs = await backend.enqueue([NewRun("j", "q", "{}") for _ in range(3)])
        await backend.claim("w", ["q"], ["j"], 3, 30)
        results = ['"small"', '{"n": 1}', '"' + "y" * 9000 + '"']
        await backend.complete("w", [
            Completion(run.run_id, 1, RunStatus.SUCCEEDED, result_json=result)
            for run, result in zip(runs, results, strict=True)
        ])  # fmt: skip
        await _eventually(lambda: bool(received), "the completion's notification")
        (notification,) = received
        assert notification.done == {run.run_id for run in runs}
        assert notification.results == {runs[0].run_id: "small", runs[1].run_id: {"n": 1}}
    finally:
        await backend.close()
