"""What the worker stores about an attempt, always storable.

* ``describe_error`` turns any exception a job raised into the stored type, message and
  traceback — even one whose ``__str__`` raises, or whose traceback cannot be formatted;
* ``unstorable_completion`` and ``storable_event`` are the ``repair`` steps of the worker's
  batchers (``asyncjobs.batcher``): what is stored instead of a completion or an event the
  database refused even alone. A completion becomes a ``ResultNotStorable`` failure of its run
  (never dropped); an event is escaped, and as a last resort replaced by a visible log line.

Every string passes ``rules.storable`` (NUL and lone surrogates escaped, long text clipped).
"""

from __future__ import annotations

import traceback
from typing import Any

from asyncjobs.backends.base import Completion
from asyncjobs.errors import ResultNotStorable
from asyncjobs.rules import MAX_MESSAGE_CHARS, storable, storable_json
from asyncjobs.runs import RunStatus

#: Longest stored traceback; a longer one keeps its end (where the error is).
MAX_TRACEBACK_CHARS = 20_000

Event = tuple[int, int, str, dict[str, Any]]


def describe_error(exc: BaseException, attempt: int) -> dict[str, Any]:
    """Type, message and traceback of an exception, as stored on the run."""
    return {
        "type": error_type_name(type(exc)),
        "message": storable(exception_text(exc), MAX_MESSAGE_CHARS),
        "traceback": _traceback_text(exc),
        "attempt": attempt,
    }


def error_type_name(kind: type[BaseException]) -> str:
    """``ValueError`` for builtins, ``module.QualName`` for the others."""
    name = getattr(kind, "__qualname__", None) or kind.__name__
    module = getattr(kind, "__module__", None)
    return storable(name if module in (None, "builtins") else f"{module}.{name}")


def exception_text(exc: BaseException) -> str:
    """``str(exc)``, or what went wrong when its ``__str__`` itself raises."""
    try:
        return str(exc)
    except BaseException as err:  # job code: anything may come out of it, even SystemExit
        return f"<unprintable {_short(exc)}: str() raised {_short(err)}>"


def _traceback_text(exc: BaseException) -> str:
    try:
        text = "".join(traceback.format_exception(exc))
    except BaseException as err:  # a broken __notes__, __cause__ or __traceback__
        return f"<the traceback of {_short(exc)} could not be formatted: {_short(err)}>"
    if len(text) > MAX_TRACEBACK_CHARS:
        text = "… (cut)\n" + text[-MAX_TRACEBACK_CHARS:]
    return storable(text)


def _short(exc: BaseException) -> str:
    return type(exc).__qualname__


# ---------------------------------------------------------------------- repairs (batcher)


def unstorable_completion(completion: Completion, error: Exception, step: int) -> Completion | None:
    """The run fails with ``ResultNotStorable`` saying why (step 1); nothing else is tried."""
    if step > 1:
        return None
    failure = ResultNotStorable(
        f"the outcome of attempt {completion.attempt} ({_outcome(completion)}) could not be "
        f"stored: {type(error).__name__}: {exception_text(error)}"
    )
    return Completion(
        completion.run_id,
        completion.attempt,
        RunStatus.FAILED,
        error=describe_error(failure, completion.attempt),
    )


def _outcome(completion: Completion) -> str:
    outcome = completion.status.value
    if completion.error is not None:
        outcome += f": {completion.error.get('type')}: {completion.error.get('message')}"
    return outcome


def storable_event(event: Event, error: Exception, step: int) -> Event | None:
    """Step 1: every string escaped (when that changes anything); then a visible log line in
    its place that says what was lost and why; then nothing."""
    run_id, attempt, kind, data = event
    if step == 1:
        escaped = storable_json(data)
        if escaped != data:
            return (run_id, attempt, kind, escaped)
    if step > 2:
        return None
    message = (
        f"[a {kind} event of this run could not be stored: "
        f"{type(error).__name__}: {exception_text(error)}]"
    )
    data = {"level": "error", "message": storable(message, MAX_MESSAGE_CHARS)}
    return (run_id, attempt, "log", data)


def describe_completion(completion: Completion) -> str:
    return (
        f"the completion of run {completion.run_id} "
        f"(attempt {completion.attempt}, {completion.status.value})"
    )


def describe_event(event: Event) -> str:
    return f"a {event[2]} event of run {event[0]} (attempt {event[1]})"
