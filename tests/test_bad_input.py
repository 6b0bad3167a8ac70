"""Bad input gives a typed error and writes nothing.

Every trigger case runs against PostgreSQL, counting the runs table directly with asyncpg. The
cases share one database per module: they must write nothing, and the row count before and
after proves it.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from pydantic import BaseModel

from asyncjobs import (
    App,
    ConfigurationError,
    Context,
    InvalidArguments,
    RunFailed,
    RunNotFound,
    UnknownJob,
    rules,
)
from asyncjobs.__main__ import main
from asyncjobs.client import Client
from asyncjobs.codec import MAX_NESTING
from asyncjobs.jobs import RunOptions
from asyncjobs.remote import JobRef

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
    """Where a test triggers: the module's database, with a client open on it for the whole
    module (opening one per case would dominate the time)."""

    connect: str
    client: Client
    count_runs: Callable[[], Awaitable[int]]


@pytest.fixture(scope="module")
async def target(module_dsn: str) -> AsyncIterator[Target]:
    async with app.client(module_dsn) as client:
        conn = await asyncpg.connect(module_dsn)

        async def count_rows() -> int:
            count: int = await conn.fetchval("SELECT count(*) FROM asyncjobs.runs")
            return count

        try:
            yield Target(module_dsn, client, count_rows)
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
            local.job(bad)  # type: ignore[arg-type]  # not a job function, on purpose
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


# ---------------------------------------------------------------------- the matrix
#
# Every bad input of issue 10, through every way in: the client (trigger_async, trigger_json,
# trigger_many, options, reads), the HTTP API and the CLI. Each must raise (or answer) a typed
# error naming what was wrong, and leave the runs and run_events tables exactly as they were.
# PostgreSQL only: one database for the module, its row counts checked around every case.


class Node(BaseModel):
    child: Node | None = None


def deep_node(depth: int) -> Node:
    node = Node()
    for _ in range(depth - 1):
        node = Node(child=node)
    return node


def deep_dict(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"child": value}
    return value


@app.job
async def deep(node: Node) -> None: ...


class Box(BaseModel):
    labels: dict[str, int]


@app.job
async def boxed(box: Box) -> None: ...


elsewhere = App("elsewhere")


@elsewhere.job(name="typed")
async def foreign_typed(n: int, name: str) -> int:
    return n


@elsewhere.job
async def stranger(n: int) -> int:
    return n


@dataclass
class Tables:
    """The module's database, with a client open on it and the two tables' row counts."""

    dsn: str
    client: Client
    conn: asyncpg.Connection

    async def counts(self) -> tuple[int, int]:
        row = await self.conn.fetchrow(
            "SELECT (SELECT count(*) FROM asyncjobs.runs) AS runs,"
            " (SELECT count(*) FROM asyncjobs.run_events) AS events"
        )
        assert row is not None
        return row["runs"], row["events"]


@pytest.fixture(scope="module")
async def tables(module_dsn: str) -> AsyncIterator[Tables]:
    async with app.client(module_dsn) as client:
        conn = await asyncpg.connect(module_dsn)
        try:
            # a finished run, so that reads and cancels have something real next to them
            run = await client.trigger_async(typed, 1, "seed")
            await client.cancel(run.id)
            yield Tables(module_dsn, client, conn)
        finally:
            await conn.close()


@pytest.fixture
async def unchanged(tables: Tables) -> AsyncIterator[Tables]:
    """The tables, checked to hold the same rows after the test as before it."""
    before = await tables.counts()
    yield tables
    assert await tables.counts() == before, "a bad input wrote rows"


GOOD = {"n": 1, "name": "fine"}
GOOD_ARGS: dict[str, dict[str, Any]] = {
    "typed": GOOD, "deep": {"node": {}}, "boxed": {"box": {"labels": {}}}
}


@dataclass(frozen=True)
class BadArgs:
    """Arguments of ``job`` that must be refused, naming ``field``; ``json`` when they can
    also be sent as JSON (trigger_json, HTTP)."""

    job: str
    args: dict[str, Any]
    field: str
    json: bool = True


BAD_ARGS = {
    "lone surrogate in a string": BadArgs("typed", {**GOOD, "name": "caf\udce9.csv"}, "name"),
    "lone surrogate in a key": BadArgs("typed", {**GOOD, "payload": {"\udcff": 1}}, "payload"),
    "lone surrogate deep inside": BadArgs(
        "typed", {**GOOD, "items": [{"a": ["ok", "\udcff"]}]}, "items[0].a[1]"
    ),
    "NUL in a key": BadArgs("typed", {**GOOD, "payload": {"k\x00": 1}}, "payload"),
    "a value JSON cannot hold": BadArgs(
        "typed", {**GOOD, "payload": {"x": object()}}, "payload", json=False
    ),
    "a 10,000-deep pydantic model": BadArgs(
        "deep", {"node": deep_node(10_000)}, "node", json=False
    ),
    "a 10,000-deep object": BadArgs("deep", {"node": deep_dict(10_000)}, "node"),
    # pydantic's JSON mode would store this key as U+FFFD: it must be refused, not rewritten
    "lone surrogate in a key inside a model": BadArgs(
        "boxed", {"box": Box(labels={"ok": 1, "caf\udce9": 2})}, "box.labels", json=False
    ),
}


@pytest.mark.parametrize("case", list(BAD_ARGS))
async def test_bad_arguments_through_the_client(unchanged: Tables, case: str) -> None:
    bad = BAD_ARGS[case]
    job = app.get_job(bad.job)
    client = unchanged.client
    with pytest.raises(InvalidArguments) as direct:
        await client.trigger_async(job, **bad.args)
    assert str(direct.value).startswith(f"{bad.job}: {bad.field}")
    with pytest.raises(InvalidArguments) as many:
        await client.trigger_many(job, [GOOD_ARGS[bad.job], bad.args])
    assert str(many.value).startswith(f"{bad.job}: item 1: {bad.field}")
    if bad.json:
        with pytest.raises(InvalidArguments) as by_name:
            await client.trigger_json(bad.job, bad.args)
        assert bad.field.split("[")[0] in str(by_name.value)
    # the message and error list can be printed and sent as JSON, whatever the input held
    for error in (direct.value, many.value):
        assert rules.unstorable_reason(str(error)) is None
        assert rules.storable_json(error.errors) == error.errors


BAD_TRIGGER_SHAPES: dict[str, tuple[Trigger, type[Exception], str]] = {
    "trigger_many of a string item": (
        lambda c: c.trigger_many(typed, ["n=1"]),  # type: ignore[list-item]
        InvalidArguments,
        "typed: item 0: arguments must be a mapping",
    ),
    "trigger_many of a None item": (
        lambda c: c.trigger_many(typed, [GOOD, None]),  # type: ignore[list-item]
        InvalidArguments,
        "typed: item 1: arguments must be a mapping",
    ),
    "trigger_many of a string": (
        lambda c: c.trigger_many(typed, "n=1"),  # type: ignore[arg-type]
        InvalidArguments,
        "takes a list of argument mappings",
    ),
    "trigger_many of a bad item among good ones": (
        lambda c: c.trigger_many(typed, [GOOD, GOOD, {"n": "x", "name": "b"}]),
        InvalidArguments,
        "typed: item 2: n:",
    ),
    "trigger_json by a list": (
        lambda c: c.trigger_json(["typed"], {}),  # type: ignore[arg-type]
        InvalidArguments,
        "a job is given by name",
    ),
    "trigger_async by a number": (
        lambda c: c.trigger_async(5, n=1),  # type: ignore[call-overload]
        InvalidArguments,
        "a job is given by name",
    ),
    "a job of another app": (
        lambda c: c.trigger_async(stranger, 1),
        UnknownJob,
        "job 'stranger' is not registered in App 'bad'",
    ),
    "a job of another app under a name this app knows": (
        lambda c: c.trigger_async(foreign_typed, 1, "x"),
        UnknownJob,
        "job 'typed' is not registered in App 'bad'",
    ),
    "options of a job of another app": (
        lambda c: c.trigger_async(foreign_typed.options(priority=3), 1, "x"),
        UnknownJob,
        "another App",
    ),
    "trigger_many of a job of another app": (
        lambda c: c.trigger_many(foreign_typed, [GOOD]),
        UnknownJob,
        "another App",
    ),
}


@pytest.mark.parametrize("case", list(BAD_TRIGGER_SHAPES))
async def test_bad_trigger_shapes(unchanged: Tables, case: str) -> None:
    trigger, error, message = BAD_TRIGGER_SHAPES[case]
    with pytest.raises(error, match=re.escape(message)):
        await trigger(unchanged.client)


async def test_text_that_only_looks_odd_is_stored_as_given(tables: Tables) -> None:
    """The refusals above are not overreach: U+FFFD, other non-ASCII text and an escaped
    "\\u0000" are valid text, stored exactly as sent."""
    odd = {"\ufffd": 1, "ключ": "värde \U0001f600", "esc": "\\u0000"}
    run = await tables.client.trigger_async(boxed, Box(labels={"\ufffd": 1, "ключ": 2}))
    other = await tables.client.trigger_async(typed, 1, "\ufffd", payload=odd)
    await tables.client.cancel(run.id)
    await tables.client.cancel(other.id)
    stored = (await tables.client.get_run(run.id)).args
    assert stored == {"box": {"labels": {"\ufffd": 1, "ключ": 2}}}
    assert (await tables.client.get_run(other.id)).args["payload"] == odd


async def test_an_options_copy_of_a_registered_job_is_still_that_job(tables: Tables) -> None:
    """The identity check is on the registered job, not on the object: copies pass."""
    copy = typed.options(priority=2).options(queue="q2")
    run = await tables.client.trigger_async(copy, 1, "x")
    await tables.client.cancel(run.id)
    stored = await tables.conn.fetchrow(
        "SELECT queue, priority FROM asyncjobs.runs WHERE id = $1", run.id
    )
    assert stored is not None and dict(stored) == {"queue": "q2", "priority": 2}
    by_json = await tables.client.trigger_json(copy, {"n": 1, "name": "x"})  # type: ignore[arg-type]
    await tables.client.cancel(by_json.id)
    assert (await tables.client.get_run(by_json.id)).queue == "q2"


LATEST = datetime.max.replace(tzinfo=timezone(timedelta(hours=-14)))  # year 10000 in UTC

BAD_OPTIONS: dict[str, tuple[dict[str, Any], str]] = {
    "not_before=timedelta.max": ({"not_before": timedelta.max}, "not_before must be within"),
    "not_after=timedelta.min": ({"not_after": timedelta.min}, "not_after must be within"),
    "not_before as text": ({"not_before": "2030-01-01"}, "not_before must be a timezone-aware"),
    "not_before beyond year 9999 in UTC": ({"not_before": LATEST}, "not_before is out of range"),
    "naive not_after": ({"not_after": datetime(2030, 1, 1)}, "not_after must be timezone-aware"),
    "dedup_id=5": ({"dedup_id": 5}, "dedup_id must be a string, got int"),
    "surrogate in dedup_id": ({"dedup_id": "order-\udcff"}, "dedup_id cannot be stored"),
    "NUL in dedup_id": ({"dedup_id": "a\x00"}, "dedup_id cannot be stored"),
    "NUL in queue": ({"queue": "q\x00"}, "queue cannot be stored"),
    "surrogate in queue": ({"queue": "\udcff"}, "queue cannot be stored"),
    "queue too long": ({"queue": "q" * 201}, "queue must be 1 to 200 characters"),
    "queue not a string": ({"queue": ["q"]}, "queue must be a string"),
    "priority as bool": ({"priority": True}, "priority must be an integer"),
    "priority as float": ({"priority": 1.5}, "priority must be an integer"),
    "on_duplicate unknown": ({"on_duplicate": "ignore"}, "on_duplicate must be"),
    "on_duplicate unhashable": ({"on_duplicate": ["raise"]}, "on_duplicate must be"),
    "wait_timeout=-1": ({"wait_timeout": -1}, "wait_timeout must be positive"),
    "wait_timeout=NaN": ({"wait_timeout": math.nan}, "wait_timeout must be positive"),
    "wait_timeout='soon'": ({"wait_timeout": "soon"}, "wait_timeout must be a number"),
}


@pytest.mark.parametrize("case", list(BAD_OPTIONS))
async def test_bad_options_fail_when_set(unchanged: Tables, case: str) -> None:
    options, message = BAD_OPTIONS[case]
    with pytest.raises(ConfigurationError, match=re.escape(f"job 'typed': {message}")):
        typed.options(**options)
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        RunOptions(**options)
    with pytest.raises(ConfigurationError, match=re.escape(f"job 'remote': {message}")):
        JobRef("remote").options(**options)  # a job known by name: the same checks
    with pytest.raises(ConfigurationError):  # a job's default options are checked as well
        App("defaults").job(name="x")(typed.fn).options(**options)
    # and so nothing can reach the database with them: the run_async of the issue
    with pytest.raises(ConfigurationError):
        await unchanged.client.run_async(typed.options(**options), 1, "x")


# Each ignored arg-type error below is an argument of the wrong type, passed on purpose.
BAD_READS: dict[str, tuple[Trigger, type[Exception], str]] = {
    "get_runs(job='a\\x00b')": (
        lambda c: c.get_runs(job="a\x00b"), InvalidArguments, "job is not text"
    ),
    "get_runs(job=surrogate)": (
        lambda c: c.get_runs(job="\udcff"), InvalidArguments, "job is not text"
    ),
    "get_runs(job=5)": (
        lambda c: c.get_runs(job=5),  # type: ignore[arg-type]
        InvalidArguments,
        "job must be a string",
    ),
    "get_runs(status='done')": (
        lambda c: c.get_runs(status="done"), InvalidArguments, "status 'done' is not one of"
    ),
    "get_runs(trigger=[...])": (
        lambda c: c.get_runs(trigger=["api"]),  # type: ignore[arg-type]
        InvalidArguments,
        "is not one of",
    ),
    "get_runs(limit=0)": (lambda c: c.get_runs(limit=0), InvalidArguments, "limit must be"),
    "get_runs(limit='10')": (
        lambda c: c.get_runs(limit="10"),  # type: ignore[arg-type]
        InvalidArguments,
        "limit must be",
    ),
    "get_runs(cursor=2**64)": (
        lambda c: c.get_runs(cursor=2**64), InvalidArguments, "cursor must be between"
    ),
    "get_runs(root_run_id=-1)": (
        lambda c: c.get_runs(root_run_id=-1), InvalidArguments, "root_run_id must be between"
    ),
    "get_runs(created_after=naive)": (
        lambda c: c.get_runs(created_after=datetime(2020, 1, 1)),
        InvalidArguments,
        "created_after must be a timezone-aware datetime",
    ),
    "get_runs(created_before=year 10000 UTC)": (
        lambda c: c.get_runs(created_before=LATEST), InvalidArguments, "out of range"
    ),
    "get_run(2**64)": (lambda c: c.get_run(2**64), RunNotFound, "no run with id"),
    "get_run(0)": (lambda c: c.get_run(0), RunNotFound, "no run with id 0"),
    "get_run('5')": (
        lambda c: c.get_run("5"),  # type: ignore[arg-type]
        InvalidArguments,
        "a run id must be an integer",
    ),
    "get_run(True)": (lambda c: c.get_run(True), InvalidArguments, "a run id must be an integer"),
    "get_events(limit=-1)": (
        lambda c: c.get_events(1, limit=-1), InvalidArguments, "limit must be between 1 and"
    ),
    "get_events(after_id=2**63)": (
        lambda c: c.get_events(1, after_id=2**63), InvalidArguments, "after_id must be between"
    ),
    "cancel(2**64)": (lambda c: c.cancel(2**64), RunNotFound, "no run with id"),
    "cancel(cascade='yes')": (
        lambda c: c.cancel(1, cascade="yes"),  # type: ignore[arg-type]
        InvalidArguments,
        "cascade must be True or False",
    ),
    "explain(2**64)": (lambda c: c.explain(2**64), RunNotFound, "no run with id"),
    "explain(worker_ttl=-1)": (
        lambda c: c.explain(1, worker_ttl=-1), InvalidArguments, "worker_ttl must be at least 0"
    ),
    "wait(timeout=-1)": (lambda c: c.wait(1, timeout=-1), InvalidArguments, "timeout must be"),
    "set_queue_enabled(NUL)": (
        lambda c: c.set_queue_enabled("q\x00x", True), InvalidArguments, "queue name is not text"
    ),
    "set_enabled(enabled='yes')": (
        lambda c: c.set_enabled("queue", "default", "yes"),  # type: ignore[arg-type]
        InvalidArguments,
        "enabled must be",
    ),
    "job_summary(window=timedelta.max)": (
        lambda c: c.job_summary("typed", timedelta.max), InvalidArguments, "window must be"
    ),
    "explain(worker_ttl=inf)": (
        lambda c: c.explain(1, worker_ttl=math.inf), InvalidArguments, "at most 100 years"
    ),
    "job_summary(window=-1 h)": (
        lambda c: c.job_summary("typed", timedelta(hours=-1)), InvalidArguments, "window must"
    ),
    "prune(older_than=-1 s)": (
        lambda c: c.prune(timedelta(seconds=-1)), InvalidArguments, "older_than must be 0 or"
    ),
    "prune(batch_size=0)": (
        lambda c: c.prune(timedelta(days=1), batch_size=0), InvalidArguments, "batch_size must"
    ),
    "prune(older_than=7)": (
        lambda c: c.prune(7),  # type: ignore[arg-type]
        InvalidArguments,
        "older_than must be a timedelta",
    ),
}


@pytest.mark.parametrize("case", list(BAD_READS))
async def test_bad_reads(unchanged: Tables, case: str) -> None:
    read, error, message = BAD_READS[case]
    with pytest.raises(error, match=re.escape(message)):
        await read(unchanged.client)


async def test_pruning_older_than_any_date_deletes_nothing(unchanged: Tables) -> None:
    result = await unchanged.client.prune(timedelta.max)
    assert (result.trees, result.runs, result.events) == (0, 0, 0)


async def test_watch_checks_its_inputs(unchanged: Tables) -> None:
    client = unchanged.client
    for run_id, after, error in ((2**64, None, RunNotFound), (1, "1-99999999999999999999",
                                                              InvalidArguments)):
        with pytest.raises(error):
            async for _ in client.watch(run_id, after=after):
                pass


# ---------------------------------------------------------------------- over HTTP


@pytest.fixture(scope="module")
async def http(tables: Tables) -> AsyncIterator[httpx.AsyncClient]:
    """The module app's dashboard over ASGI, holding the CSRF cookie (only answers that
    come before a stream starts are read, so the buffering transport is fine)."""
    dashboard = app.asgi(tables.dsn)
    async with dashboard.lifespan():
        transport = httpx.ASGITransport(dashboard)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            assert (await client.get("/")).status_code == 200
            client.headers["x-csrf-token"] = client.cookies["asyncjobs_csrf"]
            yield client


HUGE = "99999999999999999999"
BAD_REQUESTS: dict[str, tuple[str, str, Any, int, str]] = {
    # name: (method, path, JSON body or raw bytes, status, error type)
    "run id beyond bigint": ("GET", f"/api/runs/{HUGE}", None, 404, "RunNotFound"),
    "tree of a run id beyond bigint": ("GET", f"/api/runs/{HUGE}/tree", None, 404, "RunNotFound"),
    "stream of a run id beyond bigint": (
        "GET", f"/api/runs/{HUGE}/events", "sse", 404, "RunNotFound"
    ),
    "cancel of a run id beyond bigint": (
        "POST", f"/api/runs/{HUGE}/cancel", {}, 404, "RunNotFound"
    ),
    "NUL in the job filter": ("GET", "/api/runs?job=a%00b", None, 422, "InvalidArguments"),
    "NUL in the feed's job filter": (
        "GET", "/api/events?job=a%00b", "sse", 422, "InvalidArguments"
    ),
    "since beyond year 9999 in UTC": (
        "GET", "/api/runs?since=9999-12-31T23:59:59-14:00", None, 422, "InvalidArguments"
    ),
    "cursor beyond bigint": ("GET", f"/api/runs?cursor={HUGE}", None, 400, "BadRequest"),
    "cursor not a number": ("GET", "/api/runs?cursor=abc", None, 400, "BadRequest"),
    "negative limit": ("GET", "/api/runs?limit=-1", None, 400, "BadRequest"),
    "limit above 1000": ("GET", "/api/runs?limit=1001", None, 400, "BadRequest"),
    "tree limit not a number": ("GET", "/api/runs/1/tree?limit=1e3", None, 400, "BadRequest"),
    "events after beyond bigint": (
        "GET", f"/api/runs/1/events?after={HUGE}", None, 400, "BadRequest"
    ),
    "event cursor beyond xid8": (
        "GET", f"/api/events?after={HUGE}-1", "sse", 400, "BadRequest"
    ),
    "event cursor not a cursor": ("GET", "/api/runs/1/events?after=x-y", "sse", 400, "BadRequest"),
    "unknown status": ("GET", "/api/runs?status=%00", None, 400, "BadRequest"),
    "NUL in a queue name": (
        "POST", "/api/queues/q%00x/enabled", {"enabled": True}, 422, "InvalidArguments"
    ),
    "NUL in a job name": ("POST", "/api/jobs/a%00b/enabled", {"enabled": True}, 404, "UnknownJob"),
    "NUL in a job name to trigger": (
        "POST", "/api/jobs/a%00b/trigger", {"args": {}}, 422, "InvalidArguments"
    ),
    "a job name no app or worker knows": (
        "POST", "/api/jobs/nowhere/trigger", {"args": {}}, 404, "UnknownJob"
    ),
    "NUL in an argument": (
        "POST", "/api/jobs/typed/trigger", {"args": {**GOOD, "name": "a\x00"}}, 422,
        "InvalidArguments",
    ),
    "NUL in an argument key": (
        "POST", "/api/jobs/typed/trigger", {"args": {**GOOD, "payload": {"\x00": 1}}}, 422,
        "InvalidArguments",
    ),
    "lone surrogate in an argument": (
        "POST", "/api/jobs/typed/trigger", b'{"args": {"n": 1, "name": "\\udcff"}}', 400,
        "BadRequest",
    ),
    "lone surrogate in an argument key": (
        "POST", "/api/jobs/typed/trigger", b'{"args": {"n": 1, "name": "x", "payload": '
        b'{"\\udcff": 1}}}', 400, "BadRequest",
    ),
    "10,000-deep argument": (
        "POST", "/api/jobs/deep/trigger",
        b'{"args": {"node": ' + b'{"child": ' * 10_000 + b"{}" + b"}" * 10_002, 400, "BadRequest",
    ),
    "40-deep argument": (
        "POST", "/api/jobs/deep/trigger", {"args": {"node": deep_dict(40)}}, 422,
        "InvalidArguments",
    ),
    "integer beyond 64 bits": (
        "POST", "/api/jobs/typed/trigger", {"args": {**GOOD, "items": [2**64]}}, 422,
        "InvalidArguments",
    ),
    "negative integer beyond 64 bits": (
        "POST", "/api/jobs/typed/trigger", {"args": {**GOOD, "payload": {"a": [-(2**63) - 1]}}},
        422, "InvalidArguments",
    ),
    "args not an object": ("POST", "/api/jobs/typed/trigger", {"args": [1]}, 422,
                           "InvalidArguments"),
    "cascade not a bool": ("POST", "/api/runs/1/cancel", {"cascade": "yes"}, 400, "BadRequest"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
async def test_bad_requests_get_a_typed_4xx(
    unchanged: Tables, http: httpx.AsyncClient, case: str
) -> None:
    method, path, body, status, kind = BAD_REQUESTS[case]
    if body == "sse":
        response = await http.request(method, path, headers={"accept": "text/event-stream"})
    elif isinstance(body, bytes):
        response = await http.request(
            method, path, content=body, headers={"content-type": "application/json"}
        )
    else:
        response = await http.request(method, path, json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["type"] == kind, response.text


# ---------------------------------------------------------------------- on the command line


BAD_COMMANDS: dict[str, tuple[list[str], str]] = {
    # the surrogate is what Python makes of an undecodable byte in argv
    "runs --job with an undecodable byte": (
        ["runs", "--job", "a\udcffb"], "job is not text PostgreSQL can take: it contains a "
        "lone surrogate ('\\udcff')"
    ),
    "runs --limit 0": (["runs", "--limit", "0"], "limit must be between 1 and 1000, got 0"),
    "runs --status bogus": (["runs", "--status", "bogus"], "status 'bogus' is not one of"),
    "runs --tree beyond bigint": (["runs", "--tree", HUGE], f"no run with id {HUGE}"),
    "explain beyond bigint": (["explain", HUGE], f"no run with id {HUGE}"),
    "explain 0": (["explain", "0"], "no run with id 0"),
    "enable a queue with an undecodable byte": (
        ["enable", "queue", "q\udcff"], "queue name is not text PostgreSQL can take"
    ),
    "disable an unknown job": (["disable", "job", "nope"], "job 'nope' is not registered"),
    "trigger with a NUL in a key": (
        ["trigger", "typed", "--args", '{"n": 1, "name": "x", "payload": {"k\\u0000": 1}}'],
        "typed: payload['k\\x00']: this key cannot be stored: it contains a NUL character",
    ),
    "trigger with arguments that are not an object": (
        ["trigger", "typed", "--args", "[1]"], "--args must be a JSON object"
    ),
    "trigger with a wrong type": (
        ["trigger", "typed", "--args", '{"n": "x", "name": "y"}'], "typed: n: "
    ),
    "trigger a name with an undecodable byte": (
        ["trigger", "ty\udcffped"], "job name cannot be stored: it contains a lone surrogate"
    ),
    "trigger with an undecodable dedup id": (
        ["trigger", "typed", "--args", '{"n": 1, "name": "x"}', "--dedup-id", "d\udcff"],
        "job 'typed': dedup_id cannot be stored",
    ),
    "trigger with a priority out of range": (
        ["trigger", "typed", "--args", '{"n": 1, "name": "x"}', "--priority", "40000"],
        "job 'typed': priority must be between -32768 and 32767",
    ),
    "show beyond bigint": (["show", HUGE], f"no run with id {HUGE}"),
    "cancel beyond bigint": (["cancel", HUGE], f"no run with id {HUGE}"),
    "retry beyond bigint": (["retry", HUGE], f"no run with id {HUGE}"),
}


@pytest.fixture(scope="module")
def stored_jobs(module_dsn: str) -> str:
    """The module's database with the jobs' definitions stored, as a worker stores them:
    the CLI triggers by name, with no app code."""

    async def start_a_worker() -> None:
        async with app.worker(module_dsn, **FAST):
            pass

    asyncio.run(start_a_worker())
    return module_dsn


@pytest.mark.parametrize("case", list(BAD_COMMANDS))
def test_bad_command_lines_exit_1_with_the_error(
    stored_jobs: str, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    module_dsn = stored_jobs
    argv, message = BAD_COMMANDS[case]
    before = asyncio.run(_counts(module_dsn))
    assert main([*argv, "--dsn", module_dsn]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}"), err
    assert rules.unstorable_reason(err) is None  # printable: a surrogate is shown escaped
    assert asyncio.run(_counts(module_dsn)) == before


def test_a_real_undecodable_argument_exits_1(module_dsn: str) -> None:
    """The same through a real process and real argv bytes (not valid UTF-8)."""
    result = subprocess.run(
        [sys.executable, "-m", "asyncjobs", "runs", "--job", b"caf\xe9", "--dsn", module_dsn],
        capture_output=True,
        check=False,
        timeout=60,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )
    assert result.returncode == 1, result.stderr
    assert b"error: job is not text" in result.stderr
    assert b"\\udce9" in result.stderr


async def _counts(dsn: str) -> tuple[int, int]:
    conn = await asyncpg.connect(dsn)
    try:
        return (
            await conn.fetchval("SELECT count(*) FROM asyncjobs.runs"),
            await conn.fetchval("SELECT count(*) FROM asyncjobs.run_events"),
        )
    finally:
        await conn.close()


NASTY = ["", "%00", "a%00b", "%FF", "%ED%B3%BF", "%F0%9F%98%80", "-1", "0", HUGE, f"-{HUGE}",
         "1e3", "NaN", "1.5", "x" * 3000, "1-2", f"{HUGE}-{HUGE}", "2020-01-01T00:00:00",
         "9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00%2B14:00", "%5B%5D", "true"]
QUERIES = {
    "/api/runs": ["job", "status", "trigger", "parent", "root", "since", "until", "limit",
                  "cursor"],
    "/api/runs/1/tree": ["limit"],
    "/api/runs/1/events": ["after", "limit"],
    "sse:/api/runs/1/events": ["after"],
    "sse:/api/events": ["job", "status", "trigger", "parent", "root", "since", "until", "limit",
                        "after"],
}
PATHS = ["GET /api/runs/{}", "GET /api/runs/{}/tree", "GET /api/runs/{}/events",
         "sse:GET /api/runs/{}/events", "POST /api/runs/{}/cancel", "POST /api/jobs/{}/trigger",
         "POST /api/jobs/{}/enabled", "POST /api/queues/{}/enabled"]


async def test_no_query_or_path_makes_the_api_answer_500(unchanged: Tables) -> None:
    """Every odd value in every query parameter and path segment, against a real server (the
    streams among them must start or be refused, not fail once started)."""
    from tests.web_support import dashboard

    requests = [
        (path.removeprefix("sse:"), "GET", f"{param}={value}", path.startswith("sse:"))
        for path, params in QUERIES.items() for param in params for value in NASTY
    ]
    for template in PATHS:
        method, path = template.removeprefix("sse:").split(" ")
        requests += [(path.format(v), method, "", template.startswith("sse:")) for v in NASTY]
    statuses: dict[int, int] = {}
    async with (
        dashboard(app, unchanged.dsn) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as http,
    ):
        assert (await http.get("/")).status_code == 200
        http.headers["x-csrf-token"] = http.cookies["asyncjobs_csrf"]
        for path, method, query, sse in requests:
            url = f"{path}?{query}" if query else path
            # a new connection each: on a reused one this server answers ~40 ms late
            headers = {"connection": "close"}
            if sse:
                headers |= {"accept": "text/event-stream", "last-event-id": query.split("=")[-1]}
            options: dict[str, Any] = {"headers": headers}
            if method == "POST":
                options["json"] = {"enabled": True, "args": {}}
            async with http.stream(method, url, **options) as response:
                status = response.status_code
                if status >= 400:  # an error is JSON with its type; a stream is left at once
                    body = orjson.loads(await response.aread())
                    assert body["error"]["type"], body
            assert status < 500, (method, url, status)
            statuses[status] = statuses.get(status, 0) + 1
    assert {400, 404, 422} <= statuses.keys(), statuses
