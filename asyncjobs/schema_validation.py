"""Validating JSON arguments against a stored JSON Schema, for callers without the job's code.

Workers store each job's argument schema (pydantic's JSON Schema of its signature) in
``asyncjobs.jobs.args_schema``. A client that triggers a job by name validates against it
with ``jsonschema`` before writing anything, and reports errors in the shape pydantic uses for
typed triggers (``{"loc": [...], "msg": ..., "type": ...}``), so callers handle one format.

JSON Schema is stricter than pydantic's lax mode in one way (``"5"`` is not an integer here,
a typed trigger would coerce it) and looser in another (custom pydantic validators are not in
the schema): the worker validates again with the real model before it runs the job.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError
from jsonschema.protocols import Validator

from asyncjobs.errors import ConfigurationError, InvalidArguments

#: at most this many errors are listed (a huge bad payload must not give a huge error)
MAX_ERRORS = 20


def compile_schema(job: str, schema: dict[str, Any]) -> Validator:
    """A validator for ``schema`` (its draft read from ``$schema``, 2020-12 by default),
    checking ``format`` where ``jsonschema`` has a checker for it."""
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ConfigurationError(
            f"job {job!r}: the stored argument schema is not valid JSON Schema: {exc.message}"
        ) from None
    validator: Validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    return validator


def validate(job: str, validator: Validator, arguments: dict[str, Any]) -> None:
    """Raise ``InvalidArguments`` with a per-field error list when ``arguments`` do not fit."""
    errors = sorted(validator.iter_errors(arguments), key=lambda e: list(e.absolute_path))
    if not errors:
        return
    listed = [item for error in errors for item in _describe(error)][:MAX_ERRORS]
    summary = "; ".join(f"{_where(e['loc'])}: {e['msg']}" for e in listed[:5])
    more = f" (+{len(listed) - 5} more)" if len(listed) > 5 else ""
    raise InvalidArguments(f"{job}: {summary}{more}", listed)


def _describe(error: ValidationError) -> Iterable[dict[str, Any]]:
    """One jsonschema error → pydantic-shaped entries naming the field itself: a missing or
    unexpected property is reported at its own name, not at the object holding it."""
    path = list(error.absolute_path)
    instance = error.instance
    required = error.validator_value
    if error.validator == "required" and isinstance(instance, dict) and isinstance(required, list):
        for name in required:
            if name not in instance:
                yield {"loc": [*path, name], "msg": "Field required", "type": "missing"}
        return
    if error.validator == "additionalProperties" and isinstance(instance, dict):
        known = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
        for name in instance:
            if name not in known:
                yield {"loc": [*path, name], "msg": "Extra inputs are not permitted",
                       "type": "extra_forbidden"}
        return
    yield {"loc": path, "msg": error.message, "type": str(error.validator)}


def _where(loc: list[Any]) -> str:
    return ".".join(str(part) for part in loc) or "arguments"
