"""Dashboard settings, checked when they are made."""

from __future__ import annotations

from dataclasses import dataclass

from asyncjobs.errors import ConfigurationError
from asyncjobs.feed import DEFAULT_GRACE
from asyncjobs.web.broadcast import DEFAULT_QUEUE_SIZE

#: Shortest accepted token: a guessable token is no protection.
MIN_TOKEN_CHARS = 16


@dataclass(frozen=True, slots=True)
class DashboardSettings:
    """How the dashboard is protected and how its streams behave.

    Parameters:
        token: when set, every API call needs it (``Authorization: Bearer <token>``, or the
            session cookie the viewer gets by opening ``/?token=<token>`` once). Required to
            serve on anything but a loopback address, unless ``insecure``.
        insecure: allow serving on a non-loopback address without a token (do not).
        allowed_hosts: ``Host`` header values accepted besides ``localhost`` / ``127.0.0.1``
            / ``[::1]`` when no token is set (the check stops DNS-rebinding attacks).
        allowed_origins: origins (``https://ops.example.com``) allowed to POST besides the
            dashboard's own.
        max_streams: open SSE streams at once (per process); more get ``503``.
        queue_size: batches an SSE subscriber may fall behind before it is dropped.
        ping_interval: seconds between keep-alive comments on idle streams.
        send_timeout: a stream whose client does not take a message for this long is closed.
        grace: seconds after which an event is streamed even if an older transaction
            somewhere on the server is still running (see ``asyncjobs.feed``).
        redact_unknown_jobs: hide the arguments of runs of jobs this app does not know
            (their redaction rules are unknown).
        title: shown in the viewer's header.
    """

    token: str | None = None
    insecure: bool = False
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    max_streams: int = 100
    queue_size: int = DEFAULT_QUEUE_SIZE
    ping_interval: float = 15.0
    send_timeout: float = 10.0
    grace: float = DEFAULT_GRACE
    redact_unknown_jobs: bool = True
    title: str = "asyncjobs"

    def __post_init__(self) -> None:
        if self.token is not None and len(self.token) < MIN_TOKEN_CHARS:
            raise ConfigurationError(
                f"the dashboard token must be at least {MIN_TOKEN_CHARS} characters"
            )
        if self.max_streams < 1 or self.queue_size < 1:
            raise ConfigurationError("max_streams and queue_size must be at least 1")
        if self.ping_interval <= 0 or self.send_timeout <= 0 or self.grace < 0:
            raise ConfigurationError("ping_interval and send_timeout must be positive")
        for name in ("allowed_hosts", "allowed_origins"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise ConfigurationError(f"{name} takes a list, not a string")
            object.__setattr__(self, name, tuple(value))
