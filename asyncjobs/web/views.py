"""The endpoints of the dashboard's cluster views: workers, schedules, queue activity, and
"why pending" / "run it again" for one run. Everything goes through the client's public API;
the security middleware (token, CSRF on POST, headers) covers these like every ``/api`` path.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from asyncjobs.activity import Activity, FinishedCount, WorkerState
from asyncjobs.explain import DEFAULT_WORKER_TTL, Explanation
from asyncjobs.gauges import Load
from asyncjobs.schedules import ScheduleState
from asyncjobs.web.http import JSONResponse, enabled_flag, int_param, json_body
from asyncjobs.web.serialize import Redactor

if TYPE_CHECKING:
    from asyncjobs.web.dashboard import DashboardState


class ClusterApi:
    """``/api/workers``, ``/api/schedules``, ``/api/activity``, ``/api/runs/{id}/explain``
    and ``/api/runs/{id}/retry`` (described in ``asyncjobs/web/openapi.py``)."""

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
        return JSONResponse({"worker_ttl": ttl, "workers": [worker_json(w) for w in workers]})

    async def schedules(self, request: Request) -> Response:
        client = await self.state.client()
        schedules = await client.get_schedules()
        redactor = self.state.redactor
        return JSONResponse({"schedules": [schedule_json(s, redactor) for s in schedules]})

    async def set_schedule_enabled(self, request: Request) -> Response:
        client = await self.state.client()
        enabled = enabled_flag(await json_body(request))
        name = request.path_params["name"]
        await client.set_schedule_enabled(name, enabled)
        return JSONResponse({"name": name, "enabled": enabled})

    async def activity(self, request: Request) -> Response:
        client = await self.state.client()
        window = int_param(request.query_params.get("window"), "window", 3600, 60, 86400)
        return JSONResponse(activity_json(await client.activity(timedelta(seconds=window))))

    async def explain(self, request: Request) -> Response:
        client = await self.state.client()
        return JSONResponse(explanation_json(await client.explain(request.path_params["run_id"])))

    async def retry(self, request: Request) -> Response:
        client = await self.state.client()
        await json_body(request)  # the content type is checked like every POST's
        old = request.path_params["run_id"]
        run = await client.retry(old)
        return JSONResponse(
            {"id": run.id, "job": run.job.name, "created": run.created, "retry_of": old}, 201
        )


def worker_json(worker: WorkerState) -> dict[str, Any]:
    return {
        "id": worker.id,
        "host": worker.host,
        "pid": worker.pid,
        "queues": list(worker.queues),
        "jobs": list(worker.jobs),
        "concurrency": worker.concurrency,
        "running": worker.running,
        "runs": [{"id": run_id, "job": job} for run_id, job in worker.runs],
        "started_at": worker.started_at,
        "heartbeat_at": worker.heartbeat_at,
        "silent_for": worker.silent_for,
        "alive": worker.alive,
    }


def schedule_json(schedule: ScheduleState, redactor: Redactor) -> dict[str, Any]:
    """A schedule; its arguments are redacted by its job's rules like a run's."""
    return {
        "name": schedule.name,
        "job": schedule.job,
        "cron": schedule.cron,
        "every": None if schedule.every is None else schedule.every.total_seconds(),
        "timezone": schedule.timezone,
        "misfire": str(schedule.misfire),
        "all_nodes": schedule.all_nodes,
        "enabled": schedule.enabled,
        "paused": schedule.paused,
        "next_fire_at": schedule.next_fire_at,
        "last_fire_at": schedule.last_fire_at,
        "args": redactor.args(schedule.job, schedule.args),
    }


def activity_json(activity: Activity) -> dict[str, Any]:
    return {
        "at": activity.at,
        "window": activity.window.total_seconds(),
        "queues": [_load_json(q) for q in activity.queues],
        "job_loads": [_load_json(j) for j in activity.job_loads],
        "minutes": [_count_json(c) for c in activity.minutes],
        "jobs": [_count_json(c) | {"p50": c.p50, "p95": c.p95} for c in activity.jobs],
    }


def _load_json(load: Load) -> dict[str, Any]:
    return {
        "name": load.name,
        "pending": load.pending,
        "ready": load.ready,
        "oldest_age": load.oldest_age,
        "running": load.running,
        "max_concurrency": load.limit,
        "enabled": load.enabled,
    }


def _count_json(count: FinishedCount) -> dict[str, Any]:
    return {
        "minute": count.minute,
        "job": count.job,
        "queue": count.queue,
        "succeeded": count.succeeded,
        "failed": count.failed,
        "cancelled": count.cancelled,
    }


def explanation_json(explanation: Explanation) -> dict[str, Any]:
    return {
        "run_id": explanation.run_id,
        "status": explanation.status.value,
        "blocked": explanation.blocked,
        "reasons": [
            {"code": r.code.value, "message": r.message, "data": r.data}
            for r in explanation.reasons
        ],
    }
