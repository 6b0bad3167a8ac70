"""Client: trigger runs, await their results, read and cancel them."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Generic, ParamSpec, cast, overload

import anyio
from typing_extensions import TypeVar  # PEP 696 defaults (typing has them from 3.13)

from asyncjobs import inputs, telemetry
from asyncjobs.activity import DEFAULT_WINDOW, MAX_WINDOW, Activity, WorkerState
from asyncjobs.app import App
from asyncjobs.backends.base import (
    Backend,
    Enqueued,
    JobState,
    NewRun,
    PruneResult,
    QueueState,
    SwitchKind,
)
from asyncjobs.codec import loads
from asyncjobs.context import current_context, open_client
from asyncjobs.errors import (
    ConcurrencyKeyError,
    ConfigurationError,
    InvalidArguments,
    RunCancelled,
    RunExpired,
    RunFailed,
    RunNotFound,
    RunTimeout,
    StepMismatch,
    UnknownJob,
)
from asyncjobs.explain import DEFAULT_WORKER_TTL, Explanation, explain
from asyncjobs.feed import DEFAULT_GRACE, NotifySource, TraceUpdate, resolve_root, trace_updates
from asyncjobs.jobs import Job, OnDuplicate, RunOptions
from asyncjobs.remote import JobDirectory, JobRef, retry_run
from asyncjobs.results import RunResult, run_result
from asyncjobs.rules import check_int, check_text
from asyncjobs.runs import EventCursor, RunEvent, RunPage, RunRecord, RunStatus, Trigger
from asyncjobs.schedules import ScheduleState
from asyncjobs.steps import step_keys
from asyncjobs.summary import JobSummary, LastSuccess
from asyncjobs.waiters import Outcome, ResultWaiter, Succeeded

#: what triggers accept as a job: the job itself, a reference by name, or its name
JobLike = Job[Any, Any] | JobRef[Any] | str

P = ParamSpec("P")
#: a result type; ``Any`` when nothing binds it, e.g. ``trigger_json("name", ...)``
R = TypeVar("R", default=Any)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Run(Generic[R]):
    """A handle on one run. ``created`` is False when a dedup id returned an existing run."""

    id: int
    #: the job, or a ``JobRef`` when it was triggered by name without its code
    job: Job[Any, R] | JobRef[R]
    created: bool
    client: Client

    def __repr__(self) -> str:
        return f"<Run {self.id} of {self.job.name!r}>"

    async def result(self, timeout: float | None = None) -> R:
        """Wait for the run to finish and return its typed result (see ``Client.run_async``)."""
        return await self.client.wait_result(self.id, self.job, timeout)

    async def wait(self, timeout: float | None = None) -> RunResult[R]:
        """Wait for the run to finish and return its outcome, raising nothing for a failed,
        cancelled or expired run (``RunTimeout`` when ``timeout`` passes first)."""
        return await self.client.wait_outcome(self.id, self.job, timeout)

    async def get(self) -> RunRecord:
        return await self.client.get_run(self.id)

    async def cancel(self, cascade: bool = False) -> None:
        await self.client.cancel(self.id, cascade=cascade)


class Client:
    """Talks to the queue. Open it with ``async with app.client(dsn) as client``, or, in a
    service without the jobs' code, ``async with Client(dsn) as client`` and trigger by name.

    ``Client(dsn)`` (or a ``Backend``) has an empty app of its own; ``Client(app, dsn)`` is
    ``app.client(dsn)``. ``backend_options`` go to the backend (see ``App.backend``).
    """

    def __init__(
        self,
        app: App | str | Backend,
        backend: str | Backend | None = None,
        *,
        poll_interval: float = 1.0,
        **backend_options: Any,
    ) -> None:
        if not isinstance(app, App):
            if backend is not None:
                raise ConfigurationError("give either Client(dsn) or Client(app, dsn)")
            backend = app
            app = App("client")
        if backend is None:
            raise ConfigurationError("Client(app, dsn) needs a DSN or a backend")
        self.app: App = app
        self.backend = app.backend(backend, **backend_options)
        self._waiter = ResultWaiter(self.backend, poll_interval)
        self._directory = JobDirectory(self.backend, app.max_args_bytes)
        #: threads a worker gives its plain ``def`` jobs (set by the worker that owns it)
        self.job_threads: int | None = None
        self._token: contextvars.Token[Client | None] | None = None

    async def __aenter__(self) -> Client:
        await self.backend.open()  # reference counted: a worker's client shares its backend
        await self._waiter.start()
        self._token = open_client.set(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._token is not None:
            # exited in another context than it was entered in: nothing to restore there
            with contextlib.suppress(ValueError):
                open_client.reset(self._token)
            self._token = None
        await self._waiter.stop()
        await self.backend.close()

    # ------------------------------------------------------------------ triggering

    @overload
    async def trigger_async(
        self, job: Job[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> Run[R]: ...

    @overload
    async def trigger_async(self, job: JobRef[R], /, **kwargs: Any) -> Run[R]: ...

    @overload
    async def trigger_async(self, job: str, /, *args: Any, **kwargs: Any) -> Run[Any]: ...

    async def trigger_async(self, job: JobLike, /, *args: Any, **kwargs: Any) -> Run[Any]:
        """Validate the arguments, enqueue a run and return its handle at once.

        ``job`` may be a name (or a ``JobRef``) the client's app does not define: the
        arguments, given by keyword, are then validated against the schema workers stored.
        Raises ``UnknownJob``, ``InvalidArguments`` (nothing written) or ``DuplicateRun``.
        """
        handle = self._handle(job)
        if isinstance(handle, JobRef):
            if args:
                raise InvalidArguments(
                    f"{handle.name}: give the arguments by keyword when triggering by name"
                )
            return await self._trigger_ref(handle, kwargs, Trigger.USER)
        arguments = handle.args.bind(args, kwargs)
        (run,) = await self._enqueue(handle, [handle.args.encode(arguments)], Trigger.USER)
        return run

    async def trigger_json(
        self,
        job: str | JobRef[R],
        arguments: Mapping[str, Any],
        trigger: Trigger = Trigger.API,
        *,
        priority: int | None = None,
        not_before: datetime | timedelta | None = None,
        not_after: datetime | timedelta | None = None,
        dedup_id: str | None = None,
        queue: str | None = None,
        on_duplicate: OnDuplicate | None = None,
    ) -> Run[R]:
        """Trigger by name with JSON-shaped arguments (HTTP API, other services), with the
        options of ``Job.options``. Works without the job's code (see ``trigger_async``)."""
        if isinstance(job, Job):  # the app's own (UnknownJob for another's), options kept
            job = JobRef(self.app.get_job(job).name).options(**_fields(job))
        elif not isinstance(job, str | JobRef):
            raise InvalidArguments(
                f"a job is given by name (a str) or as a JobRef, got {type(job).__name__}"
            )
        ref = JobRef(job) if isinstance(job, str) else job
        ref = ref.options(priority=priority, not_before=not_before, not_after=not_after,
                          dedup_id=dedup_id, queue=queue, on_duplicate=on_duplicate)
        return await self._trigger_ref(ref, arguments, trigger)

    async def run_json(
        self,
        job: str,
        arguments: Mapping[str, Any],
        *,
        result_type: type[R] | Any = Any,
        wait_timeout: float | None = None,
        priority: int | None = None,
        not_before: datetime | timedelta | None = None,
        not_after: datetime | timedelta | None = None,
        dedup_id: str | None = None,
        queue: str | None = None,
        on_duplicate: OnDuplicate | None = None,
    ) -> R:
        """Trigger by name and wait: the result as JSON values, or validated into
        ``result_type`` when given. Raises as ``run_async`` does."""
        ref: JobRef[R] = JobRef(job, result_type)
        run = await self.trigger_json(
            ref, arguments, Trigger.API, priority=priority, not_before=not_before,
            not_after=not_after, dedup_id=dedup_id, queue=queue, on_duplicate=on_duplicate,
        )
        return await run.result(wait_timeout)

    def _handle(self, job: JobLike) -> Job[Any, Any] | JobRef[Any]:
        """A name the app defines → its ``Job``; any other name → a ``JobRef``. A ``Job``
        must be the app's own (``UnknownJob`` for one of another ``App``: no worker of this
        app would run it); anything else is ``InvalidArguments``."""
        if isinstance(job, JobRef):
            return job
        if not isinstance(job, str):
            return self.app.get_job(job)
        try:
            return self.app.get_job(job)
        except UnknownJob:
            return JobRef(job)

    async def _trigger_ref(
        self, ref: JobRef[R], arguments: Mapping[str, Any], trigger: Trigger
    ) -> Run[R]:
        """Validate with the job's code when the app has it, else with the stored schema."""
        if not isinstance(arguments, Mapping):
            raise InvalidArguments(f"{ref.name}: arguments must be a JSON object")
        try:
            known = self.app.get_job(ref.name)
        except UnknownJob:
            stored = await self._directory.lookup(ref.name)
            encoded = self._directory.encode(stored, arguments)
            target = stored.target
            (run,) = await self._enqueue_as(ref.renamed(stored.name), target, [encoded], trigger)
            return run
        encoded = known.args.encode_json(arguments)
        target = (known.name, known.queue, known.priority, known.retry.max_attempts,
                  known.max_restarts)
        # the app has the code: an untyped reference gets the job's own typed results
        handle: Job[Any, Any] | JobRef[Any] = (
            ref.renamed(known.name) if ref.typed else known.options(**_fields(ref))
        )
        (run,) = await self._enqueue_as(handle, target, [encoded], trigger)
        return run

    async def trigger_many(
        self, job: Job[P, R] | JobRef[R] | str, arguments: Iterable[Mapping[str, Any]]
    ) -> list[Run[R]]:
        """Enqueue many runs of one job in one round trip (all validated first; by name
        without the job's code, against the stored schema).

        A bad item raises ``InvalidArguments`` naming its index, and nothing is written.
        Several runs cannot share one ``dedup_id``.
        """
        handle = self._handle(job)
        if isinstance(handle, JobRef):
            stored = await self._directory.lookup(handle.name)
            encoded = inputs.encode_many(
                stored.name, arguments, lambda a: self._directory.encode(stored, a)
            )
            target = stored.target
            return await self._enqueue_as(handle.renamed(stored.name), target, encoded,
                                          Trigger.USER)
        job_args = handle.args
        encoded = inputs.encode_many(
            handle.name, arguments, lambda a: job_args.encode(job_args.bind((), a)),
            job_args.encode_many,
        )
        return await self._enqueue(handle, encoded, Trigger.USER)

    @overload
    async def run_async(self, job: Job[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R: ...

    @overload
    async def run_async(self, job: JobRef[R], /, **kwargs: Any) -> R: ...

    @overload
    async def run_async(self, job: str, /, *args: Any, **kwargs: Any) -> Any: ...

    async def run_async(self, job: JobLike, /, *args: Any, **kwargs: Any) -> Any:
        """Trigger a run and wait for its typed result (by name without the job's code: its
        JSON result, or typed with ``JobRef(name, type)``).

        Raises ``RunFailed`` (with the remote error type, message and traceback),
        ``RunCancelled``, ``RunExpired``, or ``RunTimeout`` when the job's
        ``options(wait_timeout=...)`` passes first. Inside a job, the worker slot is given
        back while waiting, so a parent never starves its own children.
        """
        handle = self._handle(job)
        # expected before the trigger: the run's notification then carries all the wait needs
        ticket = self._waiter.expect()
        try:
            run = await self.trigger_async(handle, *args, **kwargs)
        except BaseException:
            self._waiter.forget(ticket)
            raise
        return await self.wait_result(
            run.id, run.job, handle.default_options.wait_timeout, ticket=ticket
        )

    async def _enqueue(
        self, job: Job[Any, R], encoded: list[str], trigger: Trigger
    ) -> list[Run[R]]:
        target = (job.name, job.queue, job.priority, job.retry.max_attempts, job.max_restarts)
        return await self._enqueue_as(job, target, encoded, trigger)

    async def _enqueue_as(
        self,
        job: Job[Any, R] | JobRef[R],
        target: tuple[str, str, int, int, int],
        encoded: list[str],
        trigger: Trigger,
    ) -> list[Run[R]]:
        """Insert runs of the job named in ``target`` (name, default queue, default priority,
        max attempts, max restarts) with ``job``'s trigger options."""
        name, default_queue, default_priority, max_attempts, max_restarts = target
        options = job.default_options
        queue = options.queue or default_queue
        priority = default_priority if options.priority is None else options.priority
        parent = current_context.get()
        if parent is not None and trigger is Trigger.USER:
            trigger = Trigger.CHILD
        not_before, not_after = options.not_before, options.not_after
        if isinstance(not_before, timedelta) or isinstance(not_after, timedelta):
            # a test clock (asyncjobs.testing.TestClock) moves offsets too
            now = self.backend.clock_now() or datetime.now(UTC)
            not_before = _absolute(not_before, now)
            not_after = _absolute(not_after, now)
        if not_before and not_after and not_after <= not_before:
            raise InvalidArguments(f"{name}: not_after is not later than not_before")
        if options.dedup_id is not None and len(encoded) > 1:
            raise InvalidArguments(f"{name}: one dedup_id cannot be shared by several runs")
        known = self.app.jobs.get(name)
        # the database reads the per-key limit's key from the arguments by this field, or
        # the job's key function computes it here, before anything is written
        key_field = known.key_limit.field if known and known.key_limit else None
        keys = _computed_keys(known, encoded)
        steps: list[str | None] = [None] * len(encoded)
        if parent is not None:
            # a child is identified by its step: a retried parent gets the same child back
            first = parent._take_positions(len(encoded)) if options.step is None else 0
            steps = list(step_keys(options.step, first, len(encoded)))
        new_runs: list[NewRun] = []

        def insert(trace_context: str | None) -> Awaitable[list[Enqueued]]:
            new_runs[:] = [
                NewRun(
                    job=name,
                    queue=queue,
                    args_json=args_json,
                    priority=priority,
                    not_before=not_before,
                    not_after=not_after,
                    dedup_id=options.dedup_id,
                    max_attempts=max_attempts,
                    max_restarts=max_restarts,
                    parent_run_id=parent.run_id if parent else None,
                    root_run_id=parent.root_run_id if parent else None,
                    trigger=trigger,
                    trace_context=trace_context,
                    step_key=step,
                    key_field=key_field,
                    concurrency_key=key,
                )
                for args_json, step, key in zip(encoded, steps, keys, strict=True)
            ]
            return self.backend.enqueue(new_runs, reject_duplicates=options.on_duplicate == "raise")

        if telemetry.TRACING:  # a trigger span, its context stored with the runs
            enqueued = await telemetry.traced_trigger(name, queue, trigger, insert)
        else:
            enqueued = await insert(None)
        if parent is not None:
            enqueued = await self._reuse_steps(parent.run_id, new_runs, enqueued, options)
        return [Run(e.run_id, job, e.created, self) for e in enqueued]

    async def _reuse_steps(
        self, parent_id: int, runs: list[NewRun], enqueued: list[Enqueued], options: RunOptions
    ) -> list[Enqueued]:
        """Children found at their steps (an earlier attempt of the parent triggered them):
        the same job, or ``StepMismatch``; with ``rerun_failed``, a child that ended without
        success is replaced by a new one at its step."""
        result = []
        for run, found in zip(runs, enqueued, strict=True):
            if found.step_job is not None and found.step_job != run.job:
                raise StepMismatch(parent_id, run.step_key or "", found.step_job, run.job)
            if (
                found.step_job is not None
                and options.rerun_failed
                and await self.backend.release_step(parent_id, run.step_key or "")
            ):
                (found,) = await self.backend.enqueue([run])
            result.append(found)
        return result

    # ------------------------------------------------------------------ waiting

    async def wait_result(
        self,
        run_id: int,
        job: Job[Any, R] | JobRef[R],
        timeout: float | None = None,
        *,
        ticket: int | None = None,
    ) -> R:
        """The run's typed result, or its ``RunError``; ``ticket``: see ``ResultWaiter``."""
        outcome = await self._await(run_id, timeout, quick=True, ticket=ticket)
        if isinstance(outcome, Succeeded):  # from the notification: no query
            return job.result.decode(outcome.result)  # type: ignore[no-any-return]
        if outcome.status is RunStatus.SUCCEEDED:
            return job.result.decode(outcome.result)  # type: ignore[no-any-return]
        raise _run_error(outcome)

    async def wait_outcome(
        self,
        run_id: int,
        job: Job[Any, R] | JobRef[R] | None = None,
        timeout: float | None = None,
    ) -> RunResult[R]:
        """Wait until the run is terminal; its ``RunResult`` (value decoded by ``job``'s
        result type, JSON values without one). Raises only ``RunTimeout``/``RunNotFound``."""
        record = await self.wait(run_id, timeout)
        decode = job.result.decode if job is not None else _plain
        return run_result(record, decode)

    async def wait(self, run_id: int, timeout: float | None = None) -> RunRecord:
        """Wait until the run is terminal and return it (no error for failed runs)."""
        # not quick: only quick waits are handed a Succeeded
        return cast(RunRecord, await self._await(run_id, timeout, quick=False))

    async def _await(
        self, run_id: int, timeout: float | None, *, quick: bool, ticket: int | None = None
    ) -> Outcome:
        try:
            run_id = inputs.run_id(run_id)
            timeout = inputs.seconds(timeout, "timeout")
            context = current_context.get()
            wait = self._waiter.outcome
            with anyio.move_on_after(timeout) as scope:
                if context is not None:
                    async with context.waiting():
                        return await wait(run_id, quick=quick, ticket=ticket)
                return await wait(run_id, quick=quick, ticket=ticket)
        finally:
            if ticket is not None:  # used by now, or never will be
                self._waiter.forget(ticket)
        assert scope.cancelled_caught
        raise RunTimeout(f"run {run_id} did not finish within {timeout} s", run_id)

    # ------------------------------------------------------------------ reading

    async def get_run(self, run_id: int) -> RunRecord:
        """One run; raises ``RunNotFound``."""
        record = await self.backend.get_run(inputs.run_id(run_id))
        if record is None:
            raise RunNotFound(run_id)
        return record

    async def get_runs(
        self,
        *,
        job: str | None = None,
        status: RunStatus | str | None = None,
        parent_run_id: int | None = None,
        root_run_id: int | None = None,
        trigger: Trigger | str | None = None,
        limit: int = 100,
        cursor: int | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        roots_only: bool = False,
    ) -> RunPage:
        """Runs newest first, filtered; pass ``page.next_cursor`` back for the next page.

        ``created_after`` is inclusive, ``created_before`` exclusive; ``roots_only`` leaves
        out child runs (those with a parent). A filter it cannot use (an unknown status, a NUL
        in ``job``, a limit outside 1..1000) raises ``InvalidArguments``.
        """
        where = inputs.run_filter(
            job=job,
            status=status,
            parent_run_id=parent_run_id,
            root_run_id=root_run_id,
            trigger=trigger,
            limit=limit,
            cursor=cursor,
            created_after=created_after,
            created_before=created_before,
            roots_only=roots_only,
        )
        runs = await self.backend.get_runs(where)
        return RunPage(runs, runs[-1].id if len(runs) == limit else None)

    async def get_events(self, run_id: int, after_id: int = 0, limit: int = 1000) -> list[RunEvent]:
        """Progress, log and state-change events of one run, oldest first (``limit`` at most
        1000); an id no run can have gives no events."""
        after_id, limit = inputs.event_window(after_id, limit)
        try:
            run_id = inputs.run_id(run_id)
        except RunNotFound:
            return []
        return await self.backend.get_events(run_id, after_id, limit)

    async def root_of(self, run_id: int) -> int:
        """The id of the root of the trace tree ``run_id`` belongs to. Raises ``RunNotFound``."""
        return await resolve_root(self.backend, inputs.run_id(run_id))

    async def get_tree(self, run_id: int, *, limit: int = 5000) -> tuple[int, list[RunRecord]]:
        """The trace tree ``run_id`` belongs to: its root's id and its first ``limit`` runs
        (at most 10,000), oldest first, each with ``version`` set. Raises ``RunNotFound``."""
        limit = check_int(limit, "limit", InvalidArguments, 1, 10_000)
        root = await self.root_of(run_id)
        return root, await self.backend.get_tree(root, limit)

    async def events_position(self, grace: float = DEFAULT_GRACE) -> EventCursor:
        """The event feed's position now: ``watch``-style readers that start from a listing
        resume from here with no gap (the dashboard's run table does)."""
        return await self.backend.feed_position(grace)

    # ------------------------------------------------------------------ watching

    async def watch(
        self,
        run_id: int,
        *,
        after: EventCursor | str | None = None,
        poll_interval: float = 1.0,
        grace: float = DEFAULT_GRACE,
    ) -> AsyncIterator[TraceUpdate]:
        """Follow the trace tree of a run live, straight from the database.

        Yields what the dashboard streams over SSE: a ``snapshot`` of the tree under the
        run's root (unless resuming ``after`` a cursor), then ``events`` updates as they
        become final, then ``end`` once every run has finished. ``update.cursor`` (or its
        ``str``) resumes with no gap and no duplicate. Raises ``RunNotFound``::

            async for update in client.watch(run.id):
                for event in update.events:
                    print(event.run_id, event.kind, event.data)
        """
        root = await resolve_root(self.backend, inputs.run_id(run_id))
        cursor = _cursor(after)
        inputs.seconds(poll_interval, "poll_interval", allow_none=False, bounded=True)
        async with (
            NotifySource(self.backend, poll_interval) as source,
            contextlib.aclosing(
                trace_updates(self.backend, root, source, after=cursor, grace=grace)
            ) as updates,
        ):
            async for update in updates:
                yield update

    async def prune(self, older_than: timedelta, *, batch_size: int = 500) -> PruneResult:
        """Retention: delete the trace trees (runs and their events) whose runs all finished
        more than ``older_than`` ago, ``batch_size`` trees per statement. Trees with an
        active run are kept whole. Returns what was deleted."""
        inputs.duration(older_than, "older_than", bounded=False)  # a worker's retention
        check_int(batch_size, "batch_size", InvalidArguments, 1, 100_000)
        try:
            cutoff = (self.backend.clock_now() or datetime.now(UTC)) - older_than
        except OverflowError:  # before year 1: nothing finished that long ago
            return PruneResult()
        total = PruneResult()
        while True:
            done = await self.backend.prune(cutoff, batch_size)
            total = PruneResult(
                total.trees + done.trees, total.runs + done.runs, total.events + done.events
            )
            if done.trees < batch_size:
                return total

    async def list_definitions(self) -> tuple[list[QueueState], list[JobState]]:
        """Queues and jobs as stored by workers, with their ``enabled`` switches."""
        return await self.backend.list_definitions()

    # ------------------------------------------------------------------ control

    async def cancel(self, run_id: int, *, cascade: bool = False) -> list[tuple[int, RunStatus]]:
        """Cancel a run: pending → cancelled now; running → its worker cancels the task.

        With ``cascade=True`` every descendant run is cancelled too. Returns the affected
        runs and their status right after the call; a finished run is left as it is.
        """
        run_id = inputs.run_id(run_id)
        if not isinstance(cascade, bool):
            raise InvalidArguments(f"cascade must be True or False, got {cascade!r:.60}")
        changed = await self.backend.cancel(run_id, cascade)
        if not changed and await self.backend.get_run(run_id) is None:
            raise RunNotFound(run_id)
        return changed

    async def retry(self, run_id: int) -> Run[Any]:
        """Trigger a new run of a finished run's job with the same arguments (the operator's
        "run it again"). The new run is linked to the old one: trigger ``retry``, its parent
        is the old run, so it shows in the old run's trace tree. Its arguments are checked
        again by the worker. Raises ``RunNotFound``, or ``InvalidArguments`` for a run that
        has not finished."""
        record = await self.get_run(run_id)
        enqueued = await retry_run(self.backend, record)
        return Run(enqueued.run_id, self._handle(record.job), enqueued.created, self)

    async def set_job_enabled(self, name: str, enabled: bool) -> None:
        """Disable (or enable again) a job cluster-wide: disabled jobs are not claimed."""
        if not await self.backend.set_enabled("job", self.app.get_job(name).name, enabled):
            raise ConfigurationError(f"job {name!r} is not registered in the database yet")

    async def set_queue_enabled(self, name: str, enabled: bool) -> None:
        await self.set_enabled("queue", name, enabled)

    # ------------------------------------------------------------------ schedules and insight

    async def set_schedule_enabled(self, name: str, enabled: bool) -> None:
        """Disable (or enable again) a schedule cluster-wide. A disabled schedule fires
        nothing; enabling it starts its timing from now, without catching up."""
        await self.set_enabled("schedule", name, enabled)

    async def set_enabled(self, kind: SwitchKind, name: str, enabled: bool) -> None:
        """Switch a ``"job"``, ``"queue"`` or ``"schedule"`` by name (the CLI's
        ``asyncjobs enable|disable``). A job name may be an alias of a job this client's app
        knows; unknown names raise ``ConfigurationError``."""
        if not isinstance(kind, str) or kind not in ("job", "queue", "schedule"):
            raise ConfigurationError(f"cannot enable or disable a {kind!r}")
        check_text(name, f"{kind} name", InvalidArguments)
        if not isinstance(enabled, bool):
            raise InvalidArguments(f"enabled must be True or False, got {enabled!r:.60}")
        if kind == "job":
            with contextlib.suppress(UnknownJob):
                name = self.app.get_job(name).name
        if not await self.backend.set_enabled(kind, name, enabled):
            raise ConfigurationError(f"{kind} {name!r} is not registered in the database yet")

    async def get_schedules(self) -> list[ScheduleState]:
        """Every stored schedule with its next and last fire time and its switches."""
        _, states = await self.backend.get_schedules(None)
        return states

    async def explain(
        self, run_id: int, *, worker_ttl: float = DEFAULT_WORKER_TTL
    ) -> Explanation:
        """Why a run is where it is: for a pending run, each concrete reason it waits
        (``not_before`` ahead, retry backoff, job or queue disabled, a full job or queue limit
        and the runs holding it — parents waiting on children included —, no live worker,
        past its deadline), or that nothing holds it back; for others, their state.

        A worker counts as live if its heartbeat is at most ``worker_ttl`` seconds old.
        Raises ``RunNotFound``.
        """
        run_id = inputs.run_id(run_id)
        inputs.seconds(worker_ttl, "worker_ttl", allow_none=False, allow_zero=True, bounded=True)
        facts = await self.backend.run_facts(run_id, worker_ttl)
        if facts is None:
            raise RunNotFound(run_id)
        return explain(facts)

    async def job_summary(
        self, job: str | Job[Any, Any], window: timedelta = timedelta(hours=24)
    ) -> JobSummary:
        """Runs of ``job`` created within ``window``: counts by status, p50/p95 duration of
        those finished, and the last successful run ever. Runs stored under the job's
        aliases count as its own."""
        names = self._job_names(job)
        inputs.duration(window, "window")
        return await self.backend.job_summary(names, window.total_seconds())

    async def get_workers(self, *, worker_ttl: float = DEFAULT_WORKER_TTL) -> list[WorkerState]:
        """Every registered worker: its queues, concurrency, the runs it holds now and its last
        heartbeat; ``alive`` when that heartbeat is at most ``worker_ttl`` seconds old (by the
        database clock). A worker silent for longer is dropped by the next sweep."""
        if worker_ttl <= 0:
            raise InvalidArguments("worker_ttl must be positive")
        return await self.backend.get_workers(worker_ttl)

    async def activity(self, window: timedelta = DEFAULT_WINDOW) -> Activity:
        """What each queue and job holds now (pending, ready, running, limit, how long the
        oldest ready run has waited: the ``/metrics`` gauges) and the runs that finished
        within ``window`` (at most a day), per minute and job by final status, with each
        job's p50/p95 duration over the window."""
        if not timedelta(minutes=1) <= window <= MAX_WINDOW:
            raise InvalidArguments("window must be between one minute and one day")
        return await self.backend.activity(window.total_seconds())

    async def last_success(self, job: str | Job[Any, Any]) -> LastSuccess | None:
        """The most recently finished successful run of ``job`` (time, id, duration)."""
        return (await self.job_summary(job, timedelta(0))).last_success

    def _job_names(self, job: str | Job[Any, Any]) -> list[str]:
        if isinstance(job, Job):
            return [job.name, *job.aliases]
        check_text(job, "job", InvalidArguments)
        try:
            known = self.app.get_job(job)
        except UnknownJob:
            return [job]  # e.g. the CLI, whose app knows no jobs
        return [known.name, *known.aliases]


def _computed_keys(job: Job[Any, Any] | None, encoded: list[str]) -> list[str | None]:
    """The key of each run from its stored arguments, when the job's code computes it
    (``KeyLimit.function``); ``ConcurrencyKeyError`` naming the item of a batch."""
    if job is None or job.key_limit is None or job.key_limit.function is None:
        return [None] * len(encoded)
    keys: list[str | None] = []
    for index, args_json in enumerate(encoded):
        try:
            keys.append(job.concurrency_key_of(loads(args_json)))
        except ConcurrencyKeyError as exc:
            if len(encoded) == 1:
                raise
            raise ConcurrencyKeyError(f"item {index}: {exc}") from exc.__cause__
    return keys


def _absolute(value: datetime | timedelta | None, now: datetime) -> datetime | None:
    if isinstance(value, timedelta):
        return now + value
    return value


def _cursor(after: EventCursor | str | None) -> EventCursor | None:
    if after is None or isinstance(after, EventCursor):
        return after
    if not isinstance(after, str):
        raise InvalidArguments(f"after must be an event cursor, got {type(after).__name__}")
    try:
        return EventCursor.parse(after)
    except ValueError as exc:
        raise InvalidArguments(str(exc)) from None


def _fields(ref: JobRef[Any] | Job[Any, Any]) -> dict[str, Any]:
    options = ref.default_options
    return {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}


def _plain(value: Any) -> Any:
    return value


def _run_error(record: RunRecord) -> Exception:
    if record.status is RunStatus.FAILED:
        error = record.error or {}
        return RunFailed(
            record.id,
            str(error.get("type", "Error")),
            str(error.get("message", "")),
            str(error.get("traceback", "")),
        )
    if record.status is RunStatus.CANCELLED:
        return RunCancelled(f"run {record.id} was cancelled", record.id)
    return RunExpired(f"run {record.id} expired before it started", record.id)
