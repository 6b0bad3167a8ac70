"""The composition root: it hands ``App`` the factories of what is built from it.

The package's import graph is a DAG in layers (``[tool.importlinter]`` in ``pyproject.toml``
is the contract ``.ci/run`` checks; ``tests/test_imports.py`` asserts there is no circle),
lowest first:

- rules, errors, runs, then small leaf modules (codec, retry, rates, schedules, ...);
- context: what a running job sees, and the current client, so ``job.trigger_async`` inside
  a job finds its client without importing ``asyncjobs.client``;
- backends: the storage ports and the PostgreSQL adapter;
- jobs (``Job`` and its options), then remote (jobs by name) and inputs, then feed;
- app: ``App``, a registry of jobs, queues, schedules and hooks;
- client, then scheduler, then worker and ``SyncClient``;
- web (the dashboard), the CLI operations and the testing helpers; this module; the CLI.

``App`` sits below what is built from it, so ``app.client(dsn)``, ``app.worker(dsn)`` and
``app.asgi(dsn)`` cannot import ``Client``, ``Worker`` or ``Dashboard``: the package's
``__init__`` calls ``wire_app`` once, which gives ``App`` the classes through
``asyncjobs.app.wire``. Imports under ``TYPE_CHECKING`` (annotations such as ``App.client``'s
return type) never run and are not part of the graph.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from asyncjobs.app import App, Builders, wire
from asyncjobs.backends.base import Backend
from asyncjobs.client import Client
from asyncjobs.worker import Worker

if TYPE_CHECKING:
    from asyncjobs.web import Dashboard


def dashboard(app: App, dsn: str | Backend, **settings: Any) -> Dashboard:
    """``app.asgi(dsn, **settings)``."""
    # imported on first use, so `import asyncjobs` does not load the web stack
    from asyncjobs.web import Dashboard, DashboardSettings

    return Dashboard(app, dsn, DashboardSettings(**settings))


def wire_app() -> None:
    wire(Builders(client=Client, worker=Worker, dashboard=dashboard))
