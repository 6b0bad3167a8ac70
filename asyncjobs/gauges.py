"""The cluster's gauges as one database read finds them (for ``/metrics``; asyncjobs/metrics.py
turns them into Prometheus families)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Load:
    """One queue's or one job's load right now."""

    name: str
    #: pending runs, scheduled ones (``not_before`` ahead) included
    pending: int
    #: pending runs whose ``not_before`` has passed: claimable but for limits and workers
    ready: int
    #: seconds the oldest ready pending run has waited since it became ready (0: none)
    oldest_age: float
    running: int
    #: the cluster-wide limit, ``None`` when unlimited
    limit: int | None
    enabled: bool


@dataclass(frozen=True, slots=True)
class ClusterGauges:
    queues: tuple[Load, ...]
    jobs: tuple[Load, ...]
    #: workers whose heartbeat is recent, and their concurrency (worker slots) summed
    workers_alive: int
    worker_slots: int
