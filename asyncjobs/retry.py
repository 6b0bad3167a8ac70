"""Retry policy: how many attempts a run gets and how long it waits between them."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from asyncjobs.errors import ConfigurationError

RetryOn = tuple[type[BaseException], ...] | Callable[[BaseException], bool]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``retries`` extra attempts after the first; exponential backoff with full jitter.

    The delay before attempt ``n + 1`` is a random value in
    ``[0, min(backoff_cap, backoff_base * 2 ** (n - 1))]`` (AWS "full jitter"), so that many
    runs failing together do not come back together. ``retry_on`` limits retries to some
    exception types, or to errors a predicate accepts; other errors fail the run at once.
    """

    retries: int = 0
    backoff_base: float = 1.0
    backoff_cap: float = 300.0
    retry_on: RetryOn = (Exception,)

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ConfigurationError("retries must be 0 or more")
        if self.backoff_base < 0 or self.backoff_cap < 0:
            raise ConfigurationError("backoff values must be 0 or more")

    @property
    def max_attempts(self) -> int:
        return self.retries + 1

    def should_retry(self, error: BaseException) -> bool:
        if isinstance(self.retry_on, tuple):
            return isinstance(error, self.retry_on)
        return bool(self.retry_on(error))

    def delay(self, failed_attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after attempt ``failed_attempt`` (counting from 1) failed."""
        ceiling = min(self.backoff_cap, self.backoff_base * 2 ** max(failed_attempt - 1, 0))
        return (rng or random).uniform(0, ceiling)
