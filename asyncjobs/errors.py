"""The exceptions asyncjobs raises.

Every error derives from :class:`AsyncJobsError`, so one ``except`` catches them all::

    AsyncJobsError
    ├── ConfigurationError        a job, queue or option is declared wrongly
    ├── UnknownJob                no job of that name is registered (or a Job of another App)
    ├── InvalidArguments          arguments fail validation (types, size, depth, NaN, NUL),
    │   │                         or a read's filter or limit is unusable
    │   └── ConcurrencyKeyError   a run of a per-key limited job cannot get its key
    ├── DuplicateRun              a pending/running run already holds the dedup id
    ├── RunNotFound               no run with that id
    ├── SchemaMismatch            the database schema is older or newer than this code
    ├── DatabaseError             the database failed in a way we did not expect
    │   ├── DatabaseUnavailable   the connection is gone (server down, network)
    │   └── DatabaseBusy          a transient refusal (deadlock, lock or statement timeout)
    ├── EmbeddedPostgresError     the private demo/test server could not start
    ├── RunError                  run_async() could not return a result
    │   ├── RunFailed             the job raised (remote type, message, traceback)
    │   ├── RunCancelled          the run was cancelled
    │   ├── RunExpired            the run passed its not_after before it started
    │   └── RunTimeout            the caller's wait timed out (the run goes on)
    ├── JobTimeout                raised inside a job that exceeded its timeout
    └── ResultNotStorable         a run's outcome could not be stored as written (run failed)

Driver (asyncpg) exceptions are translated in exactly one place,
``asyncjobs.backends.postgres.translate_errors``; the original is on ``__cause__``.
"""

from __future__ import annotations

from typing import Any

__all__ = (
    "AsyncJobsError",
    "ConcurrencyKeyError",
    "ConfigurationError",
    "DatabaseBusy",
    "DatabaseError",
    "DatabaseUnavailable",
    "DuplicateRun",
    "EmbeddedPostgresError",
    "InvalidArguments",
    "JobTimeout",
    "ResultNotStorable",
    "RunCancelled",
    "RunError",
    "RunExpired",
    "RunFailed",
    "RunNotFound",
    "RunTimeout",
    "SchemaMismatch",
    "UnknownJob",
)


class AsyncJobsError(Exception):
    """Base class of every asyncjobs error. With no message, the docstring is the message."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip().splitlines()[0])


class ConfigurationError(AsyncJobsError):
    """A job, queue or option is declared wrongly.

    Raised by ``App.job`` / ``App.queue`` (duplicate names, bad limits) and ``Job.options``.
    """


class UnknownJob(AsyncJobsError):
    """No job of that name is registered.

    Raised by ``Client.trigger_async`` when triggering by name: the client's app does not
    define it and no worker has stored it in the database (``detail`` says which); and when
    given a ``Job`` object that is not the one registered in the client's app (a job of
    another ``App``, ``message`` says so).
    """

    def __init__(self, name: str, detail: str | None = None, *, message: str | None = None) -> None:
        default = f"no job named {name!r} is registered"
        super().__init__(message or (f"{default}: {detail}" if detail else default))
        self.name = name


class InvalidArguments(AsyncJobsError):
    """The arguments of a run, or of a call, failed validation; no row was written.

    Raised by ``Client.trigger_async`` / ``trigger_json`` / ``trigger_many`` before anything
    reaches the database (the message names the job and the argument), and by the reads
    (``get_runs``, ``get_events``...) for a filter or limit they cannot use. ``errors``
    holds structured entries (``loc``, ``msg``, ``type``), pydantic's when the failure came
    from type validation.
    """

    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


class ConcurrencyKeyError(InvalidArguments):
    """A run of a job with a per-key limit could not get its key; no row was written.

    Raised by the triggering client when the job's ``concurrency_key`` function raised,
    returned something other than a str, or a str that is longer than 200 characters or
    cannot be stored (a NUL, a lone surrogate); and when a run of a job whose key is computed
    by a function comes without a key — a trigger by name from a client that does not have
    the job's code: the database refuses it rather than let it escape the limit.
    """


class DuplicateRun(AsyncJobsError):
    """A pending or running run of this job already holds the same ``dedup_id``.

    Raised by ``Client.trigger_async``; ``existing_run_id`` is the run that holds it.
    Pass ``on_duplicate="return"`` to get that run back instead.
    """

    def __init__(self, job: str, dedup_id: str, existing_run_id: int) -> None:
        super().__init__(
            f"job {job!r} already has an active run {existing_run_id} with dedup_id {dedup_id!r}"
        )
        self.job = job
        self.dedup_id = dedup_id
        self.existing_run_id = existing_run_id


class StepMismatch(AsyncJobsError):
    """A parent's step already holds a child of another job: the parent's code changed
    between its attempts (or two calls share an explicit ``step``), so reusing that child
    would hand back the wrong result. Raised inside the parent, which then fails as any error
    makes it fail; name the step explicitly (``job.options(step=...)``) to keep it stable.
    """

    def __init__(self, parent_run_id: int, step: str, stored_job: str, requested_job: str) -> None:
        super().__init__(
            f"run {parent_run_id}: step {step!r} already triggered job {stored_job!r} "
            f"(child of an earlier attempt), not {requested_job!r}"
        )
        self.parent_run_id = parent_run_id
        self.step = step
        self.stored_job = stored_job
        self.requested_job = requested_job


class RunNotFound(AsyncJobsError):
    """No run with that id exists (an id beyond ``bigint`` included).

    Raised by ``Client.get_run``, ``cancel``, ``explain`` and ``watch``."""

    def __init__(self, run_id: int) -> None:
        super().__init__(f"no run with id {run_id}")
        self.run_id = run_id


class SchemaMismatch(AsyncJobsError):
    """The database schema version does not match this code; run ``asyncjobs migrate``.

    Raised when a client or worker starts against a stale or newer schema.
    """


class DatabaseError(AsyncJobsError):
    """The database failed in a way asyncjobs did not expect; the driver error is ``__cause__``."""


class DatabaseUnavailable(DatabaseError):
    """The database cannot be reached (server down or restarting, connection lost)."""


class DatabaseBusy(DatabaseError):
    """The database refused a statement for the moment, not for what it holds: a deadlock, a
    serialization failure, a lock or statement timeout. The same statement may succeed when
    tried again; workers retry their batched writes in order instead of blaming an item."""


class EmbeddedPostgresError(AsyncJobsError):
    """The embedded PostgreSQL server could not be started or stopped."""


class RunError(AsyncJobsError):
    """``run_async`` could not return a result. ``run_id`` names the run."""

    def __init__(self, message: str, run_id: int) -> None:
        super().__init__(message)
        self.run_id = run_id


class RunFailed(RunError):
    """The job raised. ``error_type``, ``error_message`` and ``traceback`` come from the worker."""

    def __init__(self, run_id: int, error_type: str, error_message: str, traceback: str) -> None:
        super().__init__(f"run {run_id} failed: {error_type}: {error_message}", run_id)
        self.error_type = error_type
        self.error_message = error_message
        self.traceback = traceback


class RunCancelled(RunError):
    """The run was cancelled before it finished."""


class RunExpired(RunError):
    """The run passed its ``not_after`` deadline before a worker started it."""


class RunTimeout(RunError):
    """``run_async`` gave up waiting; the run itself goes on and can be awaited again."""


class JobTimeout(AsyncJobsError):
    """A job ran longer than its ``timeout``; the attempt fails and the retry policy applies."""


class ResultNotStorable(AsyncJobsError):
    """A run's outcome could not be stored as written; the run failed with this error instead.

    Recorded (not raised to callers) when a job returns a value that is not JSON, or when the
    database refuses an attempt's completion on its own: the message says why, and quotes the
    original outcome. Never retried: the same value would be refused again.
    """
