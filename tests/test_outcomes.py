"""What the worker stores is always storable (issue 10, item 2): errors, log fields, results,
and the replacements of refused completions and events. Unit level; the end-to-end cases are
in ``tests/test_isolation.py``."""

from __future__ import annotations

import traceback
from typing import Any

import pytest

from asyncjobs import RunStatus
from asyncjobs.backends.base import Completion
from asyncjobs.codec import result_codec
from asyncjobs.context import _json_fields
from asyncjobs.outcomes import (
    describe_error,
    storable_event,
    unstorable_completion,
)
from asyncjobs.rules import unstorable_reason


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text")


def _raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def test_an_error_is_described_storably_even_when_str_raises() -> None:
    error = describe_error(_raised(ValueError("cannot parse caf\udce9.csv\x00")), 2)
    assert error["type"] == "ValueError" and error["attempt"] == 2
    assert error["message"] == "cannot parse caf\\udce9.csv\\0"
    assert all(unstorable_reason(text) is None for text in (error["message"], error["traceback"]))
    unprintable = describe_error(_raised(Unprintable()), 1)
    assert unprintable["type"] == f"{Unprintable.__module__}.Unprintable"
    assert unprintable["message"] == "<unprintable Unprintable: str() raised RuntimeError>"
    assert describe_error(SystemExit(3), 1)["message"] == "3"


def test_an_error_whose_traceback_cannot_be_formatted_is_still_described(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(exc: BaseException) -> list[str]:
        raise RecursionError("too deep")

    monkeypatch.setattr(traceback, "format_exception", broken)
    error = describe_error(_raised(KeyError("k")), 1)
    assert error["message"] == "'k'"
    assert error["traceback"] == (
        "<the traceback of KeyError could not be formatted: RecursionError>"
    )


def test_long_messages_and_tracebacks_are_clipped() -> None:
    error = describe_error(_raised(ValueError("x" * 10_000)), 1)
    assert error["message"] == "x" * 4000 + "… [6000 chars cut]"
    assert len(error["traceback"]) <= 20_000 + len("… (cut)\n")


@pytest.mark.parametrize(
    ("fields", "stored"),
    [
        ({"file": "caf\udce9.csv"}, {"file": "caf\\udce9.csv"}),
        ({"caf\udce9": ["a\x00b", ("t",)]}, {"caf\\udce9": ["a\\0b", ["t"]]}),
        ({"n": 1, "ok": "plain"}, {"n": 1, "ok": "plain"}),
    ],
)
def test_log_fields_are_made_storable(fields: dict[str, Any], stored: Any) -> None:
    assert _json_fields(fields) == stored


@pytest.mark.parametrize("fields", [{"what": object()}, {"k": {1: "int key"}}])
def test_log_fields_that_are_not_json_are_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(TypeError, match="log fields must be JSON values"):
        _json_fields(fields)


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        ("a\x00b", '"a\\\\0b"'),
        ("caf\udce9", '"caf\\\\udce9"'),
        ({"caf\udce9": ["x\x00"]}, '{"caf\\\\udce9":["x\\\\0"]}'),
        (r"a backslash and u0000: \u0000", '"a backslash and u0000: \\\\u0000"'),
    ],
)
def test_results_are_stored_escaped(value: Any, stored: str) -> None:
    assert result_codec("job", Any).encode(value) == stored


def test_a_result_that_is_not_json_is_refused() -> None:
    with pytest.raises(Exception, match="Unable to serialize unknown type"):
        result_codec("job", Any).encode({"a": object(), "b": "caf\udce9"})


def test_a_refused_completion_becomes_a_result_not_storable_failure_once() -> None:
    original = Completion(5, 2, RunStatus.SUCCEEDED, result_json='"\\u0000"')
    refusal = ValueError("unsupported Unicode escape sequence")
    replacement = unstorable_completion(original, refusal, 1)
    assert replacement is not None
    assert (replacement.run_id, replacement.attempt) == (5, 2)
    assert (replacement.status, replacement.result_json, replacement.retry_in) == (
        RunStatus.FAILED, None, None,
    )  # fmt: skip
    assert replacement.error is not None
    assert replacement.error["type"] == "asyncjobs.errors.ResultNotStorable"
    assert replacement.error["message"] == (
        "the outcome of attempt 2 (succeeded) could not be stored: "
        "ValueError: unsupported Unicode escape sequence"
    )
    assert unstorable_completion(replacement, refusal, 2) is None


def test_a_refused_event_is_escaped_then_replaced_by_a_visible_line_then_given_up() -> None:
    event = (5, 1, "progress", {"progress": 0.5, "message": "caf\udce9"})
    refusal = TypeError("str is not valid UTF-8")
    assert storable_event(event, refusal, 1) == (
        5, 1, "progress", {"progress": 0.5, "message": "caf\\udce9"},
    )  # fmt: skip
    marker = (5, 1, "log", {
        "level": "error",
        "message": "[a progress event of this run could not be stored: "
                   "TypeError: str is not valid UTF-8]",
    })  # fmt: skip
    assert storable_event(event, refusal, 2) == marker
    # nothing to escape: straight to the visible line
    assert storable_event((5, 1, "progress", {"progress": 0.5}), refusal, 1) == marker
    assert storable_event(event, refusal, 3) is None
