"""Arguments and results in and out of JSON.

A job's signature becomes a pydantic model that validates arguments when a run is triggered
(before any row is written) and again when it runs (the code may have changed in between).
The return annotation becomes a ``TypeAdapter`` that encodes the result on the worker and
decodes it, typed, in ``run_async``. JSON only, via orjson; never pickle.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import inspect
import math
import re
import types
import typing
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import pydantic
import pydantic_core

from asyncjobs.errors import ConfigurationError, InvalidArguments
from asyncjobs.rules import storable, storable_json, unstorable_reason

#: Largest accepted encoded arguments, in bytes (per App; see ``App(max_args_bytes=...)``).
DEFAULT_MAX_ARGS_BYTES = 256 * 1024
#: Deepest accepted nesting of lists and objects in arguments.
MAX_NESTING = 32

_ARGS_CONFIG = pydantic.ConfigDict(
    extra="forbid",
    allow_inf_nan=False,  # NaN/Infinity are not JSON; refuse them instead of writing null
    populate_by_name=False,
)


def dumps(value: Any) -> str:
    """JSON text for jsonb columns (asyncpg's text codec wants ``str``)."""
    return orjson.dumps(value).decode()


def loads(text: str | bytes) -> Any:
    return orjson.loads(text)


@dataclass(frozen=True, slots=True)
class ArgsCodec:
    """Validates and encodes the arguments of one job, built from its signature."""

    job_name: str
    model: type[pydantic.BaseModel]
    signature: inspect.Signature
    max_bytes: int
    #: every parameter is a scalar (int, str, datetime, enum, ...): no nesting to walk, and
    #: pydantic's own JSON serializer can be used (the hot path of bulk triggers)
    flat: bool = False
    #: a flat codec's validator of a whole list of argument dicts (``encode_many``)
    many: pydantic.TypeAdapter[list[Any]] | None = None

    def bind(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Positional and keyword arguments → one dict by parameter name."""
        if not args:
            # missing and unknown names are reported by validation (extra="forbid")
            return dict(kwargs)
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise InvalidArguments(f"{self.job_name}: {exc}") from None
        return dict(bound.arguments)

    def encode(self, arguments: Mapping[str, Any]) -> str:
        """Validate python values and return the JSON text to store. Anything PostgreSQL or
        JSON cannot hold is refused with ``InvalidArguments`` naming the argument, never
        rewritten."""
        if self.flat:
            validated = self._validate(lambda: self.model.model_validate(dict(arguments)))
            self._check_scalars(validated)
            text: str = self._dump(validated, lambda: validated.model_dump_json(by_alias=True))
        else:
            check_shape(arguments, self.job_name)
            validated = self._validate(lambda: self.model.model_validate(dict(arguments)))
            plain = self._dump(validated, lambda: validated.model_dump(mode="json", by_alias=True))
            if check_shape(plain, self.job_name):
                # pydantic's JSON mode rewrites a key it cannot encode as U+FFFD: look at the
                # keys as given, so that a caller's key is refused, not silently changed
                check_shape(validated.model_dump(by_alias=True), self.job_name)
            try:
                text = dumps(plain)
            except (orjson.JSONEncodeError, TypeError) as exc:  # e.g. an integer beyond 64 bits
                raise InvalidArguments(f"{self.job_name}: {exc}") from None
        size = len(text.encode())
        if size > self.max_bytes:
            raise InvalidArguments(
                f"{self.job_name}: arguments are {size} bytes encoded, "
                f"above the limit of {self.max_bytes}"
            )
        return text

    def encode_many(self, items: list[Mapping[str, Any]]) -> list[str] | None:
        """``encode`` for every item of a flat codec's list in one validation call (bulk
        triggers), or ``None`` when any item is refused or this codec is not flat: the caller
        then encodes item by item, which names the bad item and its error exactly as
        ``encode`` does."""
        if self.many is None:
            return None
        try:
            validated = self.many.validate_python(items)
        except (pydantic.ValidationError, RecursionError):
            return None
        to_json = self.model.__pydantic_serializer__.to_json
        encoded = []
        try:
            for item in validated:
                self._check_scalars(item)
                data = to_json(item, by_alias=True)  # what model_dump_json runs
                if len(data) > self.max_bytes:
                    return None
                encoded.append(data.decode())
        except (InvalidArguments, ValueError, TypeError):  # PydanticSerializationError too
            return None
        return encoded

    def _check_scalars(self, validated: pydantic.BaseModel) -> None:
        """The flat path's checks: every value is a scalar, so no walk is needed."""
        for name, value in validated.__dict__.items():
            if isinstance(value, str):
                if value.isascii() and "\x00" not in value:
                    continue
                reason = unstorable_reason(value)
                if reason is not None:
                    where = [self._parameter(validated, name)]
                    raise _refused(self.job_name, where, f"cannot be stored: {reason}")
            elif isinstance(value, int) and not _INT64_MIN <= value <= _UINT64_MAX:
                # JSON readers (orjson too) turn such numbers into floats: refuse, as dumps does
                where = [self._parameter(validated, name)]
                raise _refused(self.job_name, where, "integers must fit in 64 bits")

    @staticmethod
    def _parameter(validated: pydantic.BaseModel, field: str) -> str:
        """The parameter name of a field of the argument model (fields are p0, p1...)."""
        return type(validated).model_fields[field].alias or field

    def _dump(self, validated: pydantic.BaseModel, dump: Callable[[], Any]) -> Any:
        """Run pydantic's serializer; a value it cannot write names its argument."""
        try:
            return dump()
        except (ValueError, TypeError, RecursionError) as exc:  # PydanticSerializationError too
            where = self._failing_field(validated)
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if isinstance(exc, RecursionError) or "depth exceeded" in detail:
                detail = f"nested deeper than {MAX_NESTING} levels, or circular"
            raise _refused(self.job_name, where, f"cannot be stored as JSON: {detail}") from None

    def _failing_field(self, validated: pydantic.BaseModel) -> list[str | int]:
        for name in type(validated).model_fields:
            try:
                validated.model_dump(mode="json", include={name})
            except (ValueError, TypeError, RecursionError):
                return [self._parameter(validated, name)]
        return []

    def encode_json(self, arguments: Mapping[str, Any]) -> str:
        """Validate JSON-shaped values (from the HTTP API or a name trigger)."""
        check_shape(arguments, self.job_name)
        return self.encode(self.decode(dict(arguments)))

    def decode(self, stored: Mapping[str, Any]) -> dict[str, Any]:
        """Stored JSON → validated python keyword arguments for the function."""
        validated = self._validate(lambda: self.model.model_validate(dict(stored)))
        return {
            info.alias or name: getattr(validated, name)
            for name, info in type(validated).model_fields.items()
        }

    def json_schema(self) -> dict[str, Any]:
        return self.model.model_json_schema(by_alias=True)

    def _validate(self, check: Callable[[], pydantic.BaseModel]) -> pydantic.BaseModel:
        try:
            return check()
        except RecursionError:
            raise InvalidArguments(f"{self.job_name}: arguments are nested too deeply") from None
        except pydantic.ValidationError as exc:
            errors = [
                {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()
            ]
            raise InvalidArguments(f"{self.job_name}: {_summarize(errors)}", errors) from None


@dataclass(frozen=True, slots=True)
class ResultCodec:
    """Encodes a job's return value and decodes it back to the annotated type."""

    adapter: pydantic.TypeAdapter[Any]

    def encode(self, value: Any) -> str:
        """The JSON text to store, made storable like everything the worker writes
        (``rules.storable_json``): a NUL or a lone surrogate in a string or key comes back
        escaped (``\\0``, ``\\udce9``). Raises ``pydantic_core.PydanticSerializationError``
        for values that are not JSON, and ``ValueError`` for NaN/Infinity."""
        try:
            text = self.adapter.dump_json(value).decode()
        except pydantic_core.PydanticSerializationError:
            # a lone surrogate cannot be written as UTF-8: escape it in the plain value, then
            # write that (a value that is not JSON at all fails again here, with its reason)
            text = _ANY.dump_json(storable_json(self._plain(value))).decode()
        else:
            if has_nul_escape(text):
                text = dumps(storable_json(loads(text)))
        # pydantic writes NaN and Infinity as null; only a result with a null can hide one
        # (and None is neither)
        if (
            "null" in text
            and value is not None
            and _has_non_finite(self.adapter.dump_python(value))
        ):
            raise ValueError("result contains NaN or Infinity, which JSON cannot hold")
        return text

    def decode(self, stored: Any) -> Any:
        return self.adapter.validate_python(stored)

    def _plain(self, value: Any) -> Any:
        try:
            return self.adapter.dump_python(value, mode="json")
        except UnicodeEncodeError:  # JSON mode encodes dict keys: a surrogate in one
            return self.adapter.dump_python(value)


#: writes the plain values of ``ResultCodec._plain`` (datetimes, sets, ... as pydantic does)
_ANY: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(Any)


def args_codec(
    job_name: str, signature: inspect.Signature, hints: Mapping[str, Any], max_bytes: int
) -> ArgsCodec:
    """Build the argument model from the job's parameters (the Context one already removed)."""
    fields: dict[str, Any] = {}
    for index, param in enumerate(signature.parameters.values()):
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
            raise ConfigurationError(
                f"job {job_name!r}: parameter {param.name!r} must be a plain or keyword-only "
                "parameter (*args, **kwargs and positional-only ones cannot be stored by name)"
            )
        default = ... if param.default is param.empty else param.default
        annotation = hints.get(param.name, Any)
        # Field names are synthetic so that a parameter called e.g. "json" or "schema"
        # cannot shadow a BaseModel attribute; the alias is the real parameter name.
        fields[f"p{index}"] = (annotation, pydantic.Field(default, alias=param.name))
    try:
        model = pydantic.create_model(
            f"{job_name}_arguments", __config__=_ARGS_CONFIG, **fields
        )
    except (pydantic.PydanticSchemaGenerationError, TypeError) as exc:
        raise ConfigurationError(f"job {job_name!r}: cannot build argument schema: {exc}") from exc
    flat = all(_is_flat(hints.get(name, Any)) for name in signature.parameters)
    many = pydantic.TypeAdapter(list[model]) if flat else None
    return ArgsCodec(job_name, model, signature, max_bytes, flat, many)


_INT64_MIN, _UINT64_MAX = -(2**63), 2**64 - 1
_FLAT_TYPES = (bool, int, float, str, datetime.datetime, datetime.date, datetime.time,
               datetime.timedelta, decimal.Decimal, uuid.UUID, enum.Enum)


def _is_flat(annotation: Any) -> bool:
    """A scalar type, an Optional/Union/Literal of scalars: nothing nested inside."""
    if annotation is None or annotation is type(None):
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return all(isinstance(v, str | int | bool | None) for v in typing.get_args(annotation))
    if origin is typing.Union or origin is types.UnionType:
        return all(_is_flat(arg) for arg in typing.get_args(annotation))
    return isinstance(annotation, type) and issubclass(annotation, _FLAT_TYPES)


def result_codec(job_name: str, annotation: Any) -> ResultCodec:
    if annotation is inspect.Signature.empty:
        annotation = Any
    try:
        return ResultCodec(pydantic.TypeAdapter(annotation))
    except pydantic.PydanticSchemaGenerationError as exc:
        raise ConfigurationError(f"job {job_name!r}: cannot encode return type: {exc}") from exc


# ``\u0000`` preceded by an even number of backslashes: a NUL, not an escaped backslash
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def has_nul_escape(json_text: str) -> bool:
    """Whether JSON text holds a NUL character, which jsonb (and text) cannot store."""
    return "\\u0000" in json_text and _NUL_ESCAPE.search(json_text) is not None


#: where a value sits in the arguments: ``(parent, key)`` links, ``None`` at the top
_Where = tuple[Any, Any] | None
#: the key of the value ``check_shape`` starts from (it has none)
_TOP = object()


def check_shape(value: Any, job_name: str) -> bool:
    """Refuse what PostgreSQL or JSON cannot hold, naming where it is: NUL characters and
    lone surrogates in strings and keys, very deep nesting, and NaN/Infinity (in untyped
    values pydantic lets them through and JSON would say null).

    Returns whether a key holds U+FFFD, the replacement character (see ``encode``)."""
    replaced = False
    # (item, depth, where its parent is, its key there): a container's own location is made
    # only when it is entered, so a leaf costs one tuple
    stack: list[tuple[Any, int, _Where, Any]] = [(value, 0, None, _TOP)]
    while stack:
        item, depth, parent, key = stack.pop()
        if isinstance(item, Mapping):
            where = parent if key is _TOP else (parent, key)
            _check_depth(depth, job_name, where)
            for name, child in item.items():
                if isinstance(name, str):
                    _check_text(name, job_name, (where, name), "key")
                    replaced = replaced or "\ufffd" in name
                else:
                    _check_scalar(name, job_name, (where, name))
                stack.append((child, depth + 1, where, name))
        elif isinstance(item, list | tuple | set | frozenset):
            where = parent if key is _TOP else (parent, key)
            _check_depth(depth, job_name, where)
            stack.extend((child, depth + 1, where, n) for n, child in enumerate(item))
        elif isinstance(item, str | float):
            _check_scalar(item, job_name, parent if key is _TOP else (parent, key))
    return replaced


def _check_scalar(item: Any, job_name: str, where: _Where) -> None:
    if isinstance(item, str):
        if not item.isascii() or "\x00" in item:
            _check_text(item, job_name, where, "string")
    elif isinstance(item, float) and not math.isfinite(item):
        raise _refused(job_name, _path(where), "NaN and Infinity are not JSON numbers")


def _check_text(text: str, job_name: str, where: _Where, what: str) -> None:
    reason = None if text.isascii() and "\x00" not in text else unstorable_reason(text)
    if reason is not None:
        raise _refused(job_name, _path(where), f"this {what} cannot be stored: {reason}")


def _path(where: _Where) -> list[str | int]:
    parts: list[str | int] = []
    while where is not None:
        where, key = where
        parts.append(key)
    return parts[::-1]


def _refused(job_name: str, path: list[Any], message: str) -> InvalidArguments:
    """``InvalidArguments`` naming the job and the argument (``payload['k'][0]``); the
    location is printable and storable however odd the caller's keys are."""
    loc = [p if isinstance(p, int) and not isinstance(p, bool) else storable(str(p)) for p in path]
    text = "".join(
        (p if n == 0 else f".{p}") if isinstance(p, str) and p.isidentifier() else f"[{p!r}]"
        for n, p in enumerate(path)
    )
    where = f"{text}: " if text else ""
    return InvalidArguments(
        f"{job_name}: {where}{message}", [{"loc": loc, "msg": message, "type": "value_error"}]
    )


def _has_non_finite(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return True
        if isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(item)
    return False


def _check_depth(depth: int, job_name: str, where: _Where) -> None:
    if depth >= MAX_NESTING:
        message = f"arguments are nested deeper than {MAX_NESTING} levels"
        raise _refused(job_name, _path(where), message)


def _summarize(errors: list[dict[str, Any]]) -> str:
    parts = []
    for error in errors[:5]:
        where = ".".join(str(part) for part in error["loc"]) or "arguments"
        parts.append(f"{where}: {error['msg']}")
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more
