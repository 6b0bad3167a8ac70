"""A finished run's outcome as a value: ``await run.wait()`` returns it instead of raising.

``run.result()`` raises ``RunFailed`` / ``RunCancelled`` / ``RunExpired``; code that would
rather branch than catch asks for a ``RunResult``::

    outcome = await run.wait(timeout=30)
    if outcome.ok:
        print(outcome.value)
    else:
        print(outcome.status, outcome.error and outcome.error.message)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from asyncjobs.runs import RunRecord, RunStatus

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class RunErrorInfo:
    """Why a run failed, as the worker recorded it (type name, message, traceback text)."""

    type: str
    message: str
    traceback: str


@dataclass(frozen=True, slots=True)
class RunResult(Generic[R]):
    """The outcome of a finished run.

    ``status`` is one of the terminal statuses; ``value`` is the typed result when it
    succeeded (``None`` otherwise); ``error`` says why it failed (``None`` unless ``status``
    is ``failed``). ``record`` is the whole stored run.
    """

    run_id: int
    status: RunStatus
    value: R | None
    error: RunErrorInfo | None
    record: RunRecord

    @property
    def ok(self) -> bool:
        """Whether the run succeeded."""
        return self.status is RunStatus.SUCCEEDED


def run_result(record: RunRecord, decode: Callable[[Any], R]) -> RunResult[R]:
    """A terminal ``record`` → its ``RunResult``, the value decoded by ``decode``."""
    value = decode(record.result) if record.status is RunStatus.SUCCEEDED else None
    error = None
    if record.status is RunStatus.FAILED:
        stored = record.error or {}
        error = RunErrorInfo(
            str(stored.get("type", "Error")),
            str(stored.get("message", "")),
            str(stored.get("traceback", "")),
        )
    return RunResult(record.id, record.status, value, error, record)
