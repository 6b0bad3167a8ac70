"""HTTP plumbing of the dashboard: JSON responses, errors as JSON, and reading requests."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from asyncjobs import inputs
from asyncjobs.errors import (
    AsyncJobsError,
    ConfigurationError,
    DatabaseUnavailable,
    DuplicateRun,
    InvalidArguments,
    RunNotFound,
    UnknownJob,
)
from asyncjobs.rules import storable, storable_json
from asyncjobs.runs import EventCursor, RunStatus, Trigger
from asyncjobs.web.models import Error, ErrorDetail
from asyncjobs.web.serialize import dumps

#: Largest accepted POST body.
MAX_BODY_BYTES = 1024 * 1024
_SPACED_OFFSET = re.compile(r"(\d\d:\d\d(?:\.\d+)?) (\d\d:?\d\d)$")


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content)

    def init_headers(self, headers: Any = None) -> None:
        super().init_headers(headers)
        self.raw_headers.append((b"cache-control", b"no-store"))


class ApiError(Exception):
    """An error answered as ``{"error": {...}}`` with an HTTP status."""

    def __init__(self, status: int, kind: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.extra = extra


def error_response(status: int, kind: str, message: str, **extra: Any) -> JSONResponse:
    # a message may quote the request (a name with a lone surrogate): JSON must hold it
    detail = ErrorDetail(type=kind, message=storable(message), **storable_json(extra))
    # absent, not null: "errors" and "existing_run_id" belong to their errors only
    return JSONResponse(Error(error=detail).model_dump(exclude_unset=True), status)


async def handle_error(request: Request, exc: Exception) -> Response:
    """Known errors become 4xx/5xx JSON; anything else is starlette's 500."""
    if isinstance(exc, ApiError):
        return error_response(exc.status, exc.kind, str(exc), **exc.extra)
    status, extra = _status_of(exc)
    return error_response(status, type(exc).__name__, str(exc), **extra)


def _status_of(exc: Exception) -> tuple[int, dict[str, Any]]:
    if isinstance(exc, UnknownJob | RunNotFound):
        return 404, {}
    if isinstance(exc, InvalidArguments):
        return 422, {"errors": exc.errors}
    if isinstance(exc, DuplicateRun):
        return 409, {"existing_run_id": exc.existing_run_id}
    if isinstance(exc, ConfigurationError):
        return 409, {}
    if isinstance(exc, DatabaseUnavailable):
        return 503, {}
    return 500, {}


def last_event_id(request: Request) -> EventCursor | None:
    text = request.headers.get("last-event-id") or request.query_params.get("after")
    if not text:
        return None
    try:
        return EventCursor.parse(text)
    except ValueError as exc:
        raise ApiError(400, "BadRequest", str(exc)) from None


def run_filters(request: Request) -> dict[str, Any]:
    query = request.query_params
    status = query.get("status") or None
    trigger = query.get("trigger") or None
    if status is not None and status not in {s.value for s in RunStatus}:
        raise ApiError(400, "BadRequest", f"unknown status {status[:50]!r}")
    if trigger is not None and trigger not in {t.value for t in Trigger}:
        raise ApiError(400, "BadRequest", f"unknown trigger {trigger[:50]!r}")
    filters = {
        "job": query.get("job") or None,
        "status": status,
        "trigger": trigger,
        "parent_run_id": optional_int(query.get("parent"), "parent"),
        "root_run_id": optional_int(query.get("root"), "root"),
        "created_after": optional_time(query.get("since"), "since"),
        "created_before": optional_time(query.get("until"), "until"),
        "roots_only": flag(query.get("roots"), "roots"),
    }
    inputs.run_filter(**filters)  # the client's own checks, now: a stream must not fail later
    return filters


def flag(text: str | None, name: str) -> bool:
    """A query flag: ``1``/``true`` or ``0``/``false`` (absent: false)."""
    if text is None or text in ("", "0", "false"):
        return False
    if text in ("1", "true"):
        return True
    raise ApiError(400, "BadRequest", f"{name} must be 1 or 0")


def optional_int(text: str | None, name: str) -> int | None:
    return None if not text else int_param(text, name, 0, 0, 2**63 - 1)


def int_param(text: str | None, name: str, default: int, low: int, high: int) -> int:
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise ApiError(400, "BadRequest", f"{name} must be an integer") from None
    if not low <= value <= high:
        raise ApiError(400, "BadRequest", f"{name} must be between {low} and {high}")
    return value


def optional_time(text: str | None, name: str) -> datetime | None:
    if not text:
        return None
    # an unencoded "+01:00" arrives as " 01:00": take it as meant
    text = _SPACED_OFFSET.sub(r"\1+\2", text)
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ApiError(400, "BadRequest", f"{name} must be an ISO 8601 time") from None
    if value.tzinfo is None:
        raise ApiError(400, "BadRequest", f"{name} needs a time zone (e.g. ...Z or +00:00)")
    return value


async def json_body(request: Request) -> dict[str, Any]:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise ApiError(415, "UnsupportedMediaType", "send the body as application/json")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise ApiError(413, "PayloadTooLarge", f"bodies are limited to {MAX_BODY_BYTES} bytes")
    if not body:
        return {}
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "BadRequest", f"the body is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ApiError(400, "BadRequest", "the body must be a JSON object")
    if _has_huge_float(value):
        _refuse_huge_integers(body)
    return value


def _has_huge_float(value: Any) -> bool:
    """Whether a float lies beyond 64-bit integers: orjson reads an integer literal that
    large as a float, which would store a number the caller did not send."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and abs(item) >= 2**63:
            return True
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _refuse_huge_integers(body: bytes) -> None:
    """Read the body again, telling integer literals from floats (rare: see above)."""

    def integer(text: str) -> int:
        number = int(text)
        if not -(2**63) <= number < 2**64:
            raise ApiError(422, "InvalidArguments", f"integer {text[:30]} does not fit in 64 bits",
                           errors=[])
        return number

    try:
        json.loads(body, parse_int=integer)
    except RecursionError:
        raise ApiError(400, "BadRequest", "the body is nested too deeply") from None


def enabled_flag(body: dict[str, Any]) -> bool:
    enabled = body.get("enabled")
    if not isinstance(enabled, bool):
        raise ApiError(400, "BadRequest", 'send {"enabled": true} or {"enabled": false}')
    return enabled


async def handle_http_error(request: Request, exc: Exception) -> Response:
    """starlette's own errors (no such route, method not allowed) as JSON like ours."""
    assert isinstance(exc, HTTPException)
    kind = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "HTTPError")
    response = error_response(exc.status_code, kind, str(exc.detail))
    if exc.headers:
        response.headers.update(exc.headers)
    return response


EXCEPTION_HANDLERS: dict[Any, Callable[[Request, Exception], Any]] = {
    ApiError: handle_error,
    AsyncJobsError: handle_error,
    HTTPException: handle_http_error,
}
