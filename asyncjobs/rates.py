"""Rate limits: at most N starts per period of a job or a queue, across the cluster.

Declared as ``"10/s"``, ``"100/m"``, ``"5/h"``, ``"1000/d"`` (also ``"3/250ms"``,
``"20/5s"``), or as ``(count, timedelta)``. Claims enforce them on the database clock (see
``asyncjobs.claim_runs``): runs over the limit stay pending and start when the window allows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

from asyncjobs.errors import ConfigurationError

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_TEXT = re.compile(r"^\s*(\d+)\s*/\s*(\d*(?:\.\d+)?)\s*(ms|s|min|m|h|d)\s*$")
#: the stored count is a PostgreSQL integer
_MAX_COUNT = 2**31 - 1

RateLimitSpec = str | tuple[int, timedelta]


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``count`` starts in any window of ``period``."""

    count: int
    period: timedelta

    @staticmethod
    def parse(spec: RateLimitSpec | None, owner: str) -> RateLimit | None:
        if spec is None:
            return None
        if isinstance(spec, str):
            match = _TEXT.match(spec)
            if match is None:
                raise ConfigurationError(
                    f"{owner}: rate_limit {spec!r} is not like '10/s', '100/m' or '20/5s'"
                )
            count, size, unit = match.groups()
            period = timedelta(seconds=float(size or 1) * _UNITS[unit])
            return RateLimit._checked(int(count), period, owner)
        if (
            isinstance(spec, tuple)
            and len(spec) == 2
            and isinstance(spec[0], int)
            and not isinstance(spec[0], bool)
            and isinstance(spec[1], timedelta)
        ):
            return RateLimit._checked(spec[0], spec[1], owner)
        raise ConfigurationError(f"{owner}: rate_limit must be like '10/s' or (10, timedelta)")

    @staticmethod
    def _checked(count: int, period: timedelta, owner: str) -> RateLimit:
        if not 1 <= count <= _MAX_COUNT:
            raise ConfigurationError(f"{owner}: a rate limit allows 1 or more starts")
        if period < timedelta(milliseconds=1):
            raise ConfigurationError(f"{owner}: a rate limit's period must be 1 ms or longer")
        return RateLimit(count, period)
