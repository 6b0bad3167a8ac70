"""The endpoints of the dashboard's cluster views: workers, schedules, queue activity, and
"why pending" / "run it again" for one run. Everything goes through the client's public API;
the security middleware (token, CSRF on POST, headers) covers these like every ``/api`` path.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from asyncjobs.explain import DEFAULT_WORKER_TTL
from asyncjobs.web import models
from asyncjobs.web.http import JSONResponse, enabled_flag, int_param, json_body
from asyncjobs.web.serialize import (
    activity_model,
    explanation_model,
    schedule_model,
    worker_model,
)

if TYPE_CHECKING:
    from asyncjobs.web.dashboard import DashboardState


class ClusterApi:
    """``/api/workers``, ``/api/schedules``, ``/api/activity``, ``/api/runs/{id}/explain``
    and ``/api/runs/{id}/retry`` (bodies in ``models.py``, described in ``openapi.py``)."""

    def __init__(self, state: DashboardState) -> None:
        self.state = state

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/api/workers", self.workers, methods=["GET"]),
            Route("/api/schedules", self.schedules, methods=["GET"]),
            Route("/api/schedules/{name}/enabled", self.set_schedule_enabled, methods=["POST"]),
            Route("/api/activity", self.activity, methods=["GET"]),
            Route("/api/runs/{run_id:int}/explain", self.explain, methods=["GET"]),
            Route("/api/runs/{run_id:int}/retry", self.retry, methods=["POST"]),
        ]

    async def workers(self, request: Request) -> Response:
        client = await self.state.client()
        ttl = int_param(request.query_params.get("ttl"), "ttl", int(DEFAULT_WORKER_TTL), 1, 86400)
        workers = await client.get_workers(worker_ttl=ttl)
        return JSONResponse(
            models.Workers(worker_ttl=ttl, workers=[worker_model(w) for w in workers])
        )

    async def schedules(self, request: Request) -> Response:
        client = await self.state.client()
        schedules = await client.get_schedules()
        redactor = self.state.redactor
        return JSONResponse(
            models.Schedules(schedules=[schedule_model(s, redactor) for s in schedules])
        )

    async def set_schedule_enabled(self, request: Request) -> Response:
        client = await self.state.client()
        enabled = enabled_flag(await json_body(request))
        name = request.path_params["name"]
        await client.set_schedule_enabled(name, enabled)
        return JSONResponse(models.Switched(name=name, enabled=enabled))

    async def activity(self, request: Request) -> Response:
        client = await self.state.client()
        window = int_param(request.query_params.get("window"), "window", 3600, 60, 86400)
        return JSONResponse(activity_model(await client.activity(timedelta(seconds=window))))

    async def explain(self, request: Request) -> Response:
        client = await self.state.client()
        return JSONResponse(explanation_model(await client.explain(request.path_params["run_id"])))

    async def retry(self, request: Request) -> Response:
        client = await self.state.client()
        await json_body(request)  # the content type is checked like every POST's
        old = request.path_params["run_id"]
        run = await client.retry(old)
        return JSONResponse(
            models.Retried(id=run.id, job=run.job.name, created=run.created, retry_of=old), 201
        )
