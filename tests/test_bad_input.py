"""Bad input gives a typed error and writes nothing.

Every trigger case runs against PostgreSQL (the runs table is counted directly with asyncpg)
and against the memory backend. The Postgres cases share one database per module: they must
write nothing, and the row count before and after proves it.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest

from asyncjobs import (
    App,
    ConfigurationError,
    Context,
    InvalidArguments,
    RunFailed,
    UnknownJob,
)
from asyncjobs.backends.base import Backend, RunFilter
from asyncjobs.backends.memory import MemoryBackend
from asyncjobs.client import Client
from asyncjobs.codec import MAX_NESTING

pytestmark = pytest.mark.anyio

MAX_ARGS_BYTES = 1024
FAST = {"poll_interval": 0.05, "sweep_interval": 0.2}

app = App("bad", max_args_bytes=MAX_ARGS_BYTES)


@app.job
async def typed(
    n: int,
    name: str,
    ratio: float = 0.5,
    payload: dict[str, Any] | None = None,
    items: list[Any] | None = None,
) -> int:
    return n


@app.job
async def opaque() -> Any:
    return object()  # not JSON


@app.job
async def not_a_number() -> float:
    return math.nan


@app.job
async def nul_error() -> None:
    raise ValueError("bad byte \x00 here")


@app.job
async def echo(text: str) -> str:
    return text


@app.job
async def bad_logs(ctx: Context) -> str:
    try:
        await ctx.log("never stored", blob=object())
    except TypeError as exc:
        refused = str(exc)
    else:
        refused = "nothing"
    await ctx.log("stored", who="a\x00b")
    return refused


def nested(depth: int) -> Any:
    """``depth`` lists, one inside the other."""
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


@dataclass
class Target:
    """Where a test triggers: the module's Postgres database, or a memory backend, with a
    client open on it for the whole module (opening one per case would dominate the time)."""

    connect: str | Backend
    client: Client
    count_runs: Callable[[], Awaitable[int]]


@pytest.fixture(scope="module", params=["postgres", "memory"])
async def target(request: pytest.FixtureRequest, module_dsn: str) -> AsyncIterator[Target]:
    connect = module_dsn if request.param == "postgres" else MemoryBackend()
    async with app.client(connect) as client:
        if isinstance(connect, MemoryBackend):

            async def count_memory() -> int:
                return len(await connect.get_runs(RunFilter(limit=10_000)))

            yield Target(connect, client, count_memory)
            return
        conn = await asyncpg.connect(module_dsn)

        async def count_rows() -> int:
            count: int = await conn.fetchval("SELECT count(*) FROM asyncjobs.runs")
            return count

        try:
            yield Target(connect, client, count_rows)
        finally:
            await conn.close()


Trigger = Callable[[Client], Awaitable[object]]

# The type: ignore comments mark calls that mypy already refuses, thanks to the job's
# ParamSpec signature; at run time they must fail just as clearly.
BAD_TRIGGERS: dict[str, tuple[Trigger, type[Exception]]] = {
    "unknown job": (lambda c: c.trigger_async("nope", n=1), UnknownJob),
    "unknown job by json": (lambda c: c.trigger_json("nope", {}), UnknownJob),
    "wrong type": (
        lambda c: c.trigger_async(typed, n="seven", name="x"),  # type: ignore[call-overload]
        InvalidArguments,
    ),
    "wrong type by json": (
        lambda c: c.trigger_json("typed", {"n": [1], "name": "x"}),
        InvalidArguments,
    ),
    "args not an object": (
        lambda c: c.trigger_json("typed", [1, "x"]),  # type: ignore[arg-type]
        InvalidArguments,
    ),
    "missing argument": (
        lambda c: c.trigger_async(typed, name="x"),  # type: ignore[call-overload]
        InvalidArguments,
    ),
    "extra argument": (
        lambda c: c.trigger_async(typed, n=1, name="x", colour="red"),  # type: ignore[call-overload]
        InvalidArguments,
    ),
    "extra argument by json": (
        lambda c: c.trigger_json("typed", {"n": 1, "name": "x", "colour": "red"}),
        InvalidArguments,
    ),
    "too many positionals": (
        lambda c: c.trigger_async(typed, 1, "x", 0.5, None, None, 6),  # type: ignore[call-overload]
        InvalidArguments,
    ),
    "NaN": (lambda c: c.trigger_async(typed, n=1, name="x", ratio=math.nan), InvalidArguments),
    "Infinity": (lambda c: c.trigger_async(typed, 1, "x", ratio=math.inf), InvalidArguments),
    "NaN in an untyped dict": (
        lambda c: c.trigger_async(typed, 1, "x", payload={"a": math.nan}),
        InvalidArguments,
    ),
    "-Infinity in an untyped list": (
        lambda c: c.trigger_async(typed, 1, "x", items=[1, [-math.inf]]),
        InvalidArguments,
    ),
    "NaN by json": (
        lambda c: c.trigger_json("typed", {"n": 1, "name": "x", "payload": {"v": math.nan}}),
        InvalidArguments,
    ),
    "NUL in a string": (lambda c: c.trigger_async(typed, 1, "a\x00b"), InvalidArguments),
    "NUL in a nested string": (
        lambda c: c.trigger_async(typed, 1, "x", items=[{"a": ["\x00"]}]),
        InvalidArguments,
    ),
    "NUL in a dict key": (
        lambda c: c.trigger_async(typed, 1, "x", payload={"k\x00": 1}),
        InvalidArguments,
    ),
    "integer beyond 64 bits": (
        lambda c: c.trigger_async(typed, 1, "x", items=[2**64]),
        InvalidArguments,
    ),
    "above the size limit": (
        lambda c: c.trigger_async(typed, 1, "x" * MAX_ARGS_BYTES),
        InvalidArguments,
    ),
    "nested too deep": (
        lambda c: c.trigger_async(typed, 1, "x", items=nested(MAX_NESTING)),
        InvalidArguments,
    ),
    "one bad run in trigger_many": (
        lambda c: c.trigger_many(typed, [{"n": 1, "name": "a"}, {"n": "x", "name": "b"}]),
        InvalidArguments,
    ),
    "dedup_id too long": (
        lambda c: c.trigger_async(typed.options(dedup_id="d" * 201), 1, "x"),
        ConfigurationError,
    ),
    "empty dedup_id": (
        lambda c: c.trigger_async(typed.options(dedup_id=""), 1, "x"),
        ConfigurationError,
    ),
    "not_after before not_before": (
        lambda c: c.trigger_async(
            typed.options(not_before=timedelta(hours=2), not_after=timedelta(hours=1)), 1, "x"
        ),
        InvalidArguments,
    ),
    "naive not_before": (
        lambda c: c.trigger_async(typed.options(not_before=datetime.now()), 1, "x"),
        ConfigurationError,
    ),
    "naive not_after": (
        lambda c: c.trigger_async(typed.options(not_after=datetime(2030, 1, 1)), 1, "x"),
        ConfigurationError,
    ),
    "priority out of range": (
        lambda c: c.trigger_async(typed.options(priority=40_000), 1, "x"),
        ConfigurationError,
    ),
}


@pytest.mark.parametrize("case", list(BAD_TRIGGERS))
async def test_bad_trigger_raises_and_writes_nothing(target: Target, case: str) -> None:
    trigger, error = BAD_TRIGGERS[case]
    before = await target.count_runs()
    with pytest.raises(error):
        await trigger(target.client)
    assert await target.count_runs() == before


async def test_the_limits_themselves_are_accepted(target: Target) -> None:
    """The checks above are not off by one: the deepest and largest allowed args get in."""
    overhead = len(typed.args.encode({"n": 1, "name": ""}).encode())
    largest = "x" * (MAX_ARGS_BYTES - overhead)
    before = await target.count_runs()
    client = target.client
    await client.trigger_async(typed, 1, largest)
    await client.trigger_async(typed, 1, "x", items=nested(MAX_NESTING - 1))
    with pytest.raises(InvalidArguments):
        await client.trigger_async(typed, 1, largest + "x")
    assert await target.count_runs() == before + 2


async def test_bad_results_fail_the_run_and_the_worker_lives_on(target: Target) -> None:
    async with app.worker(target.connect, **FAST), app.client(target.connect) as client:
        with pytest.raises(RunFailed) as info:
            await asyncio.wait_for(client.run_async(opaque), 20)
        assert info.value.error_type == "asyncjobs.errors.ResultNotStorable"
        assert "cannot be stored as JSON" in info.value.error_message
        with pytest.raises(RunFailed) as info:
            await asyncio.wait_for(client.run_async(not_a_number), 20)
        assert "NaN" in info.value.error_message
        with pytest.raises(RunFailed) as info:
            await asyncio.wait_for(client.run_async(nul_error), 20)
        assert info.value.error_type == "ValueError" and "bad byte" in info.value.error_message
        assert await asyncio.wait_for(client.run_async(typed, 5, "next"), 20) == 5
        escaped = r"a backslash and u0000: \u0000 is no NUL"
        assert await asyncio.wait_for(client.run_async(echo, escaped), 20) == escaped


async def test_bad_log_fields_fail_only_that_call(target: Target) -> None:
    async with app.worker(target.connect, **FAST), app.client(target.connect) as client:
        run = await client.trigger_async(bad_logs)
        assert "log fields must be JSON values" in await run.result(20)
        logs = [e.data for e in await client.get_events(run.id) if e.kind == "log"]
    assert logs == [{"level": "info", "message": "stored", "fields": {"who": "a\\0b"}}]


# ---------------------------------------------------------------------- declaring jobs


def test_duplicate_job_name_is_refused() -> None:
    local = App("dup")

    @local.job
    async def once() -> None: ...

    with pytest.raises(ConfigurationError, match="already registered"):

        @local.job(name="once")
        async def other() -> None: ...

    with pytest.raises(ConfigurationError, match="already registered"):

        @local.job(aliases=["once"])
        async def aliased() -> None: ...

    assert list(local.jobs) == ["once"]


def test_job_must_be_a_function_not_a_generator() -> None:
    local = App("sync")

    def plain(n: int) -> int:
        return n

    async def generator() -> Any:
        yield 1

    def sync_generator() -> Any:
        yield 1

    assert local.job(plain).is_async is False  # a plain def runs in a worker thread
    for bad in (generator, sync_generator, "not callable"):
        with pytest.raises(ConfigurationError, match="must be a function"):
            local.job(bad)  # type: ignore[call-overload]
    assert list(local.jobs) == ["plain"]


def test_variadic_and_positional_only_parameters_are_refused() -> None:
    local = App("variadic")

    async def star_args(*numbers: int) -> None: ...

    async def star_kwargs(**options: int) -> None: ...

    async def positional_only(n: int, /) -> None: ...

    for function in (star_args, star_kwargs, positional_only):
        with pytest.raises(ConfigurationError, match="cannot be stored by name"):
            local.job(function)
    assert local.jobs == {}


def test_context_must_come_first() -> None:
    local = App("ctx")

    async def late_context(n: int, ctx: Context) -> None: ...

    with pytest.raises(ConfigurationError, match="Context parameter must come first"):
        local.job(late_context)
