"""Rules every caller shares: how long names may be, and which text PostgreSQL can store.

Two different policies, on purpose:

* what a *caller* supplies (job and queue names, arguments, dedup ids) is never rewritten:
  text PostgreSQL cannot store is refused with a typed error naming the field
  (``check_storable``, ``check_name``);
* what the *worker* writes on a job's behalf (error messages, tracebacks, log lines, progress
  messages, results) must always be stored, so it is made storable visibly: NUL becomes
  ``\\0``, a lone surrogate its ``\\udcXX`` escape, and long text is clipped with a note
  (``storable``, ``storable_json``).
"""

from __future__ import annotations

from typing import Any

#: Longest job, queue, schedule name and dedup id, in characters (the tables check it too).
MAX_NAME_CHARS = 200
#: Longest log line, status message or error message the worker stores; longer ones are cut
#: (and say so).
MAX_MESSAGE_CHARS = 4000
#: Largest value of a PostgreSQL ``bigint`` (run and event ids, cursors).
BIGINT_MAX = 2**63 - 1


def unstorable_reason(text: str) -> str | None:
    """Why PostgreSQL cannot store ``text`` (a NUL, or a lone surrogate, which is not valid
    UTF-8), or ``None`` when it can."""
    if text.isascii():
        return "it contains a NUL character" if "\x00" in text else None
    if "\x00" in text:
        return "it contains a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"it contains a lone surrogate ({text[exc.start]!r}), which is not valid UTF-8"
    return None


def check_storable(text: str, what: str, error: type[Exception]) -> str:
    """``text`` unchanged, or ``error`` naming ``what`` when PostgreSQL cannot store it."""
    reason = unstorable_reason(text)
    if reason is not None:
        raise error(f"{what} cannot be stored: {reason}")
    return text


def check_name(name: object, what: str, error: type[Exception]) -> str:
    """A name (job, queue, schedule, dedup id): a string of 1 to 200 storable characters."""
    if not isinstance(name, str):
        raise error(f"{what} must be a string, got {type(name).__name__}")
    if not 0 < len(name) <= MAX_NAME_CHARS:
        raise error(f"{what} must be 1 to {MAX_NAME_CHARS} characters, got {len(name)}")
    return check_storable(name, what, error)


def check_text(text: object, what: str, error: type[Exception]) -> str:
    """Free text a caller filters by (e.g. a job name in ``get_runs``): any length, storable."""
    if not isinstance(text, str):
        raise error(f"{what} must be a string, got {type(text).__name__}")
    reason = unstorable_reason(text)
    if reason is not None:
        raise error(f"{what} is not text PostgreSQL can take: {reason}")
    return text


def check_int(
    value: object, what: str, error: type[Exception], low: int = 0, high: int = BIGINT_MAX
) -> int:
    """An integer (``bool`` is not one here) within ``[low, high]``."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise error(f"{what} must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise error(f"{what} must be between {low} and {high}, got {value}")
    return value


def is_row_id(value: object) -> bool:
    """Whether ``value`` could be the id of a row: an ``int`` in ``[1, BIGINT_MAX]``."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= BIGINT_MAX


def storable(text: str, limit: int | None = None) -> str:
    """``text`` as the worker may store it: NUL as ``\\0``, lone surrogates as their
    backslash escapes, and at most ``limit`` characters (the cut is said at the end)."""
    if unstorable_reason(text) is not None:
        text = text.replace("\x00", "\\0").encode("utf-8", "backslashreplace").decode("utf-8")
    if limit is not None and len(text) > limit:
        text = text[:limit] + f"… [{len(text) - limit} chars cut]"
    return text


def storable_json(value: Any) -> Any:
    """A JSON-like value with every string key and string storable (tuples become lists).

    Anything else is left as it is, so a value that is not JSON (a non-string key, an
    ``object()``) is still refused by the encoder that comes after."""
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, dict):
        return {
            (storable(k) if isinstance(k, str) else k): storable_json(v) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [storable_json(v) for v in value]
    return value
