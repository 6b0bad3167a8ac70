"""Jobs of the isolation tests (``tests/test_isolation.py``), run by forked worker processes.

Each job first waits until ``size`` runs of its ``group`` run in this process, so that all of
them act in the same turn of the event loop: their log lines, or their completions, then reach
the database in one batch, the bad one included — as in issue 10's table, where one bad item
failed or dropped the whole batch. The bad inputs are made inside the job (a lone surrogate
cannot be an argument), exactly as the issue wrote them.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any

from asyncjobs import App, Context

app = App("isolation")

#: how long a job waits for the rest of its group before giving up (a test deadline)
GATHER_TIMEOUT = 30.0

_arrived: collections.Counter[str] = collections.Counter()
_everyone: dict[str, asyncio.Event] = {}


async def _gather(group: str, size: int) -> None:
    _arrived[group] += 1
    everyone = _everyone.setdefault(group, asyncio.Event())
    if _arrived[group] >= size:
        everyone.set()
    async with asyncio.timeout(GATHER_TIMEOUT):
        await everyone.wait()


BAD_TEXT = "processing caf\udce9.csv"


@app.job
async def chatty(ctx: Context, group: str, size: int, n: int, bad: bool = False) -> int:
    """Logs a line through ``ctx.log``, one through ``logging``, a progress message and a
    log line with a field: the bad run writes ``BAD_TEXT`` in all four places."""
    await _gather(group, size)
    text = BAD_TEXT if bad else f"processing file-{n}.csv"
    await ctx.log(text)
    logging.getLogger("isolation.jobs").warning(text)
    await ctx.progress(0.5, text)
    await ctx.log("with a field", file=text)
    return n


class Halt(BaseException):
    """A custom ``BaseException`` raised by job code."""


class Unprintable(Exception):
    """An exception whose ``__str__`` raises."""

    def __str__(self) -> str:
        raise RuntimeError("no text for you")


class Unreadable(Exception):
    """An exception whose ``__str__`` and ``__repr__`` both raise."""

    def __str__(self) -> str:
        raise RuntimeError("no text")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def _error(kind: str) -> BaseException:
    errors: dict[str, BaseException] = {
        "surrogate": ValueError("cannot parse caf\udce9.csv"),
        "keyboard": KeyboardInterrupt(),
        "exit": SystemExit(3),
        "cancelled": asyncio.CancelledError(),
        "halt": Halt("halt requested by the job"),
        "unprintable": Unprintable(),
        "unreadable": Unreadable(),
    }
    return errors[kind]


@app.job
async def finisher(group: str, size: int, n: int, fail: str = "") -> int:
    """Returns ``n``, or raises the error named by ``fail`` (see ``_error``)."""
    await _gather(group, size)
    if fail:
        raise _error(fail)
    return n


def _result(kind: str, n: int) -> Any:
    results: dict[str, Any] = {
        "plain": n,
        "nul": "a\x00b",
        "surrogate": BAD_TEXT,
        "key": {"caf\udce9": "x\x00y", "n": n},
        "object": {"n": n, "what": object()},
    }
    return results[kind]


@app.job
async def returner(group: str, size: int, n: int, value: str = "plain") -> Any:
    """Returns the value named by ``value`` (see ``_result``)."""
    await _gather(group, size)
    return _result(value, n)
