"""Triggering a job by name, without its code: what workers store, and how a client uses it.

A worker stores each job's row in ``asyncjobs.jobs``: its queue, its limit and, in
``args_schema``, the JSON Schema of its arguments. The trigger defaults a caller needs besides
the queue (the default priority, the number of attempts, the aliases the job answers to) ride
in that schema under the ``"x-asyncjobs"`` member, which JSON Schema validators ignore — so a
service that lacks the job's code finds everything it needs in one row, with no new column.

``JobDirectory`` (one per client) reads that row at each trigger by name, keeping the compiled
validator until the row's ``updated_at`` changes; ``JobRef`` is the caller's handle on such a
job: a name, the type its result is decoded to, and trigger options.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, overload

import orjson
from jsonschema.protocols import Validator
from typing_extensions import TypeVar  # PEP 696 defaults (typing has them from 3.13)

from asyncjobs import telemetry
from asyncjobs.backends.base import Backend, DefinitionStore, Enqueued, NewRun, QueueStore
from asyncjobs.codec import DEFAULT_MAX_ARGS_BYTES, ResultCodec, check_shape, dumps, result_codec
from asyncjobs.errors import InvalidArguments, UnknownJob
from asyncjobs.jobs import DEFAULT_MAX_RESTARTS, OnDuplicate, RunOptions, with_options
from asyncjobs.redact import REDACTED, KeyPath, redact_args
from asyncjobs.rules import check_name
from asyncjobs.runs import RunRecord, Trigger
from asyncjobs.schema_validation import compile_schema, validate

if TYPE_CHECKING:
    from asyncjobs.client import Client
    from asyncjobs.jobs import Job

#: a result type; ``Any`` (JSON values) when nothing says, e.g. ``JobRef("name")``
R = TypeVar("R", default=Any)

#: the member of a stored argument schema that holds the trigger defaults
EXTENSION = "x-asyncjobs"
#: what ``shown_args`` shows for a job whose redaction rules are not stored
UNKNOWN_REDACTION = {REDACTED: "no worker stored this job's redaction rules"}


def stored_schema(job: Job[Any, Any]) -> dict[str, Any]:
    """The argument schema a worker stores for ``job``, with its trigger defaults."""
    schema = job.args.json_schema()
    schema[EXTENSION] = {
        "priority": job.priority,
        "max_attempts": job.retry.max_attempts,
        "max_restarts": job.max_restarts,
        "aliases": list(job.aliases),
        # the stored key paths of ``redact``: a reader without the code hides them too
        "redact": [list(path) for path in job.redact_keys],
    }
    return schema


def stored_redaction(args_schema: dict[str, Any] | None) -> tuple[KeyPath, ...] | None:
    """The key paths a stored job redacts; ``None`` when the row does not say (no row, or
    one stored by a worker that predates redaction rules in the row): hide everything."""
    paths = ((args_schema or {}).get(EXTENSION) or {}).get("redact")
    if not isinstance(paths, list):
        return None
    return tuple(tuple(str(key) for key in path) for path in paths if isinstance(path, list))


async def shown_args(client: Client, run: RunRecord) -> dict[str, Any]:
    """A run's arguments as a reader without the job's code may show them: with the
    redaction rules the workers stored, or hidden whole when there are none to read."""
    keys: tuple[KeyPath, ...] | None = None
    if isinstance(client.backend, DefinitionStore):
        row = await client.backend.get_job_definition(run.job, None)
        keys = stored_redaction(row.args_schema if row is not None else None)
    if keys is None:
        return dict(UNKNOWN_REDACTION)
    return redact_args(run.args, keys)


#: results left as JSON values (one adapter for every untyped reference)
_JSON_RESULT = result_codec("json", Any)


class JobRef(Generic[R]):
    """A job known only by name: ``JobRef("make_thumbnail")`` or, with a typed result,
    ``JobRef("add", int)``. Pass it wherever a ``Job`` goes (``client.trigger_async``,
    ``client.run_async``); ``options(...)`` works as on a job. The trigger validates the
    arguments against the schema the workers stored, before writing anything."""

    @overload
    def __init__(self, name: str, result_type: type[R]) -> None: ...

    @overload  # no type, or a form such as ``int | None``: R keeps its default, Any
    def __init__(self, name: str, result_type: Any = Any) -> None: ...

    def __init__(self, name: str, result_type: Any = Any) -> None:
        self.name = name
        #: whether results are validated into a type (else they stay JSON values)
        self.typed = result_type is not Any
        self.result: ResultCodec = (
            result_codec(name, result_type) if self.typed else _JSON_RESULT
        )
        self.default_options = RunOptions()

    def __repr__(self) -> str:
        return f"<JobRef {self.name!r}>"

    def options(
        self,
        *,
        priority: int | None = None,
        not_before: datetime | timedelta | None = None,
        not_after: datetime | timedelta | None = None,
        dedup_id: str | None = None,
        queue: str | None = None,
        on_duplicate: OnDuplicate | None = None,
        wait_timeout: float | None = None,
        step: str | None = None,
        rerun_failed: bool | None = None,
    ) -> JobRef[R]:
        """The same reference with trigger options set (``None`` keeps the current one)."""
        return with_options(
            self, priority=priority, not_before=not_before, not_after=not_after,
            dedup_id=dedup_id, queue=queue, on_duplicate=on_duplicate,
            wait_timeout=wait_timeout, step=step, rerun_failed=rerun_failed,
        )

    def renamed(self, name: str) -> JobRef[R]:
        """The same reference under the job's own name (it may have been given an alias)."""
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.name = name
        return clone


@dataclass(frozen=True, slots=True)
class StoredJob:
    """What a trigger by name needs, read from the job's stored row."""

    name: str
    queue: str
    priority: int
    max_attempts: int
    max_restarts: int
    version: datetime
    validator: Validator

    @property
    def target(self) -> tuple[str, str, int, int, int]:
        """Name, default queue, default priority, max attempts, max restarts."""
        return self.name, self.queue, self.priority, self.max_attempts, self.max_restarts


class JobDirectory:
    """Stored job definitions of one client, each validator compiled once and kept while the
    stored row stays the same (one primary-key read per trigger tells)."""

    def __init__(self, backend: Backend, max_args_bytes: int = DEFAULT_MAX_ARGS_BYTES) -> None:
        self._backend = backend
        self._max_args_bytes = max_args_bytes
        self._cache: dict[str, StoredJob] = {}

    async def lookup(self, name: str) -> StoredJob:
        """The stored job ``name`` (or an alias of it); raises ``UnknownJob``."""
        check_name(name, "job name", InvalidArguments)  # e.g. a NUL the database refuses
        if not isinstance(self._backend, DefinitionStore):
            raise UnknownJob(name, "this backend cannot look up jobs stored by workers")
        cached = self._cache.get(name)
        known = cached.version if cached is not None else None
        row = await self._backend.get_job_definition(name, known)
        if row is None:
            self._cache.pop(name, None)
            raise UnknownJob(
                name,
                "this client's app does not define it and no worker has stored it in the "
                "database yet (start a worker whose app defines it)",
            )
        if row.args_schema is None and cached is not None:
            return cached
        schema = row.args_schema or {}
        defaults = schema.get(EXTENSION) or {}
        stored = StoredJob(
            name=row.name,
            queue=row.queue,
            priority=int(defaults.get("priority", 0)),
            max_attempts=int(defaults.get("max_attempts", 1)),
            # stored by workers from before max_restarts: the default
            max_restarts=int(defaults.get("max_restarts", DEFAULT_MAX_RESTARTS)),
            version=row.updated_at,
            validator=compile_schema(row.name, schema),
        )
        self._cache[name] = stored
        return stored

    def encode(self, job: StoredJob, arguments: Mapping[str, Any]) -> str:
        """Validate JSON-shaped ``arguments`` against the stored schema; the text to store."""
        if not isinstance(arguments, Mapping):
            raise InvalidArguments(f"{job.name}: arguments must be a JSON object")
        plain = dict(arguments)
        check_shape(plain, job.name)  # NUL, NaN and nesting, as for a typed trigger
        validate(job.name, job.validator, plain)
        try:
            text = dumps(plain)
        except orjson.JSONEncodeError as exc:  # e.g. an integer beyond 64 bits, a surrogate
            raise InvalidArguments(f"{job.name}: {exc}") from None
        size = len(text.encode())
        if size > self._max_args_bytes:
            raise InvalidArguments(
                f"{job.name}: arguments are {size} bytes encoded, "
                f"above the limit of {self._max_args_bytes}"
            )
        return text


async def retry_run(backend: QueueStore, record: RunRecord) -> Enqueued:
    """Enqueue a new run of ``record``'s job with its arguments, queue, priority, attempts and
    dedup id; trigger ``retry`` and parent ``record`` link it to the run it repeats. The client
    wraps the result in a ``Run`` (this module sits below ``asyncjobs.client``)."""
    if not record.status.is_terminal:
        raise InvalidArguments(
            f"run {record.id} is {record.status.value}: only a finished run can be retried"
        )
    new_run = NewRun(
        job=record.job,
        queue=record.queue,
        args_json=dumps(record.args),
        priority=record.priority,
        not_before=None,
        not_after=None,
        dedup_id=record.dedup_id,
        max_attempts=record.max_attempts,
        max_restarts=record.max_restarts,
        parent_run_id=record.id,
        root_run_id=record.root_run_id or record.id,
        trigger=Trigger.RETRY,
        # the repeated run's key: a key function's result cannot be computed again here
        concurrency_key=record.concurrency_key,
    )

    async def insert(trace_context: str | None) -> list[Enqueued]:
        run = dataclasses.replace(new_run, trace_context=trace_context)
        return await backend.enqueue([run], reject_duplicates=True)

    if telemetry.TRACING:  # the new run joins the trace of whoever asked for it
        (enqueued,) = await telemetry.traced_trigger(
            record.job, record.queue, Trigger.RETRY, insert
        )
    else:
        (enqueued,) = await insert(None)
    return enqueued
