"""Job: a decorated function (async, or plain to run in a thread), its argument schema and
its trigger options."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Generic, Literal, ParamSpec, Protocol, TypeVar

from asyncjobs.codec import ArgsCodec, ResultCodec, args_codec, result_codec
from asyncjobs.context import Context, current_client
from asyncjobs.errors import ConcurrencyKeyError, ConfigurationError
from asyncjobs.rates import RateLimit, RateLimitSpec
from asyncjobs.redact import resolve_paths
from asyncjobs.retry import RetryPolicy
from asyncjobs.rules import check_int, check_name, unstorable_reason
from asyncjobs.steps import check_step
from asyncjobs.threads import in_thread

if TYPE_CHECKING:
    from asyncjobs.client import Run

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_QUEUE = "default"
#: How often a run is restarted after its worker vanished (crash, kill, lost network) before
#: it fails with ``LeaseExpired``; the job's ``retries`` are for its own errors only.
DEFAULT_MAX_RESTARTS = 10
#: the stored column is a PostgreSQL integer
MAX_RESTARTS_LIMIT = 2**31 - 1
#: Accepted priority range; higher runs first.
PRIORITY_RANGE = range(-32768, 32768)

OnDuplicate = Literal["raise", "return"]
#: how far ``not_before`` / ``not_after`` given as a timedelta may reach, either way
MAX_OFFSET = timedelta(days=36525)


@dataclass(frozen=True, slots=True)
class RunOptions:
    """Per-trigger options; ``None`` means "the job's default"."""

    priority: int | None = None
    not_before: datetime | timedelta | None = None
    not_after: datetime | timedelta | None = None
    dedup_id: str | None = None
    queue: str | None = None
    on_duplicate: OnDuplicate = "raise"
    #: how long ``run_async`` waits for the result before raising ``RunTimeout``
    wait_timeout: float | None = None
    #: inside a job: this child's stable step name (see ``asyncjobs.steps``)
    step: str | None = None
    #: inside a job: when the child at this step failed in an earlier attempt, trigger a new
    #: one instead of raising its error again
    rerun_failed: bool = False

    def __post_init__(self) -> None:
        """Checked when set, so that a bad option fails at ``options()``, before any row."""
        if self.priority is not None:
            check_int(self.priority, "priority", ConfigurationError, PRIORITY_RANGE.start,
                      PRIORITY_RANGE.stop - 1)
        _check_when(self.not_before, "not_before")
        _check_when(self.not_after, "not_after")
        if self.dedup_id is not None:
            check_name(self.dedup_id, "dedup_id", ConfigurationError)
        if self.queue is not None:
            check_name(self.queue, "queue", ConfigurationError)
        if not isinstance(self.on_duplicate, str) or self.on_duplicate not in ("raise", "return"):
            raise ConfigurationError(
                f"on_duplicate must be 'raise' or 'return', got {self.on_duplicate!r}"
            )
        _check_wait_timeout(self.wait_timeout)
        if self.step is not None:
            check_step(self.step)


def _check_when(value: object, name: str) -> None:
    """``not_before`` / ``not_after``: an aware datetime, or an offset from the trigger."""
    if value is None:
        return
    if isinstance(value, timedelta):
        if not -MAX_OFFSET <= value <= MAX_OFFSET:  # abs(timedelta.min) overflows
            raise ConfigurationError(f"{name} must be within 100 years of now, got {value}")
    elif isinstance(value, datetime):
        if value.utcoffset() is None:
            raise ConfigurationError(f"{name} must be timezone-aware, got {value!r}")
        try:
            value.astimezone(UTC)
        except OverflowError:
            raise ConfigurationError(f"{name} is out of range: {value!r}") from None
    else:
        raise ConfigurationError(
            f"{name} must be a timezone-aware datetime or a timedelta, got {type(value).__name__}"
        )


def _check_wait_timeout(value: object) -> None:
    if value is None:
        return
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ConfigurationError(
            f"wait_timeout must be a number of seconds, got {type(value).__name__}"
        )
    if not value > 0:  # NaN too
        raise ConfigurationError(f"wait_timeout must be positive, got {value}")


#: A per-key limit's key computed from a run's arguments: it gets them as one object whose
#: attributes are the job's parameters (``args.tenant``), holding the validated values the
#: function itself would get, and returns the key, a str of at most 200 characters.
KeyFunction = Callable[[Any], str]
#: the longest key the database stores (runs.concurrency_key)
MAX_KEY_LENGTH = 200


@dataclass(frozen=True, slots=True)
class KeyLimit:
    """Per-key limits of a job: at most ``limit`` runs with the same key run at once, and at
    most ``rate.count`` of them start per ``rate.period``, across the cluster
    (``@app.job(concurrency_key="tenant_id", key_concurrency=1, key_rate_limit="10/s")``).

    The key is an argument, named by ``field``, or computed by ``function`` (``KeyFunction``)
    from the arguments. An argument is read by the database from the stored arguments when a
    run is inserted (a trigger on ``asyncjobs.runs``), so runs triggered by name, by schedules
    and by other services get the same key as typed triggers; its key is the argument as text
    (``7`` for the integer 7, a JSON object's text for an object), cut to 200 characters
    (stricter, never looser), and a run whose argument is missing or null has no key: only
    the job's other limits apply to it. A function is run by whoever has the job's code and
    inserts the run: the triggering client, the scheduler, a parent triggering a child; a
    retry keeps the key of the run it repeats. A run of a function-keyed job inserted
    without a key (by name from a client without the code) is refused by the database with
    ``ConcurrencyKeyError``, never left unkeyed. Claims enforce both limits under the job's
    advisory lock, with the job and queue limits (``asyncjobs.claim_runs``).
    """

    field: str | None
    limit: int | None
    function: KeyFunction | None = None
    rate: RateLimit | None = None

    @staticmethod
    def declare(
        key: str | KeyFunction | None, limit: int | None, rate: RateLimitSpec | None, owner: str
    ) -> KeyLimit | None:
        if key is None and limit is None and rate is None:
            return None
        if key is None or (limit is None and rate is None):
            raise ConfigurationError(
                f"{owner}: concurrency_key and key_concurrency (or key_rate_limit) go together"
            )
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit < 2**31
        ):
            raise ConfigurationError(f"key_concurrency must be a positive integer, got {limit!r}")
        rated = RateLimit.parse(rate, f"{owner}: key_rate_limit")
        if isinstance(key, str):
            return KeyLimit(check_name(key, "concurrency_key", ConfigurationError), limit, None,
                            rated)  # fmt: skip
        if not callable(key):
            raise ConfigurationError(
                f"{owner}: concurrency_key must be an argument's name or a function of the "
                f"arguments, got {type(key).__name__}"
            )
        return KeyLimit(None, limit, key, rated)

    def compute(self, job: str, arguments: dict[str, Any]) -> str | None:
        """The key of a run with these validated ``arguments`` (by parameter name): the
        function's, checked; ``None`` when the database reads it from an argument."""
        if self.function is None:
            return None
        try:
            key = self.function(SimpleNamespace(**arguments))
        except Exception as exc:
            raise ConcurrencyKeyError(
                f"job {job!r}: its concurrency_key function raised {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(key, str):
            raise ConcurrencyKeyError(
                f"job {job!r}: its concurrency_key function returned {type(key).__name__}, "
                "not a str"
            )
        if len(key) > MAX_KEY_LENGTH:
            raise ConcurrencyKeyError(
                f"job {job!r}: its concurrency_key function returned a key of {len(key)} "
                f"characters, more than {MAX_KEY_LENGTH}"
            )
        reason = unstorable_reason(key)
        if reason is not None:
            raise ConcurrencyKeyError(
                f"job {job!r}: its concurrency key cannot be stored: {reason}"
            )
        return key


class Job(Generic[P, R]):
    """A registered job. Trigger it with ``client.trigger_async(job, ...)`` or, inside another
    job, with ``job.trigger_async(...)`` / ``job.run_async(...)``.
    """

    def __init__(
        self,
        fn: Callable[..., Awaitable[R]] | Callable[..., R],
        *,
        name: str,
        queue: str,
        max_concurrency: int | None,
        priority: int,
        retry: RetryPolicy,
        timeout: float | None,
        max_args_bytes: int,
        aliases: Sequence[str] = (),
        options: RunOptions | None = None,
        redact: Sequence[str] = (),
        max_restarts: int = DEFAULT_MAX_RESTARTS,
        key_limit: KeyLimit | None = None,
        rate_limit: RateLimit | None = None,
    ) -> None:
        if not callable(fn) or inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn):
            raise ConfigurationError(
                f"job {name!r} must be a function (async def, or def to run in a thread)"
            )
        if max_concurrency is not None and max_concurrency < 1:
            raise ConfigurationError(f"job {name!r}: max_concurrency must be at least 1")
        if timeout is not None and not timeout > 0:
            raise ConfigurationError(f"job {name!r}: timeout must be positive")
        if priority not in PRIORITY_RANGE:
            raise ConfigurationError(f"job {name!r}: priority must be in [-32768, 32767]")
        if (
            isinstance(max_restarts, bool)
            or not isinstance(max_restarts, int)
            or not 0 <= max_restarts <= MAX_RESTARTS_LIMIT
        ):
            raise ConfigurationError(
                f"job {name!r}: max_restarts must be an integer from 0 to {MAX_RESTARTS_LIMIT}, "
                f"got {max_restarts!r}"
            )
        #: the function as written; ``fn`` is what the worker awaits (a ``def`` job wrapped
        #: to run in a thread, see ``asyncjobs.threads``)
        self.function = fn
        self.is_async = inspect.iscoroutinefunction(fn)
        self.fn: Callable[..., Awaitable[R]] = (
            fn if self.is_async else in_thread(fn)  # type: ignore[assignment,arg-type]
        )
        #: the ``Job`` that ``options()`` copies come from: what an ``App`` registers, so that
        #: a job of another app (even one of the same name) is told apart by identity
        self.origin: Job[P, R] = self
        self.name = name
        self.queue = queue
        self.max_concurrency = max_concurrency
        self.priority = priority
        self.retry = retry
        #: restarts after a vanished worker before the run fails (see DEFAULT_MAX_RESTARTS)
        self.max_restarts = max_restarts
        self.timeout = timeout
        self.aliases = tuple(aliases)
        self.default_options = options or RunOptions()
        self.takes_context, signature, hints = _split_signature(fn)
        self.args: ArgsCodec = args_codec(name, signature, hints, max_args_bytes)
        self.result: ResultCodec = result_codec(name, hints.get("return", inspect.Signature.empty))
        #: argument paths (``"password"``, ``"card.number"``) the dashboard never shows
        self.redact_keys = resolve_paths(name, redact, self.args.model)
        self.redact = tuple(redact)
        if (
            key_limit is not None
            and key_limit.field is not None
            and key_limit.field not in signature.parameters
        ):
            raise ConfigurationError(
                f"job {name!r}: concurrency_key {key_limit.field!r} is not one of its parameters"
            )
        #: the per-key concurrency and rate limits, if any
        self.key_limit = key_limit
        #: at most so many starts per period across the cluster, if set
        self.rate_limit = rate_limit

    def __repr__(self) -> str:
        return f"<Job {self.name!r} queue={self.queue!r}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the function itself, as written — no queue, no worker, no validation — for
        unit tests: ``await add(1, 2)`` (``add(1, 2)`` for a ``def`` job).

        A job whose first parameter is a ``Context`` gets none injected: pass one yourself
        (``await checkout(ctx, order_id=7)``), or run it through a worker to get a real one.
        """
        if self.takes_context and not args:
            raise TypeError(
                f"job {self.name!r} takes a Context first: call it as {self.name}(ctx, ...) "
                "with a Context of your own, or run it through a worker"
            )
        return self.function(*args, **kwargs)

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
    ) -> Job[P, R]:
        """The same job with trigger options set; the job's own signature is kept."""
        return with_options(
            self, priority=priority, not_before=not_before, not_after=not_after,
            dedup_id=dedup_id, queue=queue, on_duplicate=on_duplicate,
            wait_timeout=wait_timeout, step=step, rerun_failed=rerun_failed,
        )

    async def trigger_async(self, *args: P.args, **kwargs: P.kwargs) -> Run[R]:
        """Enqueue a run with the current client (inside a job: the worker's client)."""
        return await current_client().trigger_async(self, *args, **kwargs)

    async def run_async(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Enqueue a run and wait for its typed result (see ``Client.run_async``)."""
        return await current_client().run_async(self, *args, **kwargs)

    def concurrency_key_of(self, stored: Mapping[str, Any]) -> str | None:
        """The key the job's ``concurrency_key`` function gives a run with these stored (JSON)
        arguments — what the worker will decode, so every inserter computes the same key —
        or ``None`` when the job has no key function (an argument's key is read by the
        database). Raises ``ConcurrencyKeyError``."""
        if self.key_limit is None or self.key_limit.function is None:
            return None
        return self.key_limit.compute(self.name, self.args.decode(stored))

    def resolved_options(self) -> RunOptions:
        """Trigger options with the job's defaults filled in."""
        options = self.default_options
        return dataclasses.replace(
            options,
            priority=self.priority if options.priority is None else options.priority,
            queue=options.queue or self.queue,
        )


class _HasOptions(Protocol):
    name: str
    default_options: RunOptions


H = TypeVar("H", bound=_HasOptions)


def with_options(handle: H, **given: Any) -> H:
    """A copy of ``handle`` (a ``Job`` or a ``JobRef``) whose trigger options are its own with
    the ``given`` ones that are not ``None`` set, checked when set (``RunOptions``)."""
    try:
        merged = dataclasses.replace(
            handle.default_options, **{k: v for k, v in given.items() if v is not None}
        )
    except ConfigurationError as exc:
        raise ConfigurationError(f"job {handle.name!r}: {exc}") from None
    clone = object.__new__(type(handle))
    clone.__dict__.update(handle.__dict__)
    clone.default_options = merged
    return clone


def _split_signature(
    fn: Callable[..., Any],
) -> tuple[bool, inspect.Signature, dict[str, Any]]:
    """Drop a leading ``Context`` parameter: it is injected, not an argument."""
    signature = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn)
    except (NameError, TypeError) as exc:
        message = f"cannot resolve the annotations of {fn.__qualname__}: {exc}"
        raise ConfigurationError(message) from exc
    params = list(signature.parameters.values())
    takes_context = bool(params) and hints.get(params[0].name) is Context
    if takes_context:
        params = params[1:]
    if any(hints.get(p.name) is Context for p in params):
        raise ConfigurationError(f"{fn.__qualname__}: a Context parameter must come first")
    return takes_context, signature.replace(parameters=params), hints
