"""Why is this run still pending? ``Client.explain(run_id)`` answers with concrete reasons.

The backend gathers the facts in one round trip (``RunFacts``: the switches and limits of the
run's job and queue, the runs holding their slots, the live workers, the database clock);
:func:`explain` turns them into ``Reason`` values, each a stable code, a sentence for people
and the data behind it. The logic mirrors the claim (``asyncjobs.claim_runs``): a reason is
given exactly when the claim would pass the run over for it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from asyncjobs.runs import RunRecord, RunStatus, Trigger

#: A worker whose heartbeat is older than this counts as gone (``Client.explain`` option).
DEFAULT_WORKER_TTL = 30.0
#: ready runs ahead of a pending one are counted up to here (sql/insights.sql run_facts stops
#: at one more): an exact count walks the queue, seconds behind a backlog of millions
AHEAD_COUNTED = 10_000


class ReasonCode(enum.StrEnum):
    """What holds a run back, or what state it is in."""

    #: ``not_before`` is in the future (a delayed trigger)
    NOT_BEFORE = "not_before"
    #: a failed attempt waits for its retry backoff to pass
    RETRY_BACKOFF = "retry_backoff"
    #: ``not_after`` has passed; the next sweep marks it expired
    PAST_DEADLINE = "past_deadline"
    #: its job is disabled (``Client.set_job_enabled``)
    JOB_DISABLED = "job_disabled"
    #: its queue is disabled (``Client.set_queue_enabled``)
    QUEUE_DISABLED = "queue_disabled"
    #: the job's cluster-wide ``max_concurrency`` is used up; ``data["holders"]`` says by whom
    JOB_LIMIT_FULL = "job_limit_full"
    #: the queue's cluster-wide ``max_concurrency`` is used up
    QUEUE_LIMIT_FULL = "queue_limit_full"
    #: as many runs of its job with its ``concurrency_key`` run as ``key_concurrency``
    #: allows; ``data["holders"]`` says which
    KEY_LIMIT_FULL = "key_limit_full"
    #: its job's or queue's ``rate_limit``, or its key's ``key_rate_limit``, is used up in
    #: the current window (``data["kind"]``: ``"job"``, ``"queue"`` or ``"key"``);
    #: ``data["next_start_at"]`` is when the next start is allowed (database clock)
    RATE_LIMITED = "rate_limited"
    #: no live worker serves its queue (and knows its job)
    NO_WORKER = "no_worker"
    #: an ``all_nodes`` copy whose worker is gone; it expires at ``not_after``
    TARGET_WORKER_GONE = "target_worker_gone"
    #: nothing holds it back: it is claimed as soon as a worker has a free slot
    READY = "ready"
    #: a worker runs it
    RUNNING = "running"
    #: it runs, and waits for child runs it triggered (it still holds its limit slots)
    WAITING_ON_CHILDREN = "waiting_on_children"
    #: it has finished (``data["status"]`` says how)
    FINISHED = "finished"
    #: a retried or restarted run got children of an earlier attempt back at their steps
    #: (``asyncjobs.steps``) instead of triggering them again; ``data["children"]``
    REUSED_CHILDREN = "reused_children"


@dataclass(frozen=True, slots=True)
class SlotHolder:
    """A running run that holds a slot of a job or queue limit."""

    run_id: int
    job: str
    queue: str
    worker_id: str | None
    started_at: datetime | None
    #: active child runs it waits on: it holds the slot while waiting (design rule 9)
    waiting_on: tuple[int, ...] = ()
    #: its ``concurrency_key`` (the key of a per-key limit), if its job has one
    concurrency_key: str | None = None


@dataclass(frozen=True, slots=True)
class RunFacts:
    """Everything ``explain`` needs, read by the backend in one go."""

    run: RunRecord
    now: datetime
    job_known: bool
    job_enabled: bool
    job_limit: int | None
    job_running: int
    queue_enabled: bool
    queue_limit: int | None
    queue_running: int
    #: live workers that serve the run's queue / that also know its job
    queue_workers: int
    job_workers: int
    target_alive: bool
    #: ready runs claimed before this one in its queue (higher priority, or older)
    ahead: int
    active_children: tuple[int, ...] = ()
    job_holders: tuple[SlotHolder, ...] = ()
    queue_holders: tuple[SlotHolder, ...] = ()
    #: children an earlier attempt triggered, got back by this one at their steps
    reused_children: tuple[int, ...] = ()
    #: the job's per-key limit and how many runs with this run's key run
    key_limit: int | None = None
    key_running: int = 0
    key_holders: tuple[SlotHolder, ...] = ()
    #: rate limits: starts in the current window and when the oldest leaves it
    job_rate_limit: int | None = None
    job_rate_starts: int = 0
    job_rate_next: datetime | None = None
    queue_rate_limit: int | None = None
    queue_rate_starts: int = 0
    queue_rate_next: datetime | None = None
    #: the job's per-key rate limit: starts of this run's key in the current window
    key_rate_limit: int | None = None
    key_rate_starts: int = 0
    key_rate_next: datetime | None = None

    @property
    def job_full(self) -> bool:
        return self.job_limit is not None and self.job_running >= self.job_limit

    @property
    def queue_full(self) -> bool:
        return self.queue_limit is not None and self.queue_running >= self.queue_limit

    @property
    def key_full(self) -> bool:
        return (
            self.key_limit is not None
            and self.run.concurrency_key is not None
            and self.key_running >= self.key_limit
        )


@dataclass(frozen=True, slots=True)
class Reason:
    """One reason: a stable ``code`` to branch on, a ``message`` to show, and its ``data``."""

    code: ReasonCode
    message: str
    data: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.code.value}: {self.message}"


@dataclass(frozen=True, slots=True)
class Explanation:
    """The answer of ``Client.explain``: the run's status and every reason that applies."""

    run_id: int
    status: RunStatus
    reasons: tuple[Reason, ...]

    @property
    def codes(self) -> list[ReasonCode]:
        return [reason.code for reason in self.reasons]

    @property
    def blocked(self) -> bool:
        """Whether something other than a busy cluster holds a pending run back."""
        return self.status is RunStatus.PENDING and ReasonCode.READY not in self.codes

    def __str__(self) -> str:
        lines = [f"run {self.run_id} {_STATE_WORDS[self.status]}"]
        lines += [f"  - {reason}" for reason in self.reasons]
        return "\n".join(lines)


#: "run 7 <words>": statuses read as English ("is succeeded" does not)
_STATE_WORDS = {
    RunStatus.PENDING: "is pending",
    RunStatus.RUNNING: "is running",
    RunStatus.SUCCEEDED: "succeeded",
    RunStatus.FAILED: "failed",
    RunStatus.CANCELLED: "was cancelled",
    RunStatus.EXPIRED: "expired before it started",
}


def explain(facts: RunFacts) -> Explanation:
    """The reasons for the run's current state (see ``ReasonCode``)."""
    run = facts.run
    if run.status is RunStatus.PENDING:
        reasons = _pending(facts)
    elif run.status is RunStatus.RUNNING:
        reasons = _running(facts)
    else:
        reasons = [_finished(run)]
    return Explanation(run.id, run.status, tuple(reasons))


def _pending(facts: RunFacts) -> list[Reason]:
    checks = (_timing, _switches, _limits, _key_limit, _rates, _workers)
    reasons = [reason for check in checks for reason in check(facts)]
    if reasons:
        return reasons
    ahead = facts.ahead
    data: dict[str, Any] = {"ahead": ahead, "queue": facts.run.queue}
    counted = f"{ahead}"
    if ahead > AHEAD_COUNTED:  # the query stops counting there
        data.update(ahead=AHEAD_COUNTED, ahead_capped=True)
        counted = f"more than {AHEAD_COUNTED}"
    return [
        Reason(
            ReasonCode.READY,
            f"nothing holds it back; {counted} ready run{'s' if ahead != 1 else ''} of queue "
            f"{facts.run.queue!r} come{'s' if ahead == 1 else ''} first, then the next worker "
            "with a free slot claims it",
            data,
        )
    ]


def _timing(facts: RunFacts) -> list[Reason]:
    run, now = facts.run, facts.now
    reasons = []
    if run.not_before > now:
        wait = (run.not_before - now).total_seconds()
        data = {"not_before": run.not_before, "seconds": wait}
        if run.trigger is Trigger.RETRY:
            last = run.errors[-1] if run.errors else run.error or {}
            data |= {
                "attempt": run.attempt,
                "retries": run.retries,
                "max_attempts": run.max_attempts,
                "error": last,
            }
            message = (
                f"retry {run.retries} of {run.max_attempts - 1} after it failed "
                f"({last.get('type', 'error')}: {last.get('message', '')}) waits "
                f"{wait:.1f} s more for its backoff"
            )
            reasons.append(Reason(ReasonCode.RETRY_BACKOFF, message, data))
        else:
            message = f"not_before is {run.not_before.isoformat()}, {wait:.1f} s from now"
            reasons.append(Reason(ReasonCode.NOT_BEFORE, message, data))
    if run.not_after is not None and run.not_after <= now:
        message = (
            f"not_after ({run.not_after.isoformat()}) has passed: it will not start, the next "
            "sweep marks it expired"
        )
        reasons.append(Reason(ReasonCode.PAST_DEADLINE, message, {"not_after": run.not_after}))
    return reasons


def _switches(facts: RunFacts) -> list[Reason]:
    run = facts.run
    reasons = []
    if not facts.job_enabled:
        message = f"job {run.job!r} is disabled; its runs wait until it is enabled again"
        reasons.append(Reason(ReasonCode.JOB_DISABLED, message, {"job": run.job}))
    if not facts.queue_enabled:
        message = f"queue {run.queue!r} is disabled; its runs wait until it is enabled again"
        reasons.append(Reason(ReasonCode.QUEUE_DISABLED, message, {"queue": run.queue}))
    return reasons


def _limits(facts: RunFacts) -> list[Reason]:
    run = facts.run
    reasons = []
    if facts.job_full:
        reasons.append(
            _limit_reason(
                ReasonCode.JOB_LIMIT_FULL,
                f"job {run.job!r}",
                facts.job_limit,
                facts.job_running,
                facts.job_holders,
            )
        )
    if facts.queue_full:
        reasons.append(
            _limit_reason(
                ReasonCode.QUEUE_LIMIT_FULL,
                f"queue {run.queue!r}",
                facts.queue_limit,
                facts.queue_running,
                facts.queue_holders,
            )
        )
    return reasons


def _key_limit(facts: RunFacts) -> list[Reason]:
    run = facts.run
    if not facts.key_full:
        return []
    what = f"job {run.job!r} with concurrency_key {run.concurrency_key!r}"
    reason = _limit_reason(
        ReasonCode.KEY_LIMIT_FULL, what, facts.key_limit, facts.key_running, facts.key_holders
    )
    return [Reason(reason.code, reason.message, reason.data | {"key": run.concurrency_key})]


def _rates(facts: RunFacts) -> list[Reason]:
    run = facts.run
    scopes = (
        ("job", run.job, facts.job_rate_limit, facts.job_rate_starts, facts.job_rate_next),
        ("queue", run.queue, facts.queue_rate_limit, facts.queue_rate_starts,
         facts.queue_rate_next),
        # a run without a key is not under its job's per-key limits (as in the claim)
        ("key", run.concurrency_key,
         facts.key_rate_limit if run.concurrency_key is not None else None,
         facts.key_rate_starts, facts.key_rate_next),
    )  # fmt: skip
    reasons = []
    for kind, name, limit, starts, next_at in scopes:
        if limit is None or starts < limit or next_at is None:
            continue
        wait = max(0.0, (next_at - facts.now).total_seconds())
        what = f"key {name!r} of job {run.job!r}" if kind == "key" else f"{kind} {name!r}"
        message = (
            f"{what} allows {limit} starts per period and {starts} started in the "
            f"current one; the next start is allowed at {next_at.isoformat()} "
            f"({wait:.2f} s from now)"
        )
        data = {"kind": kind, "name": name, "limit": limit, "starts": starts,
                "next_start_at": next_at, "seconds": wait}  # fmt: skip
        if kind == "key":
            data["job"] = run.job
        reasons.append(Reason(ReasonCode.RATE_LIMITED, message, data))
    return reasons


def _limit_reason(
    code: ReasonCode, what: str, limit: int | None, running: int, holders: tuple[SlotHolder, ...]
) -> Reason:
    ids = ", ".join(str(h.run_id) for h in holders[:10])
    more = f" and {len(holders) - 10} more" if len(holders) > 10 else ""
    message = f"{what} allows {limit} running at once and {running} run ({ids}{more})"
    waiting = [h for h in holders if h.waiting_on]
    if waiting:
        message += "; " + ", ".join(
            f"run {h.run_id} holds its slot while it waits on child runs "
            f"{', '.join(map(str, h.waiting_on))}"
            for h in waiting[:5]
        )
    data = {"limit": limit, "running": running, "holders": list(holders)}
    return Reason(code, message, data)


def _workers(facts: RunFacts) -> list[Reason]:
    run = facts.run
    if run.target_worker is not None:
        if facts.target_alive:
            return []
        message = (
            f"it is the all_nodes copy for worker {run.target_worker!r}, which is not alive; "
            "it expires at not_after"
        )
        return [Reason(ReasonCode.TARGET_WORKER_GONE, message, {"worker": run.target_worker})]
    if facts.queue_workers == 0:
        message = f"no live worker serves queue {run.queue!r}"
        return [Reason(ReasonCode.NO_WORKER, message, {"queue": run.queue, "job": run.job})]
    if facts.job_workers == 0:
        message = (
            f"{facts.queue_workers} live worker(s) serve queue {run.queue!r}, but none knows "
            f"job {run.job!r} (deploy the code that defines it, or add an alias)"
        )
        return [Reason(ReasonCode.NO_WORKER, message, {"queue": run.queue, "job": run.job})]
    return []


def _running(facts: RunFacts) -> list[Reason]:
    run = facts.run
    since = run.started_at.isoformat() if run.started_at else "?"
    progress = "" if run.progress is None else f", {run.progress:.0%} done"
    status = f" ({run.status_message})" if run.status_message else ""
    reasons = [
        Reason(
            ReasonCode.RUNNING,
            f"worker {run.worker_id} runs attempt {run.attempt} since {since}{progress}{status}",
            {
                "worker": run.worker_id,
                "attempt": run.attempt,
                "started_at": run.started_at,
                "lease_expires_at": run.lease_expires_at,
                "progress": run.progress,
            },
        )
    ]
    if facts.active_children:
        children = ", ".join(map(str, facts.active_children))
        message = (
            f"it waits on child runs {children}; it still counts as running for the limits of "
            f"job {run.job!r} and queue {run.queue!r}"
        )
        data = {"children": list(facts.active_children)}
        reasons.append(Reason(ReasonCode.WAITING_ON_CHILDREN, message, data))
    if facts.reused_children:
        children = ", ".join(map(str, facts.reused_children))
        message = (
            f"attempt {run.attempt} got child runs {children} of an earlier attempt back at "
            "their steps instead of triggering them again"
        )
        data = {"children": list(facts.reused_children)}
        reasons.append(Reason(ReasonCode.REUSED_CHILDREN, message, data))
    return reasons


def _finished(run: RunRecord) -> Reason:
    when = run.finished_at.isoformat() if run.finished_at else "?"
    message = f"it finished as {run.status.value} at {when}"
    if run.status is RunStatus.FAILED and run.error:
        # retries are for the job's own errors, restarts for crashes (see Trigger.RESTART)
        message += (
            f" after {run.attempt} attempt(s) ({run.retries} retries, {run.restarts} "
            f"restarts after a crash): {run.error.get('type')}: {run.error.get('message')}"
        )
    elif run.status is RunStatus.EXPIRED:
        message += " (not_after passed before a worker started it)"
    data = {"status": run.status.value, "finished_at": run.finished_at, "error": run.error}
    return Reason(ReasonCode.FINISHED, message, data)
