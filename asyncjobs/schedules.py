"""Schedules: cron and interval timing, misfire policies, and what to fire at a given moment.

Everything here is a pure function of the schedule, its stored state and ``now``: no clock is
read, so tests pass any ``now`` they like, and every worker that looks at the same stored row
at (about) the same moment computes the same ticks. The scheduler loop (``scheduler.py``)
reads the rows and the database clock, asks :func:`plan` what to fire and stores the outcome.

Ticks:

* **cron** — ``croniter`` in the schedule's time zone (five fields, or six with seconds as the
  sixth field: ``"*/10 * * * * *"`` every ten seconds). The first tick is the first one after
  the moment the schedule was stored (or changed, or enabled again).
* **interval** — ``anchor + initial_delay + k * every`` for k = 0, 1, 2...: a fixed grid from
  the moment the schedule was stored, so a late tick does not shift the ones after it. With the
  default ``initial_delay`` of zero the first run fires at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from asyncjobs.errors import ConfigurationError

MisfirePolicy = Literal["skip", "once", "all"]
MISFIRE_POLICIES: tuple[MisfirePolicy, ...] = ("skip", "once", "all")
#: What happens to ticks missed while no worker ran (or the job was disabled):
#: ``once`` fires one catch-up run for all of them, then goes on as usual.
DEFAULT_MISFIRE: MisfirePolicy = "once"
#: ``all`` fires at most this many missed ticks (the most recent ones).
MAX_CATCH_UP = 100
#: Under ``skip``, a tick seen at most this late still counts as on time.
MISFIRE_GRACE = timedelta(seconds=30)
#: An ``all_nodes`` copy that no worker started within max(one period, this) expires.
MIN_NODE_COPY_TTL = timedelta(seconds=60)

_TICK = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class ScheduleDefinition:
    """A schedule as declared in code, ready to be stored (``args_json`` is validated).

    ``name`` is the schedule's stable key: the job's name for ``@app.job(schedule=...)``.
    """

    name: str
    job: str
    cron: str | None
    every: timedelta | None
    initial_delay: timedelta
    timezone: str
    args_json: str
    misfire: MisfirePolicy
    all_nodes: bool
    #: earlier names of the schedule (from the job's aliases): a stored schedule under one of
    #: them is renamed, keeping its fire times and its enabled flag
    previous_names: tuple[str, ...] = ()

    def timing(self, anchor: datetime) -> Timing:
        return make_timing(self.cron, self.every, self.initial_delay, self.timezone, anchor)


@dataclass(frozen=True, slots=True)
class ScheduleState:
    """A stored schedule and where it stands (``Client.get_schedules``)."""

    name: str
    job: str
    cron: str | None
    every: timedelta | None
    initial_delay: timedelta
    timezone: str
    args: dict[str, Any]
    misfire: MisfirePolicy
    all_nodes: bool
    #: the run-time switch (``Client.set_schedule_enabled``); a deploy never changes it
    enabled: bool
    #: when the timing was last set (stored, changed or enabled again): ticks count from here
    anchor_at: datetime
    #: the next tick; ``None`` until a scheduler has computed it from ``anchor_at``
    next_fire_at: datetime | None
    last_fire_at: datetime | None
    #: whether the job and its queue are enabled; a schedule of a paused job does not fire
    job_enabled: bool = True
    queue_enabled: bool = True

    @property
    def paused(self) -> bool:
        """Whether the scheduler holds its ticks back (they count as missed meanwhile)."""
        return not (self.job_enabled and self.queue_enabled)

    def timing(self) -> Timing:
        return make_timing(self.cron, self.every, self.initial_delay, self.timezone, self.anchor_at)


class Timing(Protocol):
    """Where the ticks of one schedule fall."""

    def first(self) -> datetime:
        """The first tick of a schedule stored (or reset) at its anchor."""

    def after(self, moment: datetime) -> datetime:
        """The first tick strictly after ``moment``."""

    def at_or_before(self, moment: datetime) -> datetime | None:
        """The last tick at or before ``moment`` (``None`` before the first)."""


@dataclass(frozen=True, slots=True)
class CronTiming:
    expression: str
    zone: ZoneInfo
    anchor: datetime

    def first(self) -> datetime:
        return self.after(self.anchor)

    def after(self, moment: datetime) -> datetime:
        tick: datetime = croniter(self.expression, moment.astimezone(self.zone)).get_next(datetime)
        return tick.astimezone(UTC)

    def at_or_before(self, moment: datetime) -> datetime | None:
        # croniter's get_prev is strictly before its start: start one microsecond later
        start = (moment + _TICK).astimezone(self.zone)
        tick: datetime = croniter(self.expression, start).get_prev(datetime)
        return tick.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class IntervalTiming:
    every: timedelta
    origin: datetime

    def first(self) -> datetime:
        return self.origin

    def after(self, moment: datetime) -> datetime:
        if moment < self.origin:
            return self.origin
        return self.origin + ((moment - self.origin) // self.every + 1) * self.every

    def at_or_before(self, moment: datetime) -> datetime | None:
        if moment < self.origin:
            return None
        return self.origin + ((moment - self.origin) // self.every) * self.every


def make_timing(
    cron: str | None,
    every: timedelta | None,
    initial_delay: timedelta,
    timezone: str,
    anchor: datetime,
) -> Timing:
    if cron is not None:
        return CronTiming(cron, ZoneInfo(timezone), anchor)
    if every is None:
        raise ConfigurationError("a schedule needs a cron expression or an interval")
    return IntervalTiming(every, anchor + initial_delay)


@dataclass(frozen=True, slots=True)
class FirePlan:
    """What one scheduler pass does with one schedule: fire ``fires``, then wait for
    ``next_fire_at``. Missed ticks that a policy drops appear in neither."""

    fires: tuple[datetime, ...]
    next_fire_at: datetime
    missed: int = 0


def plan(
    timing: Timing, next_fire_at: datetime | None, now: datetime, policy: MisfirePolicy
) -> FirePlan:
    """The ticks due at ``now``, given the stored next tick, after the misfire policy.

    ``next_fire_at=None`` means "not computed yet": the first tick of the timing is due next.
    Ticks due are ``next_fire_at`` and every tick after it up to ``now``; all but the latest
    were missed (the scheduler did not run at their time). ``skip`` fires the latest only if it
    is at most ``MISFIRE_GRACE`` late, ``once`` fires the latest, ``all`` fires every due tick
    (the most recent ``MAX_CATCH_UP``).
    """
    due_from = timing.first() if next_fire_at is None else next_fire_at
    if due_from > now:
        return FirePlan((), due_from)
    latest = timing.at_or_before(now)
    if latest is None or latest < due_from:
        latest = due_from  # a stored tick off the grid (e.g. around a DST change) still fires
    following = timing.after(now)
    if policy == "all":
        fires = _ticks_back(timing, latest, due_from, MAX_CATCH_UP)
        missed = _count_between(timing, due_from, latest) - len(fires)
        return FirePlan(fires, following, missed)
    on_time = policy == "once" or now - latest <= MISFIRE_GRACE
    fires = (latest,) if on_time else ()
    return FirePlan(fires, following, _count_between(timing, due_from, latest) - len(fires))


def _ticks_back(
    timing: Timing, latest: datetime, earliest: datetime, cap: int
) -> tuple[datetime, ...]:
    """Up to ``cap`` ticks from ``latest`` back to ``earliest``, oldest first."""
    ticks = [latest]
    while len(ticks) < cap:
        previous = timing.at_or_before(ticks[-1] - _TICK)
        if previous is None or previous < earliest:
            break
        ticks.append(previous)
    return tuple(reversed(ticks))


def _count_between(timing: Timing, earliest: datetime, latest: datetime) -> int:
    """How many ticks lie in ``[earliest, latest]`` (for the log line about missed ticks)."""
    if isinstance(timing, IntervalTiming):
        return (latest - earliest) // timing.every + 1
    # cron: count by walking, but never further than it is worth reporting exactly
    count, tick = 1, earliest
    while tick < latest and count <= MAX_CATCH_UP * 10:
        tick = timing.after(tick)
        count += 1
    return count


def node_copy_ttl(timing: Timing, fire_at: datetime) -> timedelta:
    """How long an ``all_nodes`` copy may wait for its worker: one period, at least a minute."""
    return max(timing.after(fire_at) - fire_at, MIN_NODE_COPY_TTL)


# ---------------------------------------------------------------------- declaring


def define_schedule(
    *,
    name: str,
    job: str,
    cron: str | None,
    every: timedelta | None,
    initial_delay: timedelta | None,
    timezone: str | None,
    args_json: str,
    misfire: MisfirePolicy,
    all_nodes: bool,
    previous_names: tuple[str, ...] = (),
) -> ScheduleDefinition:
    """Check a declared schedule; raises ``ConfigurationError`` with the reason."""
    where = f"schedule {name!r}"
    if not name or len(name) > 200:
        raise ConfigurationError("schedule name must be 1 to 200 characters")
    if (cron is None) == (every is None):
        raise ConfigurationError(f"{where}: give exactly one of a cron expression or `every`")
    if misfire not in MISFIRE_POLICIES:
        raise ConfigurationError(f"{where}: misfire must be one of {MISFIRE_POLICIES}")
    if cron is not None:
        _check_cron(where, cron)
        if initial_delay is not None:
            raise ConfigurationError(f"{where}: initial_delay applies to interval schedules")
    if every is not None:
        if not every > timedelta(0):
            raise ConfigurationError(f"{where}: every must be positive")
        if timezone is not None:
            raise ConfigurationError(f"{where}: a time zone applies to cron schedules only")
    if initial_delay is not None and initial_delay < timedelta(0):
        raise ConfigurationError(f"{where}: initial_delay must not be negative")
    zone = timezone or "UTC"
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigurationError(f"{where}: unknown time zone {zone!r}") from exc
    return ScheduleDefinition(
        name=name,
        job=job,
        cron=cron,
        every=every,
        initial_delay=initial_delay or timedelta(0),
        timezone=zone,
        args_json=args_json,
        misfire=misfire,
        all_nodes=all_nodes,
        previous_names=previous_names,
    )


def _check_cron(where: str, expression: str) -> None:
    if len(expression) > 200:
        raise ConfigurationError(f"{where}: a cron expression has at most 200 characters")
    if len(expression.split()) not in (5, 6) or not croniter.is_valid(expression):
        raise ConfigurationError(
            f"{where}: {expression!r} is not a cron expression (five fields, or six with "
            "seconds last)"
        )


def seconds_until(moment: datetime, now: datetime) -> float:
    """Seconds from ``now`` to ``moment`` (0 when past), finite for any input."""
    seconds = (moment - now).total_seconds()
    return seconds if math.isfinite(seconds) and seconds > 0 else 0.0
