"""App: the registry of jobs, queues, schedules and hooks.

Clients, workers and the dashboard are built FROM an app, so this module imports none of them
(they import it). ``app.client(dsn)``, ``app.worker(dsn)`` and ``app.asgi(dsn)`` call the
``Builders`` that the composition root, ``asyncjobs/__init__.py``, wires in once at import
time; see there for the layers the import contract in ``pyproject.toml`` enforces.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Coroutine, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar, overload

from asyncjobs.backends.base import Backend, JobDefinition, QueueDefinition
from asyncjobs.codec import DEFAULT_MAX_ARGS_BYTES, loads
from asyncjobs.context import Context
from asyncjobs.errors import ConfigurationError, InvalidArguments, UnknownJob
from asyncjobs.hooks import (
    FailedEvent,
    FailedHook,
    Hooks,
    RunHook,
    RunHookEvent,
    WorkerEvent,
    WorkerHook,
)
from asyncjobs.jobs import DEFAULT_MAX_RESTARTS, DEFAULT_QUEUE, Job, KeyFunction, KeyLimit
from asyncjobs.rates import RateLimit, RateLimitSpec
from asyncjobs.remote import stored_schema
from asyncjobs.retry import RetryOn, RetryPolicy
from asyncjobs.rules import check_name
from asyncjobs.schedules import (
    DEFAULT_MISFIRE,
    MisfirePolicy,
    ScheduleDefinition,
    define_schedule,
)

if TYPE_CHECKING:  # type-only: the runtime import graph has no edge app -> client/worker/web
    from asyncjobs.client import Client
    from asyncjobs.web import Dashboard
    from asyncjobs.worker import Worker

P = ParamSpec("P")
R = TypeVar("R")

# Coroutine, not Awaitable: an ``async def`` is what runs as one (``inspect.iscoroutinefunction``),
# and with Awaitable a job taking an ``Any`` parameter matched the plain-def overloads as well,
# so mypy typed it ``Job[Any, Any]``
JobFunction = Callable[P, Coroutine[Any, Any, R]]
ContextJobFunction = Callable[Concatenate[Context, P], Coroutine[Any, Any, R]]
#: plain ``def`` jobs run in a worker thread (see ``asyncjobs.threads``)
SyncJobFunction = Callable[P, R]
SyncContextJobFunction = Callable[Concatenate[Context, P], R]


@dataclasses.dataclass(frozen=True)
class Builders:
    """What builds the objects that run an app; the layers above ``App`` provide them."""

    #: ``Client(app, backend)``
    client: Callable[[App, Backend], Client]
    #: ``Worker(app, dsn, **options)``
    worker: Callable[..., Worker]
    #: ``Dashboard(app, dsn, DashboardSettings(**settings))``
    dashboard: Callable[..., Dashboard]


_builders: Builders | None = None


def wire(builders: Builders) -> None:
    """Called once by ``asyncjobs/__init__.py``, which Python runs before any submodule."""
    global _builders
    _builders = builders


def _wired() -> Builders:
    if _builders is None:  # only if the composition root was bypassed (it cannot be by import)
        raise RuntimeError("asyncjobs.app.wire() was not called: import asyncjobs first")
    return _builders


class App:
    """Collects ``@app.job`` functions and queue limits; opens clients and workers.

    ::

        app = App("shop")
        app.queue("emails", max_concurrency=5)

        @app.job(queue="emails", max_concurrency=2, retries=3, timeout=30)
        async def send_receipt(order_id: int, email: str) -> str: ...
    """

    def __init__(self, name: str, *, max_args_bytes: int = DEFAULT_MAX_ARGS_BYTES) -> None:
        self.name = name
        self.max_args_bytes = max_args_bytes
        self.jobs: dict[str, Job[Any, Any]] = {}
        self._aliases: dict[str, str] = {}
        self.queues: dict[str, QueueDefinition] = {
            DEFAULT_QUEUE: QueueDefinition(DEFAULT_QUEUE, None)
        }
        #: schedules by name (``@app.job(schedule=...)``, ``app.schedule``)
        self.schedules: dict[str, ScheduleDefinition] = {}
        #: lifecycle hooks (``@app.on``)
        self.hooks = Hooks()

    def __repr__(self) -> str:
        return f"<App {self.name!r} jobs={sorted(self.jobs)}>"

    def queue(
        self,
        name: str,
        *,
        max_concurrency: int | None = None,
        rate_limit: RateLimitSpec | None = None,
    ) -> None:
        """Declare a queue; ``max_concurrency`` caps its running runs across all workers and
        ``rate_limit`` its starts per period (``"100/m"``, see ``asyncjobs.rates``)."""
        check_name(name, "queue name", ConfigurationError)
        if max_concurrency is not None and max_concurrency < 1:
            raise ConfigurationError(f"queue {name!r}: max_concurrency must be at least 1")
        rate = RateLimit.parse(rate_limit, f"queue {name!r}")
        self.queues[name] = QueueDefinition(name, max_concurrency, rate)

    @overload
    def job(self, fn: ContextJobFunction[P, R], /) -> Job[P, R]: ...

    @overload
    def job(self, fn: JobFunction[P, R], /) -> Job[P, R]: ...

    @overload
    def job(self, fn: SyncContextJobFunction[P, R], /) -> Job[P, R]: ...

    @overload
    def job(self, fn: SyncJobFunction[P, R], /) -> Job[P, R]: ...

    @overload
    def job(
        self,
        *,
        name: str | None = None,
        queue: str = DEFAULT_QUEUE,
        max_concurrency: int | None = None,
        concurrency_key: str | KeyFunction | None = None,
        key_concurrency: int | None = None,
        key_rate_limit: RateLimitSpec | None = None,
        rate_limit: RateLimitSpec | None = None,
        priority: int = 0,
        retries: int = 0,
        max_restarts: int = DEFAULT_MAX_RESTARTS,
        retry_on: RetryOn = (Exception,),
        backoff_base: float = 1.0,
        backoff_cap: float = 300.0,
        timeout: float | None = None,
        aliases: Sequence[str] = (),
        redact: Sequence[str] = (),
        schedule: str | None = None,
        every: timedelta | None = None,
        initial_delay: timedelta | None = None,
        timezone: str | None = None,
        schedule_args: Mapping[str, Any] | None = None,
        misfire: MisfirePolicy = DEFAULT_MISFIRE,
        all_nodes: bool = False,
    ) -> _JobDecorator: ...

    def job(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        name: str | None = None,
        queue: str = DEFAULT_QUEUE,
        max_concurrency: int | None = None,
        concurrency_key: str | KeyFunction | None = None,
        key_concurrency: int | None = None,
        key_rate_limit: RateLimitSpec | None = None,
        rate_limit: RateLimitSpec | None = None,
        priority: int = 0,
        retries: int = 0,
        max_restarts: int = DEFAULT_MAX_RESTARTS,
        retry_on: RetryOn = (Exception,),
        backoff_base: float = 1.0,
        backoff_cap: float = 300.0,
        timeout: float | None = None,
        aliases: Sequence[str] = (),
        redact: Sequence[str] = (),
        schedule: str | None = None,
        every: timedelta | None = None,
        initial_delay: timedelta | None = None,
        timezone: str | None = None,
        schedule_args: Mapping[str, Any] | None = None,
        misfire: MisfirePolicy = DEFAULT_MISFIRE,
        all_nodes: bool = False,
    ) -> Job[Any, Any] | _JobDecorator:
        """Register a function as a job, bare (``@app.job``) or with options. A plain
        ``def`` runs in a worker thread (see ``asyncjobs.threads``); prefer ``async def``.

        ``concurrency_key`` is the key of the per-key limits: an argument's name
        (``"tenant_id"``), or a function of the arguments, which gets them as one object with
        the parameters as attributes and returns a str of at most 200 characters
        (``lambda args: f"{args.tenant}:{args.region}"``). ``key_concurrency`` is how many
        runs with the same key may run at once and ``key_rate_limit`` how many may start per
        period (``"10/s"``), across the cluster (``max_concurrency`` and ``rate_limit`` still
        bound the job as a whole); see ``asyncjobs.jobs.KeyLimit``. ``rate_limit`` caps the
        job's starts per period across the cluster (``"10/s"``, see ``asyncjobs.rates``).

        ``schedule`` (a cron expression) or ``every`` (an interval) also fires it on a
        schedule named after the job; the other schedule options are those of ``schedule()``.
        """

        def register(function: Callable[..., Any]) -> Job[Any, Any]:
            job_name = name or str(getattr(function, "__name__", repr(function)))
            job: Job[Any, Any] = Job(
                function,
                name=job_name,
                queue=queue,
                max_concurrency=max_concurrency,
                key_limit=KeyLimit.declare(
                    concurrency_key, key_concurrency, key_rate_limit, f"job {job_name!r}"
                ),
                rate_limit=RateLimit.parse(rate_limit, f"job {job_name!r}"),
                priority=priority,
                retry=RetryPolicy(retries, backoff_base, backoff_cap, retry_on),
                max_restarts=max_restarts,
                timeout=timeout,
                max_args_bytes=self.max_args_bytes,
                aliases=aliases,
                redact=redact,
            )
            timed = None
            if schedule is not None or every is not None:
                timed = self._define_schedule(
                    job, job.name, schedule, every, initial_delay, timezone, schedule_args,
                    misfire, all_nodes,
                )
            elif (initial_delay, timezone, schedule_args) != (None, None, None) or all_nodes:
                raise ConfigurationError(
                    f"job {job.name!r}: schedule options given without `schedule` or `every`"
                )
            self._add(job)
            if timed is not None:
                self._add_schedule(timed)
            return job

        if fn is not None:
            return register(fn)
        return _JobDecorator(register)

    def _add(self, job: Job[Any, Any]) -> None:
        for taken in (job.name, *job.aliases):
            check_name(taken, "job name", ConfigurationError)
        check_name(job.queue, f"job {job.name!r}: queue name", ConfigurationError)
        for taken in (job.name, *job.aliases):
            if taken in self.jobs or taken in self._aliases:
                raise ConfigurationError(f"a job named {taken!r} is already registered")
        self.jobs[job.name] = job
        self._aliases.update(dict.fromkeys(job.aliases, job.name))
        self.queues.setdefault(job.queue, QueueDefinition(job.queue, None))

    def schedule(
        self,
        job: str | Job[Any, Any],
        *,
        cron: str | None = None,
        every: timedelta | None = None,
        initial_delay: timedelta | None = None,
        timezone: str | None = None,
        args: Mapping[str, Any] | None = None,
        misfire: MisfirePolicy = DEFAULT_MISFIRE,
        all_nodes: bool = False,
        name: str | None = None,
    ) -> ScheduleDefinition:
        """Fire ``job`` on a schedule: ``cron`` (five fields, or six with seconds last, in
        ``timezone``, default UTC) or ``every`` (an interval; the first tick comes
        ``initial_delay`` after the schedule is first stored, at once by default).

        ``args`` are the run's arguments, validated now. ``misfire`` says what happens to
        ticks missed while no worker ran: ``"skip"``, ``"once"`` (the default: one catch-up
        run) or ``"all"`` (each, at most 100). ``all_nodes=True`` fires one run per tick on
        every worker that serves the job's queue, each claimable by that worker only.
        ``name`` (default: the job's name) is the stable key of the stored schedule; give
        one to put several schedules on one job. Workers store schedules when they start.
        """
        resolved = self.get_job(job)
        definition = self._define_schedule(
            resolved, name or resolved.name, cron, every, initial_delay, timezone, args,
            misfire, all_nodes,
        )
        self._add_schedule(definition)
        return definition

    def _define_schedule(
        self,
        job: Job[Any, Any],
        name: str,
        cron: str | None,
        every: timedelta | None,
        initial_delay: timedelta | None,
        timezone: str | None,
        args: Mapping[str, Any] | None,
        misfire: MisfirePolicy,
        all_nodes: bool,
    ) -> ScheduleDefinition:
        definition = define_schedule(
            name=name,
            job=job.name,
            cron=cron,
            every=every,
            initial_delay=initial_delay,
            timezone=timezone,
            args_json="{}",
            misfire=misfire,
            all_nodes=all_nodes,
            # a renamed job keeps the schedule stored under its old name
            previous_names=job.aliases if name == job.name else (),
        )
        try:
            args_json = job.args.encode(dict(args or {}))
            job.concurrency_key_of(loads(args_json))  # a key function that fails, fails here
        except InvalidArguments as exc:  # ConcurrencyKeyError too
            raise ConfigurationError(f"schedule {name!r}: bad schedule args: {exc}") from exc
        return dataclasses.replace(definition, args_json=args_json)

    def _add_schedule(self, definition: ScheduleDefinition) -> None:
        if definition.name in self.schedules:
            raise ConfigurationError(f"a schedule named {definition.name!r} already exists")
        self.schedules[definition.name] = definition

    @overload
    def on(self, event: WorkerEvent) -> Callable[[WorkerHook], WorkerHook]: ...

    @overload
    def on(self, event: RunHookEvent) -> Callable[[RunHook], RunHook]: ...

    @overload
    def on(self, event: FailedEvent) -> Callable[[FailedHook], FailedHook]: ...

    def on(self, event: str) -> Callable[[Any], Any]:
        """Add a lifecycle hook (see ``asyncjobs.hooks`` for the events and signatures)::

            @app.on("failed")
            async def alert(ctx: Context, error: BaseException) -> None: ...
        """
        self.hooks.check(event)  # fail at the decorator line, not when it is applied
        return lambda hook: self.hooks.add(event, hook)

    def get_job(self, name: str | Job[Any, Any]) -> Job[Any, Any]:
        """A registered job by name or alias, or a ``Job`` registered here (``options()``
        copies included); raises ``UnknownJob``. A ``Job`` of another ``App`` is refused,
        even under a name this app knows: no worker of this app would ever run it."""
        if isinstance(name, Job):
            if self.jobs.get(name.name) is not name.origin:
                raise UnknownJob(
                    name.name,
                    f"job {name.name!r} is not registered in App {self.name!r} "
                    "(is it a job of another App?)",
                )
            return name
        if not isinstance(name, str):
            raise InvalidArguments(
                f"a job is given by name (a str) or as a Job, got {type(name).__name__}"
            )
        job = self.jobs.get(self._aliases.get(name, name))
        if job is None:
            raise UnknownJob(name)
        return job

    def definitions(self) -> tuple[list[QueueDefinition], list[JobDefinition]]:
        jobs = [
            # the schema carries the trigger defaults, for callers without the code
            JobDefinition(
                j.name, j.queue, j.max_concurrency, stored_schema(j),
                j.key_limit.field if j.key_limit else None,
                j.key_limit.limit if j.key_limit else None,
                j.rate_limit,
                j.key_limit.rate if j.key_limit else None,
            )
            for j in self.jobs.values()
        ]
        return list(self.queues.values()), jobs

    def backend(self, dsn: str | Backend, **options: Any) -> Backend:
        """A backend for a DSN (``postgresql://...``), or the one given."""
        if not isinstance(dsn, str):
            return dsn
        if dsn.startswith("memory://"):
            # The in-memory backend was retired: PostgreSQL is the one definition of behaviour.
            raise ConfigurationError(
                "the memory:// backend was removed: use a PostgreSQL DSN; in tests, "
                "asyncjobs.testing gives each test a throwaway database (README: Testing your jobs)"
            )
        from asyncjobs.backends.postgres import PostgresBackend

        return PostgresBackend(dsn, **options)

    def client(self, dsn: str | Backend, **options: Any) -> Client:
        """``async with app.client(dsn) as client``; options go to the backend."""
        return _wired().client(self, self.backend(dsn, **options))

    def worker(self, dsn: str | Backend, **options: Any) -> Worker:
        """A worker for this app (see ``Worker`` for the options)."""
        return _wired().worker(self, dsn, **options)

    def asgi(self, dsn: str | Backend, **settings: Any) -> Dashboard:
        """The dashboard (HTTP API, SSE and viewer) as an ASGI app, to serve or to mount::

            dashboard = app.asgi("postgresql://...")
            web = Starlette(routes=[Mount("/jobs", dashboard)], lifespan=dashboard.lifespan)

        ``settings`` are those of ``asyncjobs.web.DashboardSettings`` (token, limits,
        redaction...). It opens its own client on first use, or in ``lifespan``.
        """
        return _wired().dashboard(self, dsn, **settings)


class _JobDecorator:
    """What ``@app.job(...)`` returns: applied to a function, registers it."""

    def __init__(self, register: Callable[[Callable[..., Any]], Job[Any, Any]]) -> None:
        self._register = register

    @overload
    def __call__(self, fn: ContextJobFunction[P, R], /) -> Job[P, R]: ...

    @overload
    def __call__(self, fn: JobFunction[P, R], /) -> Job[P, R]: ...

    @overload
    def __call__(self, fn: SyncContextJobFunction[P, R], /) -> Job[P, R]: ...

    @overload
    def __call__(self, fn: SyncJobFunction[P, R], /) -> Job[P, R]: ...

    def __call__(self, fn: Callable[..., Any], /) -> Job[Any, Any]:
        return self._register(fn)
