"""The app the worker processes of ``test_schedules.py`` serve.

``every_second`` is a cluster-wide cron schedule with seconds (one run per tick, whichever
worker fires it); ``on_each_node`` fires every second on every worker, each copy claimable by
that worker only. The jobs do nothing: the test reads what happened from the runs table.
"""

from __future__ import annotations

from datetime import timedelta

from asyncjobs import App

app = App("sched")


@app.job(schedule="* * * * * *", misfire="all")
async def every_second() -> None:
    """Fired once per second across the cluster; ``all`` so a slow pass never coalesces."""


@app.job(every=timedelta(seconds=1), all_nodes=True, misfire="all")
async def on_each_node() -> None:
    """Fired once per second on every live worker."""
