"""Progress and log events of running jobs: a rate limit per run, and ``logging`` capture.

Every run gets an :class:`EventGate` between its ``Context`` and the worker's event batcher.
A token bucket lets ``burst`` events through at once and ``rate`` per second after that:

* progress updates over the rate are coalesced: only the latest is kept and sent when the
  bucket refills (and at the end of the run), so the stored progress is never stale;
* log lines over the rate are dropped and counted; a ``log_dropped`` event with the count
  (``{"dropped": n}``) is written when the bucket refills, so the gap is visible.

Sizes are bounded too: each message is cut at ``rules.MAX_MESSAGE_CHARS`` and made storable
(``rules.storable``).

:class:`RunLogCapture` is a ``logging.Handler`` on the root logger (installed while a worker
runs): a record emitted inside a job — in its task, or in a thread started with
``asyncio.to_thread`` (which copies the context) — at INFO or above goes to that run's log,
through the same gate. Records of asyncjobs' own loggers are left out (they describe the
worker, and capturing them could loop). The logger's own level still applies first: with
the root logger at WARNING (Python's default), ``logger.info`` records are never emitted.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from asyncjobs.errors import ConfigurationError
from asyncjobs.rules import MAX_MESSAGE_CHARS, storable

#: Events per second one run may write, sustained (``Worker(event_rate=...)``).
DEFAULT_EVENT_RATE = 20.0
#: Events one run may write at once before the rate applies (``Worker(event_burst=...)``).
DEFAULT_EVENT_BURST = 100

Event = tuple[int, int, str, dict[str, Any]]
Sink = Callable[[Event], "asyncio.Future[None]"]

_current_gate: contextvars.ContextVar[EventGate | None] = contextvars.ContextVar(
    "asyncjobs_current_gate", default=None
)


@dataclass
class GateStats:
    sent: int = 0
    #: progress updates replaced by a later one before they were sent
    coalesced: int = 0
    #: log lines dropped over the rate
    dropped: int = 0


class EventGate:
    """The rate limit of one run's events (see the module docstring)."""

    def __init__(
        self,
        run_id: int,
        attempt: int,
        sink: Sink,
        *,
        rate: float = DEFAULT_EVENT_RATE,
        burst: int = DEFAULT_EVENT_BURST,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not rate > 0 or burst < 1:
            raise ValueError("event rate must be positive and burst at least 1")
        self.run_id = run_id
        self.attempt = attempt
        self.stats = GateStats()
        self._sink = sink
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._refilled_at = clock()
        self._held_progress: dict[str, Any] | None = None
        self._unreported_drops = 0
        self._timer: asyncio.TimerHandle | None = None
        self._inflight: set[asyncio.Future[None]] = set()
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()  # the loop's thread: gates are made in run tasks

    def activate(self) -> None:
        """Make this the gate of the current task (and threads it starts): log capture."""
        _current_gate.set(self)

    async def emit(self, run_id: int, attempt: int, kind: str, data: dict[str, Any]) -> None:
        """``Context._emit``: wait for the event to be stored, unless held back or dropped."""
        future = self.offer(kind, data)
        if future is not None:
            await future

    def offer(self, kind: str, data: dict[str, Any]) -> asyncio.Future[None] | None:
        """Send now if the rate allows (returns the write's future), else hold or drop."""
        if self._closed:
            return None  # e.g. a task the job left behind logs after the run ended
        if self._take_token():
            if kind == "progress":
                self._held_progress = None  # superseded
            return self._send(kind, data)
        if kind == "progress":
            if self._held_progress is not None:
                self.stats.coalesced += 1
            self._held_progress = data
        else:
            self.stats.dropped += 1
            self._unreported_drops += 1
        self._arm_timer()
        return None

    def offer_threadsafe(self, kind: str, data: dict[str, Any]) -> None:
        """``offer`` from any thread (log records of ``asyncio.to_thread`` work)."""
        if threading.get_ident() == self._thread:
            self.offer(kind, data)
        else:
            self._loop.call_soon_threadsafe(self.offer, kind, data)

    async def close(self) -> None:
        """The run ends: send what is held back (whatever the rate) and wait until every
        event is stored, so none arrives after the run left ``running`` (it would be fenced
        off)."""
        if not self._closed:
            self._release_held()
        self.discard()
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)

    def discard(self) -> None:
        """Accept nothing more and forget what is held back (the run ended abruptly)."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # ------------------------------------------------------------------ internals

    def _take_token(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._refilled_at) * self._rate)
        self._refilled_at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def _arm_timer(self) -> None:
        if self._timer is None:
            delay = max(0.0, (1.0 - self._tokens) / self._rate)
            self._timer = self._loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._closed:
            return
        if self._take_token():
            self._release_held()
        else:
            self._arm_timer()

    def _release_held(self) -> None:
        if self._unreported_drops:
            self._send("log_dropped", {"dropped": self._unreported_drops})
            self._unreported_drops = 0
        if self._held_progress is not None:
            self._send("progress", self._held_progress)
            self._held_progress = None

    def _send(self, kind: str, data: dict[str, Any]) -> asyncio.Future[None]:
        self.stats.sent += 1
        future = self._sink((self.run_id, self.attempt, kind, data))
        self._inflight.add(future)
        future.add_done_callback(self._settled)
        return future

    def _settled(self, future: asyncio.Future[None]) -> None:
        self._inflight.discard(future)
        if not future.cancelled():
            future.exception()  # retrieved: a failed flush is logged by the batcher


class RunReporting:
    """Creates the gates of one worker's runs and owns its share of the log capture."""

    def __init__(self, sink: Sink, *, rate: float, burst: int) -> None:
        if not rate > 0 or burst < 1:
            raise ConfigurationError("event_rate must be positive and event_burst at least 1")
        self._sink = sink
        self.rate = rate
        self.burst = burst
        self._capturing = False

    def open(self, run_id: int, attempt: int) -> EventGate:
        """The gate of one attempt, made current for the calling task."""
        gate = EventGate(run_id, attempt, self._sink, rate=self.rate, burst=self.burst)
        gate.activate()
        return gate

    def start_capture(self) -> None:
        if not self._capturing:
            _CAPTURE.acquire()
            self._capturing = True

    def stop_capture(self) -> None:
        if self._capturing:
            _CAPTURE.release()
            self._capturing = False


# ---------------------------------------------------------------------- logging capture


class RunLogCapture(logging.Handler):
    """Forwards ``logging`` records emitted inside a job to the run's log (see module doc)."""

    def __init__(self, level: int = logging.INFO) -> None:
        super().__init__(level)
        self._busy = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "asyncjobs" or record.name.startswith("asyncjobs."):
            return
        gate = _current_gate.get()
        if gate is None or getattr(self._busy, "active", False):
            return
        self._busy.active = True  # whatever logs while we forward is not forwarded again
        try:
            gate.offer_threadsafe("log", self._data(record))
        except Exception:
            self.handleError(record)
        finally:
            self._busy.active = False

    def _data(self, record: logging.LogRecord) -> dict[str, Any]:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + _FORMATTER.formatException(record.exc_info)
        return {
            "level": _level(record.levelno),
            "message": storable(message, MAX_MESSAGE_CHARS),
            "logger": storable(record.name),
        }


_FORMATTER = logging.Formatter()


def _level(levelno: int) -> str:
    for threshold, name in (
        (logging.CRITICAL, "critical"),
        (logging.ERROR, "error"),
        (logging.WARNING, "warning"),
    ):
        if levelno >= threshold:
            return name
    return "info"


class _SharedCapture:
    """One handler on the root logger for all workers of the process (installed while at
    least one runs), so a record is forwarded once even with several workers."""

    def __init__(self) -> None:
        self.handler = RunLogCapture()
        self._users = 0
        self._lock = threading.Lock()

    def acquire(self) -> None:
        with self._lock:
            self._users += 1
            if self._users == 1:
                logging.getLogger().addHandler(self.handler)

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0:
                logging.getLogger().removeHandler(self.handler)


_CAPTURE = _SharedCapture()
