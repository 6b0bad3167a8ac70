"""Worker: claims runs in batches, executes them, reports back, keeps its leases alive.

Tasks of one worker (all in one asyncio task group):

* claim loop — claims up to the free local capacity in one round trip, then sleeps until a
  NOTIFY for one of its queues, a freed slot, or ``poll_interval``. Capacity counts runs
  whose completion is not stored yet (see ``Worker._room``): while completions are slow or
  failing the worker stops claiming instead of piling up runs it cannot finish;
* one task per run — validates the stored arguments again, runs the job under its timeout,
  encodes the result and hands a ``Completion`` to the completion batcher;
* completion and event batchers — flush naturally batched, fenced writes;
* heartbeat — extends the leases of the runs it still owns, learns which were taken away
  (then it cancels them: a rescued attempt must not go on) and which must be cancelled;
* sweeper — returns runs whose lease expired to pending and expires overdue pending runs;
* retention — now and then deletes trace trees that finished longer ago than ``retention``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import random
import signal
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from asyncjobs.app import App
from asyncjobs.backends.base import Backend, Completion, Heartbeat, Notification, WorkerInfo
from asyncjobs.batcher import Batcher
from asyncjobs.client import Client
from asyncjobs.context import Context, current_context
from asyncjobs.errors import (
    ConfigurationError,
    DatabaseError,
    DatabaseUnavailable,
    InvalidArguments,
    JobTimeout,
    ResultNotStorable,
)
from asyncjobs.jobs import Job
from asyncjobs.observe import observer
from asyncjobs.outcomes import (
    Event,
    describe_completion,
    describe_error,
    describe_event,
    exception_text,
    storable_event,
    unstorable_completion,
)
from asyncjobs.runlog import DEFAULT_EVENT_BURST, DEFAULT_EVENT_RATE, EventGate, RunReporting
from asyncjobs.runs import RunRecord, RunStatus
from asyncjobs.scheduler import Scheduler
from asyncjobs.slots import Slots

if TYPE_CHECKING:
    from asyncjobs.metrics import WorkerMetrics

logger = logging.getLogger(__name__)

#: after a second signal, seconds left for cancelled jobs to end and hand-backs to be written
ABORT_GRACE = 1.0
#: longest wait between two tries while the database fails in an unexpected way
MAX_ERROR_BACKOFF = 30.0
#: how long finished trace trees are kept by default (``Worker(retention=...)``)
DEFAULT_RETENTION = timedelta(days=7)
#: seconds between two retention passes of one worker, on average (jittered ±50 %)
RETENTION_INTERVAL = 300.0
#: trace trees deleted per statement: bounded, so a pass never holds locks for long
RETENTION_BATCH = 500
#: the first stops gracefully, a second one at once
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopReason(enum.Enum):
    """Why a run's task was cancelled by the worker."""

    #: a user asked to cancel the run
    CANCELLED = "cancelled"
    #: the worker shuts down and hands the run back (spending neither a retry nor a restart)
    SHUTDOWN = "shutdown"
    #: the lease was lost (the run was rescued elsewhere); nothing may be written
    LEASE_LOST = "lease_lost"


@dataclass(eq=False)
class _Execution:
    record: RunRecord
    task: asyncio.Task[None] | None = None
    stop_reason: StopReason | None = None
    context: Context | None = None
    #: the exception of a failed attempt (for the ``failed`` hooks)
    error: BaseException | None = None


@dataclass
class WorkerStats:
    """Counters of one worker since it started (for logs, tests and the dashboard)."""

    claimed: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    cancelled: int = 0
    handed_back: int = 0
    #: completions the database refused because the run no longer belonged to this attempt
    fenced_off: int = 0
    leases_lost: int = 0
    rescued_by_sweep: int = 0
    #: trace trees deleted by this worker's retention passes
    pruned_trees: int = 0
    claims: int = 0
    #: completions the database refused even alone, stored as ``ResultNotStorable`` failures
    unstorable_completions: int = 0
    #: events the database refused even alone, stored escaped or as an error log line
    unstorable_events: int = 0
    #: the most runs held at once (executing, or finished with the completion not yet stored)
    held_peak: int = 0
    #: claims skipped because the completion backlog was full
    throttled: int = 0
    #: runs claimed, by job name
    by_job: dict[str, int] = field(default_factory=dict)


class Worker:
    """Runs the jobs of an ``App``. ``async with app.worker(dsn) as worker: await worker.wait()``
    or simply ``await worker.run()``; SIGTERM/SIGINT stop it gracefully when
    ``handle_signals=True``.

    Fault-tolerance settings (seconds; README "Guarantees and failure modes"):

    * ``heartbeat_interval`` (5) — how often the worker marks itself alive and extends the
      leases of its runs;
    * ``lease`` (20, four heartbeats) — how long a run stays owned without a heartbeat; after
      that any worker's sweeper may rescue it (judged by the database clock). A job that
      blocks the event loop longer than this gets its run rescued while it still runs;
    * ``sweep_interval`` (5) — at most this long between two sweeps of one worker, so a
      crashed worker's runs are pending again within ``lease + sweep_interval`` while any
      worker lives, and its ``workers`` row is removed by the same sweeps;
    * ``drain_timeout`` (20) — on ``stop()`` / SIGTERM, how long running jobs may finish before
      they are cancelled and handed back as pending (trigger ``restart``; it counts as neither
      a retry nor a restart);
    * ``poll_interval`` (1) — how often to look for work when no NOTIFY arrives.

    Retention: ``retention`` (7 days; ``None`` turns it off) — trace trees (runs with their
    events and stored errors) whose runs all finished longer ago are deleted, by one worker at
    a time (a try-lock: the others skip), ``RETENTION_BATCH`` trees per statement, every
    ``retention_interval`` seconds or so (300, jittered), never on the claim path.

    ``metrics_port`` serves this worker's Prometheus metrics (asyncjobs.metrics; needs the
    ``[metrics]`` extra) on ``metrics_host`` (127.0.0.1 by default); 0 picks a free port,
    see ``metrics_url``. Without it no metrics are kept.

    Backpressure: ``completion_backlog`` (default: ``concurrency``) is how many finished runs
    may wait for their completion to be stored while the worker claims new ones. Runs
    executing plus completions not yet stored never exceed ``concurrency +
    completion_backlog``, so a worker whose completions are slow or failing stops claiming
    (``stats.throttled``) rather than holding runs it cannot finish within their leases; the
    heartbeat carries exactly those runs. ``held`` is the current count, ``stats.held_peak``
    the highest. (A job waiting on a child gives its slot back, so its run is held on top.)
    """

    def __init__(
        self,
        app: App,
        dsn: str | Backend,
        *,
        concurrency: int = 10,
        queues: list[str] | None = None,
        worker_id: str | None = None,
        lease: float = 20.0,
        heartbeat_interval: float = 5.0,
        sweep_interval: float = 5.0,
        poll_interval: float = 1.0,
        drain_timeout: float = 20.0,
        migrate: bool = False,
        handle_signals: bool = False,
        event_rate: float = DEFAULT_EVENT_RATE,
        event_burst: int = DEFAULT_EVENT_BURST,
        retention: timedelta | None = DEFAULT_RETENTION,
        retention_interval: float = RETENTION_INTERVAL,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
        completion_backlog: int | None = None,
        **backend_options: Any,
    ) -> None:
        if concurrency < 1:
            raise ConfigurationError("concurrency must be at least 1")
        if completion_backlog is not None and completion_backlog < 1:
            raise ConfigurationError("completion_backlog must be at least 1")
        if not 0 < heartbeat_interval < lease:
            raise ConfigurationError("heartbeat_interval must be positive and below the lease")
        if not (sweep_interval > 0 and poll_interval > 0 and drain_timeout >= 0):
            raise ConfigurationError(
                "sweep_interval and poll_interval must be positive, drain_timeout not negative"
            )
        if retention is not None and not (
            isinstance(retention, timedelta) and retention >= timedelta(0)
        ):
            raise ConfigurationError(
                f"retention must be a timedelta of 0 or more, or None (off); got {retention!r}"
            )
        if not retention_interval > 0:
            raise ConfigurationError("retention_interval must be positive")
        self.app = app
        if migrate:
            backend_options["migrate"] = True
        self.backend = app.backend(dsn, **backend_options)
        self.concurrency = concurrency
        self.completion_backlog = concurrency if completion_backlog is None else completion_backlog
        self.queues = sorted(queues or {j.queue for j in app.jobs.values()} | {"default"})
        unknown = set(self.queues) - set(app.queues)
        if unknown:
            raise ConfigurationError(
                f"unknown queues {sorted(unknown)}; declare them with app.queue"
            )
        # a run may sit in another queue than its job's default (options(queue=...)),
        # so the worker takes every job it knows from the queues it serves
        self.job_names = sorted({n for j in app.jobs.values() for n in (j.name, *j.aliases)})
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.lease = lease
        self.heartbeat_interval = heartbeat_interval
        self.sweep_interval = sweep_interval
        self.poll_interval = poll_interval
        self.drain_timeout = drain_timeout
        self.handle_signals = handle_signals
        self.retention = retention
        self.retention_interval = retention_interval
        self.stats = WorkerStats()
        self.client = Client(app, self.backend, poll_interval=poll_interval)
        self.client.job_threads = concurrency  # plain `def` jobs: as many threads as slots
        self._slots = Slots(concurrency)
        self._running: dict[int, _Execution] = {}
        #: run id → attempt of completions queued but not yet written (their leases are kept)
        self._finishing: dict[int, int] = {}
        #: the claim loop waits for completions to be stored (wake it when one is)
        self._throttled = False
        #: an outage is going on (a loop could not reach the database, no heartbeat since)
        self._outage = False
        #: loop time before which this worker does not sweep (see ``_sweep_loop``)
        self._sweep_after = 0.0
        self._wake = asyncio.Event()
        #: the claim loop sleeps because it has no room: a freed slot must wake it
        self._want_room = False
        #: whether a claim that comes back short means nothing claimable is left (see
        #: ``_claim_loop``): only when no job this worker runs has a job-level limit
        self._short_claim_drains = not any(
            j.max_concurrency or j.key_limit or j.rate_limit for j in app.jobs.values()
        )
        #: heartbeat now (a NOTIFY said cancellations were asked without listing them)
        self._beat_now = asyncio.Event()
        self._stopping = asyncio.Event()
        self._abort = asyncio.Event()
        self._stopped = asyncio.Event()
        self._completions: Batcher[Completion] = Batcher(
            "completions",
            self._flush_completions,
            repair=self._repair_completion,
            describe=describe_completion,
        )
        self._events: Batcher[Event] = Batcher(
            "events", self._flush_events, repair=self._repair_event, describe=describe_event
        )
        self._main: asyncio.Task[None] | None = None
        self._signals_installed = False
        #: fires the app's schedules (asyncjobs.scheduler); its loop runs only if there are any
        self.scheduler = Scheduler(app, self.backend, self.id, self.queues, max_idle=poll_interval)
        # progress/log rate limits per run, and `logging` capture (asyncjobs.runlog)
        self._reporting = RunReporting(self._events.add, rate=event_rate, burst=event_burst)
        #: Prometheus counters of this worker (asyncjobs.metrics), with ``metrics_port`` only
        self.metrics: WorkerMetrics | None = None
        if metrics_port is not None:
            if not 0 <= metrics_port <= 65535:
                raise ConfigurationError("metrics_port must be 0 to 65535")
            from asyncjobs.metrics import WorkerMetrics  # only then: its import takes ~0.1 s

            self.metrics = WorkerMetrics(self.id, concurrency, lambda: len(self._running))
        self._metrics_address = (metrics_host, metrics_port)
        #: spans and metrics per attempt (asyncjobs.observe); None when both are off
        self._observer = observer(self.metrics)

    def __repr__(self) -> str:
        return f"<Worker {self.id} queues={self.queues} concurrency={self.concurrency}>"

    @property
    def metrics_url(self) -> str | None:
        """Where this worker serves Prometheus metrics (the port is known once started)."""
        if self.metrics is None:
            return None
        host, port = self._metrics_address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Run until ``stop()`` (or a signal, with ``handle_signals``), then drain."""
        async with self:
            await self.wait()

    async def __aenter__(self) -> Worker:
        if self.metrics is None:
            return await self._enter()
        # first: a taken port fails before anything is opened; closed if a later step fails
        host, port = self._metrics_address
        self._metrics_address = (host, self.metrics.serve(host, port or 0))
        logger.info("worker %s: metrics on %s", self.id, self.metrics_url)
        try:
            return await self._enter()
        except BaseException:
            await self.metrics.close()
            raise

    async def _enter(self) -> Worker:
        await self.app.hooks.worker("starting", self)
        await self.client.__aenter__()
        queues, jobs = self.app.definitions()
        await self.backend.register_definitions(queues, jobs)
        await self.scheduler.register()
        await self.backend.register_worker(self._info())
        self.backend.add_listener(self._on_notification)
        self._reporting.start_capture()
        self._main = asyncio.create_task(self._serve(), name=f"asyncjobs-worker-{self.id}")
        if self.handle_signals:
            self._install_signal_handlers()
        logger.info(
            "worker %s started: queues=%s concurrency=%d", self.id, self.queues, self.concurrency
        )
        await self.app.hooks.worker("started", self)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.stop()
        await self.wait()

    def _info(self) -> WorkerInfo:
        return WorkerInfo(
            self.id,
            socket.gethostname(),
            os.getpid(),
            tuple(self.queues),
            tuple(self.job_names),
            self.concurrency,
        )

    async def wait(self) -> None:
        """Until the worker has stopped and released everything."""
        if self._main is not None:
            await asyncio.shield(self._main)

    def stop(self, *, abort: bool = False) -> None:
        """Stop claiming; running jobs get ``drain_timeout`` to finish (none with ``abort``),
        then they are cancelled and handed back as pending (neither a retry nor a restart)."""
        if abort:
            self._abort.set()
        self._stopping.set()
        self._wake.set()

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        self._signals_installed = True

        def on_signal(signum: int) -> None:
            if self._stopping.is_set():
                logger.warning("second signal: stopping at once")
                self.stop(abort=True)
            else:
                logger.info("signal %d: stopping gracefully", signum)
                self.stop()

        for signum in _STOP_SIGNALS:
            loop.add_signal_handler(signum, on_signal, signum)

    def _remove_signal_handlers(self) -> None:
        """Once stopped, the signals belong to the program again (Ctrl-C must work)."""
        if self._signals_installed:
            self._signals_installed = False
            loop = asyncio.get_running_loop()
            for signum in _STOP_SIGNALS:
                loop.remove_signal_handler(signum)

    async def _serve(self) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                helpers = [
                    group.create_task(self._completions.run()),
                    group.create_task(self._events.run()),
                    group.create_task(self._heartbeat_loop()),
                    group.create_task(self._sweep_loop()),
                ]
                if self.scheduler.needed:
                    helpers.append(group.create_task(self.scheduler.run(until=self._stopping)))
                if self.retention is not None:
                    helpers.append(group.create_task(self._retention_loop(self.retention)))
                await self._claim_loop()
                await self.app.hooks.worker("stopping", self)
                await self._drain()
                for helper in helpers:
                    helper.cancel()
        finally:
            await self._close()

    async def _drain(self) -> None:
        """After claiming stopped: let runs finish, then hand back what is left.

        A second signal (``stop(abort=True)``) cuts every step short: the jobs are cancelled at
        once and the hand-backs get ``ABORT_GRACE`` seconds to be written. Whatever is not
        written by then (the database is away, a job ignores cancellation) stays ``running``
        in the database until its lease expires and a sweeper rescues it.
        """
        pending = [e.task for e in self._running.values() if e.task is not None]
        if pending:
            logger.info(
                "waiting up to %.1f s for %d running jobs", self.drain_timeout, len(pending)
            )
            await self._unless_aborted(asyncio.wait(pending), self.drain_timeout, grace=0)
        for execution in list(self._running.values()):
            self._cancel(execution, StopReason.SHUTDOWN)
        remaining = [e.task for e in self._running.values() if e.task is not None]
        if remaining:
            await self._unless_aborted(asyncio.wait(remaining))
        await self._unless_aborted(self._completions.drain())
        await self._unless_aborted(self._events.drain())
        left = len(self._running) + len(self._finishing)
        if left:
            logger.warning(
                "worker %s stopped with %d runs not handed back; they are rescued when their "
                "leases expire",
                self.id,
                left,
            )

    async def _unless_aborted(
        self, step: Awaitable[object], timeout: float | None = None, grace: float = ABORT_GRACE
    ) -> None:
        """Await ``step`` for up to ``timeout`` s, or ``grace`` s more once abort is asked."""
        work = asyncio.ensure_future(step)
        abort = asyncio.ensure_future(self._abort.wait())
        try:
            await asyncio.wait([work, abort], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if not work.done() and abort.done() and grace > 0:
                await asyncio.wait([work], timeout=grace)
        finally:
            work.cancel()
            abort.cancel()

    async def _close(self) -> None:
        self._remove_signal_handlers()
        self.backend.remove_listener(self._on_notification)
        with contextlib.suppress(DatabaseError):  # the row then goes with the next sweep
            await self.backend.unregister_worker(self.id)
        await self.client.__aexit__(None, None, None)
        if self.metrics is not None:
            await self.metrics.close()
        self._reporting.stop_capture()
        self._stopped.set()
        logger.info("worker %s stopped: %s", self.id, self.stats)
        await self.app.hooks.worker("stopped", self)

    # ------------------------------------------------------------------ claiming

    @property
    def held(self) -> int:
        """Runs this worker holds: executing (or waiting on a child), or finished with the
        completion not yet stored. The heartbeat extends the leases of exactly these."""
        return len(self._running) + len(self._finishing)

    def _room(self) -> int:
        """How many runs the next claim may take: the free slots, but never more than would
        put the runs executing plus the completions not yet stored past ``concurrency +
        completion_backlog``. A slot frees when its job returns, its completion is stored
        later: without this bound a worker whose completions are slow keeps claiming, and
        every run it adds makes its heartbeat and its completions slower still."""
        executing = self._slots.capacity - self._slots.free
        backlog_room = self.concurrency + self.completion_backlog - executing
        return min(self._slots.free, backlog_room - len(self._finishing))

    async def _claim_loop(self) -> None:
        trouble = _Trouble(f"worker {self.id}: claiming")
        while not self._stopping.is_set():
            free = self._room()
            if free <= 0:
                if self._slots.free > 0:  # slots free, but completions are not stored yet
                    self._throttled = True
                    self.stats.throttled += 1
                self._want_room = True
                await self._sleep(None)
                self._want_room = False
                continue
            self._wake.clear()
            try:
                records = await self.backend.claim(
                    self.id, self.queues, self.job_names, free, self.lease
                )
            except DatabaseError as exc:
                # an outage ends with the listener's reconnect, which wakes this loop at once
                trouble.failed(exc)
                self._outage |= isinstance(exc, DatabaseUnavailable)
                await self._sleep(max(self.poll_interval, trouble.backoff))
                continue
            trouble.ok()
            self.stats.claims += 1
            for record in records:
                self._start(record)
            # A claim that took fewer runs than asked drained the queues: wait for the next
            # wake-up (one that came during the claim is still set) or poll, claiming again
            # at once would come back empty. Not so with a job-level limit: it may have
            # dropped runs the scan had picked while other runs still wait behind them.
            if not records or (self._short_claim_drains and len(records) < free):
                # a full rate limit says when its next start is allowed: wake then, not later
                wake_in = getattr(records, "wake_in", None)
                await self._sleep(
                    self.poll_interval if wake_in is None else min(self.poll_interval, wake_in)
                )

    def _room_freed(self) -> None:
        """A slot was given back: wake the claim loop if it waits for one. After a claim that
        drained the queues it does not: there is nothing to claim until a wake-up says so
        (unless a job-level limit makes "drained" unsure, see ``_claim_loop``)."""
        if self._want_room or not self._short_claim_drains:
            self._wake.set()

    async def _sleep(self, timeout: float | None) -> None:
        """Until a wake-up (NOTIFY, freed slot, stop) or the timeout."""
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
        # that arrives as the event is set (see waiters.py)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        self._wake.clear()

    def _on_notification(self, notification: Notification) -> None:
        if (
            notification.reconnected
            or notification.all_queues
            or notification.queues & set(self.queues)
        ):
            self._wake.set()
        if notification.reconnected:
            # after an outage, or a test clock moved: renew the leases at once, before a
            # sweep judges them by the new time
            self._beat_now.set()
        if notification.cancel_many and self._running:
            # the list was too long to send: the heartbeat returns this worker's runs whose
            # cancellation was requested
            self._beat_now.set()
        for run_id in notification.cancel:
            execution = self._running.get(run_id)
            if execution is not None:
                self._cancel(execution, StopReason.CANCELLED)

    def _start(self, record: RunRecord) -> None:
        self._slots.take()
        self.stats.claimed += 1
        self.stats.by_job[record.job] = self.stats.by_job.get(record.job, 0) + 1
        execution = _Execution(record)
        self._running[record.id] = execution
        self.stats.held_peak = max(self.stats.held_peak, self.held)
        execution.task = asyncio.create_task(self._execute(execution), name=f"run-{record.id}")

    def _cancel(self, execution: _Execution, reason: StopReason) -> None:
        if execution.stop_reason is None and execution.task is not None:
            execution.stop_reason = reason
            if reason is StopReason.CANCELLED and execution.context is not None:
                # set before the task sees CancelledError, so its cleanup can tell why
                execution.context.cancel_requested = True
            execution.task.cancel()

    # ------------------------------------------------------------------ executing

    async def _execute(self, execution: _Execution) -> None:
        record = execution.record
        job = self.app.get_job(record.job)
        gate = self._reporting.open(record.id, record.attempt)
        context = Context(record, self.client, gate.emit, self._yield_slot)
        execution.context = context
        current_context.set(context)  # this task has its own copy of the context
        try:
            attempt = self._attempt(execution, job, context)
            if self._observer is not None:  # an OpenTelemetry span, Prometheus metrics
                attempt = self._observer.attempt(record, attempt, execution)
            completion = await attempt
            await self._after_attempt(execution, context, completion, gate)
        finally:
            gate.discard()
            self._slots.give_back()
            self._running.pop(record.id, None)
            self._room_freed()
        if completion is not None:
            self._report(completion)

    def _report(self, completion: Completion) -> None:
        """Queue a completion. Until it is flushed the heartbeat keeps extending the lease, so
        a slow flush (database outage) cannot get a finished run rescued and run again."""
        run_id, attempt = completion.run_id, completion.attempt
        self._finishing[run_id] = attempt
        self.stats.held_peak = max(self.stats.held_peak, self.held)

        def flushed(future: asyncio.Future[None]) -> None:
            if not future.cancelled():
                future.exception()  # retrieved: the batcher has logged it already
            if self._finishing.get(run_id) == attempt:
                del self._finishing[run_id]
            if self._throttled:  # the claim loop waits for room in the backlog
                self._throttled = False
                self._wake.set()

        self._completions.add(completion).add_done_callback(flushed)

    async def _attempt(
        self, execution: _Execution, job: Job[Any, Any], context: Context
    ) -> Completion | None:
        record = execution.record
        deadline: asyncio.Timeout | None = None
        try:
            try:
                kwargs = job.args.decode(record.args)
            except InvalidArguments as exc:  # stored arguments no longer fit the code
                return self._failure(record, job, exc, retry=False)
            await self.app.hooks.executing(context)
            call = job.fn(context, **kwargs) if job.takes_context else job.fn(**kwargs)
            if job.timeout is None:  # no timeout scope to enter and leave per run
                value = await call
            else:
                async with asyncio.timeout(job.timeout) as deadline:
                    value = await call
            return self._success(record, job, value)
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if execution.stop_reason is not None and task is not None:
                task.uncancel()
                return self._stopped_completion(execution)
            if task is None or task.cancelling():
                raise  # not ours: the worker itself is being torn down
            # raised by the job itself, its task not being cancelled: the job's failure
            return self._failure(record, job, exc)
        except TimeoutError as exc:
            if deadline is not None and deadline.expired():
                error: BaseException = JobTimeout(
                    f"{job.name} exceeded its timeout of {job.timeout} s"
                )
                error.__cause__ = exc
                return self._failure(record, job, error)
            return self._failure(record, job, exc)
        except GeneratorExit:
            raise  # this coroutine is being closed (a loop shut down without cancelling it)
        except BaseException as exc:
            # KeyboardInterrupt, SystemExit, a custom BaseException raised by the job fail
            # this run only. The worker's own stop never comes this way: it cancels tasks
            # (with handle_signals, SIGINT/SIGTERM are read by the event loop; asyncio.run's
            # own SIGINT handler cancels the main task)
            return self._failure(record, job, exc)

    def _success(self, record: RunRecord, job: Job[Any, Any], value: Any) -> Completion:
        try:
            encoded = job.result.encode(value)
        except Exception as exc:
            error = ResultNotStorable(
                f"{job.name} returned a value that cannot be stored as JSON: "
                f"{type(exc).__name__}: {exception_text(exc)}"
            )
            error.__cause__ = exc
            return self._failure(record, job, error, retry=False)
        self.stats.succeeded += 1
        return Completion(record.id, record.attempt, RunStatus.SUCCEEDED, result_json=encoded)

    def _failure(
        self, record: RunRecord, job: Job[Any, Any], exc: BaseException, *, retry: bool = True
    ) -> Completion:
        execution = self._running.get(record.id)
        if execution is not None:
            execution.error = exc
        error = describe_error(exc, record.attempt)
        retry_in = None
        # retries, not attempt: restarts after a crash and shutdown hand-backs also count as
        # attempts (claims), but they are not the job's failures
        failures = record.retries + 1
        if retry and failures < record.max_attempts and job.retry.should_retry(exc):
            retry_in = job.retry.delay(failures)
            self.stats.retried += 1
            logger.info(
                "run %d (%s) attempt %d failed, retrying in %.2f s: %s",
                record.id,
                job.name,
                record.attempt,
                retry_in,
                error["message"],
            )
        else:
            self.stats.failed += 1
            logger.warning(
                "run %d (%s) failed: %s: %s", record.id, job.name, error["type"], error["message"]
            )
        return Completion(
            record.id, record.attempt, RunStatus.FAILED, error=error, retry_in=retry_in
        )

    async def _after_attempt(
        self,
        execution: _Execution,
        context: Context,
        completion: Completion | None,
        gate: EventGate,
    ) -> None:
        """``executed`` / ``failed`` hooks, then the events the rate limit held back: all
        before the completion is queued, as events of a finished run would be fenced off. A
        cancellation arriving meanwhile comes too late: the attempt's outcome stands."""
        try:
            if completion is not None and completion.status is RunStatus.SUCCEEDED:
                await self.app.hooks.executed(context)
            elif completion is not None and completion.status is RunStatus.FAILED:
                await self.app.hooks.failed(context, execution.error or RuntimeError("failed"))
            await gate.close()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if execution.stop_reason is None or task is None:
                raise
            task.uncancel()

    def _stopped_completion(self, execution: _Execution) -> Completion | None:
        record = execution.record
        if execution.stop_reason is StopReason.CANCELLED:
            self.stats.cancelled += 1
            return Completion(record.id, record.attempt, RunStatus.CANCELLED)
        if execution.stop_reason is StopReason.SHUTDOWN:
            self.stats.handed_back += 1
            return Completion(record.id, record.attempt, RunStatus.PENDING, handback=True)
        return None  # lease lost: the run belongs to another attempt now

    @contextlib.asynccontextmanager
    async def _yield_slot(self) -> AsyncIterator[None]:
        self._slots.give_back()
        self._room_freed()
        try:
            yield
        finally:
            await self._slots.take_when_free()

    # ------------------------------------------------------------------ database writes

    async def _flush_completions(self, completions: list[Completion]) -> None:
        accepted = await self.backend.complete(self.id, completions)
        rejected = [c for c in completions if c.run_id not in accepted]
        if rejected:
            self.stats.fenced_off += len(rejected)
            logger.warning(
                "worker %s: %d completions fenced off (the runs were rescued or cancelled "
                "meanwhile): %s",
                self.id,
                len(rejected),
                [(c.run_id, c.attempt) for c in rejected][:20],
            )

    async def _flush_events(self, events: list[Event]) -> None:
        await self.backend.add_events(self.id, events)

    def _repair_completion(
        self, completion: Completion, error: Exception, step: int
    ) -> Completion | None:
        """What to store for a completion the database refused alone (``outcomes``)."""
        replacement = unstorable_completion(completion, error, step)
        if replacement is not None:
            self.stats.unstorable_completions += 1
        return replacement

    def _repair_event(self, event: Event, error: Exception, step: int) -> Event | None:
        replacement = storable_event(event, error, step)
        if replacement is not None and step == 1:
            self.stats.unstorable_events += 1
        return replacement

    # ------------------------------------------------------------------ leases

    async def _heartbeat_loop(self) -> None:
        trouble = _Trouble(f"worker {self.id}: heartbeat")
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.heartbeat_interval):
                    await self._beat_now.wait()
            self._beat_now.clear()
            owned = [(e.record.id, e.record.attempt) for e in self._running.values()]
            owned += self._finishing.items()
            try:
                beat = await self.backend.heartbeat(self.id, owned, self.lease)
                if not beat.registered:
                    logger.warning(
                        "worker %s was declared dead (missed heartbeats); re-registering", self.id
                    )
                    await self.backend.register_worker(self._info())
            except DatabaseError as exc:
                # no backoff: the leases depend on the next try
                trouble.failed(exc)
                self._outage |= isinstance(exc, DatabaseUnavailable)
                continue
            trouble.ok()
            if self._outage:
                self._outage = False
                self._sweep_after = asyncio.get_running_loop().time() + self.lease
            self._apply(beat, owned)

    def _apply(self, beat: Heartbeat, owned: list[tuple[int, int]]) -> None:
        """Cancel what the heartbeat says this worker no longer owns or must cancel."""
        for run_id, attempt in owned:
            execution = self._running.get(run_id)
            if execution is None or execution.record.attempt != attempt:
                continue  # finished meanwhile; its completion is fenced on its own
            if run_id not in beat.kept:
                self.stats.leases_lost += 1
                logger.warning(
                    "worker %s lost the lease of run %d (attempt %d): it was rescued "
                    "elsewhere; cancelling it, its result will not be written",
                    self.id,
                    run_id,
                    attempt,
                )
                self._cancel(execution, StopReason.LEASE_LOST)
            elif run_id in beat.cancel_requested:
                self._cancel(execution, StopReason.CANCELLED)

    async def _sweep_loop(self) -> None:
        """Sweep at random gaps between half and all of ``sweep_interval``: many workers
        started together do not sweep together, and one live worker alone rescues a crashed
        run within ``lease + sweep_interval`` of the last heartbeat before the crash.

        Not during an outage this worker saw, nor for a lease after it ended: the other
        workers could not heartbeat either, and get that long to renew their leases (as
        after a server restart, see the ``sweep`` query), so an outage costs no attempts.
        """
        trouble = _Trouble(f"worker {self.id}: sweeping")
        full = False
        while True:
            if not full:  # a full batch: more expired leases wait, sweep again at once
                await asyncio.sleep(self.sweep_interval * random.uniform(0.5, 1.0))
            full = False
            if self._outage or asyncio.get_running_loop().time() < self._sweep_after:
                continue
            try:
                result = await self.backend.sweep(self.lease)
            except DatabaseError as exc:
                trouble.failed(exc)
                self._outage |= isinstance(exc, DatabaseUnavailable)
                continue
            trouble.ok()
            full = result.full
            self.stats.rescued_by_sweep += result.restarted + result.failed
            if result.restarted or result.failed or result.expired:
                logger.warning("sweep: %s", result)

    async def _retention_loop(self, retention: timedelta) -> None:
        """Delete old trace trees now and then. Every worker runs this loop; the ``prune``
        statement's try-lock lets one delete at a time and the others skip at no cost, and
        the jitter keeps workers started together apart."""
        trouble = _Trouble(f"worker {self.id}: retention")
        while True:
            await asyncio.sleep(self.retention_interval * random.uniform(0.5, 1.5))
            if self._outage:
                continue
            try:
                result = await self.client.prune(retention, batch_size=RETENTION_BATCH)
            except DatabaseError as exc:
                trouble.failed(exc)
                self._outage |= isinstance(exc, DatabaseUnavailable)
                continue
            trouble.ok()
            self.stats.pruned_trees += result.trees
            if result.trees:
                logger.info("retention: deleted %s", result)


class _Trouble:
    """Reports the database failures of one loop once when they start and once when they end,
    not on every try; ``backoff`` grows while an unexpected error repeats."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.failures = 0
        self.backoff = 0.0

    def failed(self, exc: DatabaseError) -> None:
        if self.failures == 0:
            if isinstance(exc, DatabaseUnavailable):
                logger.warning("%s: database unavailable, retrying: %s", self.what, exc)
            else:
                logger.error("%s failed, retrying: %s", self.what, exc, exc_info=exc)
        self.failures += 1
        if not isinstance(exc, DatabaseUnavailable):
            self.backoff = min(2.0 ** (self.failures - 1), MAX_ERROR_BACKOFF)

    def ok(self) -> None:
        if self.failures:
            logger.warning(
                "%s: database reachable again (%d failed tries)", self.what, self.failures
            )
            self.failures, self.backoff = 0, 0.0

