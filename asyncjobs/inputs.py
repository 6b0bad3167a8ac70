"""Checks of what callers hand the client: bulk trigger items, run ids, read filters, waits.

Each raises a typed error (``InvalidArguments``, ``RunNotFound``) before any query runs, so
that no input reaches the driver as something it cannot encode (a ``bigint`` overflow, a NUL,
a lone surrogate) and comes back as a generic ``DatabaseError``. The text and number rules
themselves live in ``asyncjobs.rules``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from asyncjobs.backends.base import RunFilter
from asyncjobs.errors import InvalidArguments, RunNotFound
from asyncjobs.jobs import MAX_OFFSET
from asyncjobs.rules import BIGINT_MAX, check_int, check_text, is_row_id
from asyncjobs.runs import RunStatus, Trigger

#: most runs (and events) one read returns
MAX_PAGE = 1000
#: the longest span a read or a wait takes (as ``Job.options`` takes for delays)
LONGEST = MAX_OFFSET


def encode_many(
    job_name: str,
    arguments: Iterable[Mapping[str, Any]],
    encode: Callable[[Mapping[str, Any]], str],
    encode_all: Callable[[list[Mapping[str, Any]]], list[str] | None] | None = None,
) -> list[str]:
    """Validate and encode every item of ``trigger_many`` with ``encode`` (the job's codec, or
    the stored schema of a job known by name); an error names the item's index.

    ``encode_all`` (a job's ``ArgsCodec.encode_many``) does the whole list in one call when
    every item is good; otherwise the items go through ``encode`` one by one, whose errors name
    the bad one."""
    if isinstance(arguments, str | bytes | Mapping) or not isinstance(arguments, Iterable):
        raise InvalidArguments(
            f"{job_name}: trigger_many takes a list of argument mappings, "
            f"got {type(arguments).__name__}"
        )
    items = list(arguments)
    if encode_all is not None and all(
        type(item) is dict or isinstance(item, Mapping) for item in items
    ):
        encoded = encode_all(items)
        if encoded is not None:
            return encoded
    encoded = []
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise InvalidArguments(
                f"{job_name}: item {index}: arguments must be a mapping of parameter names to "
                f"values, got {type(item).__name__}",
                [{"loc": [index], "msg": "not a mapping", "type": "dict_type"}],
            )
        try:
            encoded.append(encode(item))
        except InvalidArguments as exc:
            message = str(exc).removeprefix(f"{job_name}: ")
            errors = [{**e, "loc": [index, *e.get("loc", [])]} for e in exc.errors]
            raise InvalidArguments(f"{job_name}: item {index}: {message}", errors) from None
    return encoded


def run_id(value: object) -> int:
    """A run id to look up: ``InvalidArguments`` unless an ``int``; ``RunNotFound`` when no
    row could have it (zero, negative, or beyond ``bigint``)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArguments(f"a run id must be an integer, got {type(value).__name__}")
    if not is_row_id(value):
        raise RunNotFound(value)
    return value


def run_filter(
    *,
    job: object = None,
    status: object = None,
    parent_run_id: object = None,
    root_run_id: object = None,
    trigger: object = None,
    limit: object = 100,
    cursor: object = None,
    created_after: object = None,
    created_before: object = None,
    roots_only: object = False,
) -> RunFilter:
    """``Client.get_runs``'s filters, checked; the dashboard checks a request's the same way
    before it opens a stream."""
    return RunFilter(
        job=None if job is None else check_text(job, "job", InvalidArguments),
        status=None if status is None else _member(RunStatus, status, "status"),
        parent_run_id=_optional_id(parent_run_id, "parent_run_id"),
        root_run_id=_optional_id(root_run_id, "root_run_id"),
        trigger=None if trigger is None else _member(Trigger, trigger, "trigger"),
        before_id=_optional_id(cursor, "cursor"),
        limit=check_int(limit, "limit", InvalidArguments, 1, MAX_PAGE),
        created_after=_optional_time(created_after, "created_after"),
        created_before=_optional_time(created_before, "created_before"),
        roots_only=_flag(roots_only, "roots_only"),
    )


def _flag(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidArguments(f"{what} must be True or False")
    return value


def event_window(after_id: object, limit: object) -> tuple[int, int]:
    """``get_events``' position and page size."""
    return (
        check_int(after_id, "after_id", InvalidArguments, 0, BIGINT_MAX),
        check_int(limit, "limit", InvalidArguments, 1, MAX_PAGE),
    )


def seconds(
    value: object,
    what: str,
    *,
    allow_none: bool = True,
    allow_zero: bool = False,
    bounded: bool = False,
) -> float | None:
    """A positive number of seconds (``inf``: no limit, unless ``bounded``: at most 100
    years); ``None`` / zero where allowed."""
    if value is None and allow_none:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise InvalidArguments(f"{what} must be a number of seconds, got {type(value).__name__}")
    if math.isnan(value) or value < 0 or (value == 0 and not allow_zero):
        raise InvalidArguments(f"{what} must be {'at least 0' if allow_zero else 'positive'}, "
                               f"got {value}")
    if bounded and value > LONGEST.total_seconds():
        raise InvalidArguments(f"{what} must be at most 100 years, got {value}")
    return float(value)


def duration(value: object, what: str, *, bounded: bool = True) -> timedelta:
    """A ``timedelta`` of zero or more (at most 100 years when ``bounded``)."""
    if not isinstance(value, timedelta):
        raise InvalidArguments(f"{what} must be a timedelta, got {type(value).__name__}")
    if value < timedelta(0) or (bounded and value > LONGEST):
        limit = "from 0 to 100 years" if bounded else "0 or more"
        raise InvalidArguments(f"{what} must be {limit}, got {value}")
    return value


def _optional_id(value: object, what: str) -> int | None:
    if value is None:
        return None
    return check_int(value, what, InvalidArguments, 0, BIGINT_MAX)


def _member(kind: type[RunStatus] | type[Trigger], value: object, what: str) -> Any:
    if isinstance(value, str):  # the members too: they are StrEnums
        try:
            return kind(value)
        except ValueError:
            pass
    allowed = ", ".join(m.value for m in kind)
    raise InvalidArguments(f"{what} {value!r:.60} is not one of: {allowed}")


def _optional_time(value: object, what: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise InvalidArguments(f"{what} must be a timezone-aware datetime, got {value!r:.60}")
    try:
        return value.astimezone(UTC)  # what the driver does: years 1 to 9999 in UTC only
    except OverflowError:
        raise InvalidArguments(f"{what} is out of range: {value.isoformat()}") from None
