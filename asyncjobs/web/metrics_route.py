"""``GET /metrics``: the dashboard's Prometheus endpoint (see asyncjobs/metrics.py).

Guarded like the API (asyncjobs/web/security.py): loopback only without a token, the bearer
token (Prometheus' ``authorization`` setting) or the session cookie with one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from asyncjobs.explain import DEFAULT_WORKER_TTL
from asyncjobs.web.http import ApiError

if TYPE_CHECKING:
    from asyncjobs.metrics import ClusterMetrics
    from asyncjobs.web.dashboard import DashboardState


def metrics_route(state: DashboardState) -> Route:
    cluster: ClusterMetrics | None = None

    async def endpoint(request: Request) -> Response:
        nonlocal cluster
        # imported on the first scrape: prometheus_client's import takes ~0.1 s
        from asyncjobs import metrics

        if not metrics.METRICS:
            raise ApiError(501, "NotImplemented", "install asyncjobs[metrics] for /metrics")
        if cluster is None:
            cluster = metrics.ClusterMetrics(DEFAULT_WORKER_TTL, lambda: state.streams)
        client = await state.client()
        body = await cluster.render(client.backend)
        headers = {"cache-control": "no-store"}
        return Response(body, media_type=metrics.CONTENT_TYPE, headers=headers)

    return Route("/metrics", endpoint, methods=["GET"])
