"""The HTTP API (JSON via orjson) and the SSE streams, as starlette routes.

Every route closes over one ``DashboardState``; nothing lives in module globals, so two
dashboards in one process do not share anything but the code.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from asyncjobs.errors import DatabaseUnavailable
from asyncjobs.feed import SubscriptionEnded, TraceUpdate, feed_updates, trace_updates
from asyncjobs.runs import Trigger
from asyncjobs.web import models
from asyncjobs.web.http import (
    ApiError,
    JSONResponse,
    enabled_flag,
    int_param,
    json_body,
    last_event_id,
    optional_int,
    run_filters,
)
from asyncjobs.web.metrics_route import metrics_route
from asyncjobs.web.openapi import openapi_document
from asyncjobs.web.serialize import (
    dumps,
    event_model,
    jobs_model,
    run_model,
    run_summary,
    update_json,
)
from asyncjobs.web.views import ClusterApi

if TYPE_CHECKING:
    from asyncjobs.web.dashboard import DashboardState

STATIC = Path(__file__).parent / "static"
NO_STORE = {"cache-control": "no-store"}


class _Stream(EventSourceResponse):
    """An SSE response that releases its stream slot and subscription however it ends
    (even when the client leaves before the first byte)."""

    def __init__(
        self, content: AsyncIterator[ServerSentEvent], on_close: Callable[[], None], **options: Any
    ) -> None:
        super().__init__(content, **options)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


class Api:
    """The endpoints; see ``asyncjobs/web/openapi.py`` for their description."""

    def __init__(self, state: DashboardState) -> None:
        self.state = state
        self._routes: list[BaseRoute] = []
        self._document: bytes | None = None

    def routes(self) -> list[BaseRoute]:
        self._routes = [
            Route("/", self.index, methods=["GET"]),
            Route("/api/openapi.json", self.openapi, methods=["GET"]),
            Route("/api/runs", self.list_runs, methods=["GET"]),
            Route("/api/runs/{run_id:int}", self.get_run, methods=["GET"]),
            Route("/api/runs/{run_id:int}/tree", self.get_tree, methods=["GET"]),
            Route("/api/runs/{run_id:int}/events", self.run_events, methods=["GET"]),
            Route("/api/runs/{run_id:int}/cancel", self.cancel, methods=["POST"]),
            Route("/api/events", self.feed, methods=["GET"]),
            Route("/api/jobs", self.list_jobs, methods=["GET"]),
            Route("/api/jobs/{name}/trigger", self.trigger, methods=["POST"]),
            Route("/api/jobs/{name}/enabled", self.set_job_enabled, methods=["POST"]),
            Route("/api/queues/{name}/enabled", self.set_queue_enabled, methods=["POST"]),
            Route("/api/stats", self.stats, methods=["GET"]),
            metrics_route(self.state),
            *ClusterApi(self.state).routes(),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ]
        return self._routes

    # ------------------------------------------------------------------ pages

    async def index(self, request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-store"})

    async def openapi(self, request: Request) -> Response:
        if self._document is None:  # the app's jobs and the routes do not change
            document = openapi_document(self.state.app, self.state.redactor, self._routes)
            self._document = dumps(document)
        return Response(self._document, media_type="application/json", headers=NO_STORE)

    # ------------------------------------------------------------------ runs

    async def list_runs(self, request: Request) -> Response:
        client = await self.state.client()
        query = request.query_params
        limit = int_param(query.get("limit"), "limit", 50, 1, 1000)
        position = await client.events_position(self.state.settings.grace)
        page = await client.get_runs(
            **run_filters(request),
            limit=limit,
            cursor=optional_int(query.get("cursor"), "cursor"),
        )
        return JSONResponse(
            models.RunPage(
                runs=[run_summary(r, self.state.redactor) for r in page.runs],
                next_cursor=page.next_cursor,
                events_cursor=str(position),
            )
        )

    async def get_run(self, request: Request) -> Response:
        client = await self.state.client()
        run = await client.get_run(request.path_params["run_id"])
        return JSONResponse(models.RunDetail(run=run_model(run, self.state.redactor)))

    async def get_tree(self, request: Request) -> Response:
        client = await self.state.client()
        limit = int_param(request.query_params.get("limit"), "limit", 5000, 1, 5000)
        root, runs = await client.get_tree(request.path_params["run_id"], limit=limit + 1)
        return JSONResponse(
            models.Tree(
                root_run_id=root,
                runs=[run_model(r, self.state.redactor) for r in runs[:limit]],
                truncated=len(runs) > limit,
            )
        )

    async def run_events(self, request: Request) -> Response:
        """SSE of the run's whole tree, or (without ``Accept: text/event-stream``) the
        run's own stored events as JSON."""
        client = await self.state.client()
        run_id = request.path_params["run_id"]
        if "text/event-stream" not in request.headers.get("accept", ""):
            after = int_param(request.query_params.get("after"), "after", 0, 0, 2**63 - 1)
            limit = int_param(request.query_params.get("limit"), "limit", 1000, 1, 1000)
            events = await client.get_events(run_id, after, limit)
            return JSONResponse(models.Events(events=[event_model(e) for e in events]))
        root = await client.root_of(run_id)
        after_cursor = last_event_id(request)
        state = self.state
        with self._stream_slot() as release:
            subscription = state.broadcaster.subscribe(root)
            updates = trace_updates(
                client.backend, root, subscription, after=after_cursor, grace=state.settings.grace
            )
            return self._sse(_messages(updates, state, detail=True), release, subscription.end)

    async def feed(self, request: Request) -> Response:
        """SSE of every run change, for the run table: a snapshot of the first page of runs
        (filtered like ``/api/runs``) unless resuming, then the runs as they change."""
        client = await self.state.client()
        after = last_event_id(request)
        filters = run_filters(request)
        limit = int_param(request.query_params.get("limit"), "limit", 50, 1, 1000)
        state = self.state

        async def first_page() -> list[Any]:
            return (await client.get_runs(**filters, limit=limit)).runs

        with self._stream_slot() as release:
            subscription = state.broadcaster.subscribe(None)
            updates = feed_updates(
                client.backend,
                subscription,
                after=after,
                snapshot=first_page,
                grace=state.settings.grace,
            )
            return self._sse(_messages(updates, state, detail=False), release, subscription.end)

    def _sse(
        self,
        messages: AsyncIterator[ServerSentEvent],
        release: Callable[[], None],
        end: Callable[[str], None],
    ) -> Response:
        def on_close() -> None:
            end("closed")
            release()

        settings = self.state.settings
        return _Stream(
            messages,
            on_close,
            ping=settings.ping_interval,
            send_timeout=settings.send_timeout,
            headers={"cache-control": "no-store"},
        )

    @contextlib.contextmanager
    def _stream_slot(self) -> Iterator[Callable[[], None]]:
        """Take one of ``max_streams`` slots; the response gives it back when it ends."""
        state = self.state
        if state.streams >= state.settings.max_streams:
            raise ApiError(
                503,
                "TooManyStreams",
                f"{state.settings.max_streams} event streams are open already",
            )
        state.streams += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                state.streams -= 1

        try:
            yield release
        except BaseException:
            release()
            raise

    async def cancel(self, request: Request) -> Response:
        client = await self.state.client()
        body = await json_body(request)
        cascade = body.get("cascade", False)
        if not isinstance(cascade, bool):
            raise ApiError(400, "BadRequest", "cascade must be true or false")
        changed = await client.cancel(request.path_params["run_id"], cascade=cascade)
        return JSONResponse(
            models.Cancelled(runs=[models.CancelledRun(id=i, status=s) for i, s in changed])
        )

    # ------------------------------------------------------------------ jobs and queues

    async def list_jobs(self, request: Request) -> Response:
        client = await self.state.client()
        queues, jobs = await client.list_definitions()
        state = self.state
        return JSONResponse(
            jobs_model(state.app, state.redactor, state.settings.title, queues, jobs)
        )

    async def trigger(self, request: Request) -> Response:
        client = await self.state.client()
        body = await json_body(request)
        args = body.get("args", {})
        if not isinstance(args, dict):
            raise ApiError(422, "InvalidArguments", "args must be a JSON object", errors=[])
        run = await client.trigger_json(request.path_params["name"], args, Trigger.API)
        return JSONResponse(models.Triggered(id=run.id, job=run.job.name, created=run.created), 201)

    async def set_job_enabled(self, request: Request) -> Response:
        client = await self.state.client()
        enabled = enabled_flag(await json_body(request))
        name = client.app.get_job(request.path_params["name"]).name
        await client.set_job_enabled(name, enabled)
        return JSONResponse(models.Switched(name=name, enabled=enabled))

    async def set_queue_enabled(self, request: Request) -> Response:
        client = await self.state.client()
        enabled = enabled_flag(await json_body(request))
        name = request.path_params["name"]
        await client.set_queue_enabled(name, enabled)
        return JSONResponse(models.Switched(name=name, enabled=enabled))

    async def stats(self, request: Request) -> Response:
        await self.state.client()
        broadcast = self.state.broadcaster.stats()
        return JSONResponse(
            models.Stats(
                streams=self.state.streams,
                max_streams=self.state.settings.max_streams,
                broadcaster=models.BroadcasterStats(
                    subscribers=broadcast.subscribers,
                    reads=broadcast.reads,
                    batches=broadcast.batches,
                    events=broadcast.events,
                    dropped=broadcast.dropped,
                    max_queued=broadcast.max_queued,
                    queue_size=self.state.settings.queue_size,
                    position=None if broadcast.position is None else str(broadcast.position),
                ),
            )
        )


async def _messages(
    updates: AsyncGenerator[TraceUpdate, None], state: DashboardState, *, detail: bool
) -> AsyncIterator[ServerSentEvent]:
    """Updates → SSE messages; the first one tells the browser to reconnect after 1 s."""
    retry: int | None = 1000
    async with contextlib.aclosing(updates):
        try:
            async for update in updates:
                data = update_json(update, state.redactor, detail=detail).decode()
                yield ServerSentEvent(
                    data=data, event=update.kind.value, id=str(update.cursor), retry=retry
                )
                retry = None
        except (SubscriptionEnded, DatabaseUnavailable):
            return  # dropped, shutting down or no database: the browser resumes later
