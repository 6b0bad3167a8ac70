"""The dashboard as one ASGI app: ``app.asgi(dsn)`` builds it, uvicorn or a host app serves it.

It owns a client (for reads, triggers and cancels) and the process's broadcaster. Both start
with the ASGI lifespan when the dashboard is served on its own, or through
``dashboard.lifespan`` in a host app's lifespan. Mounted without that (starlette does not
pass lifespan events to mounted apps), they start on the first request instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette

from asyncjobs.backends.base import Backend
from asyncjobs.web.broadcast import Broadcaster
from asyncjobs.web.http import EXCEPTION_HANDLERS
from asyncjobs.web.redaction import Redactor
from asyncjobs.web.routes import Api
from asyncjobs.web.security import Receive, Scope, SecurityMiddleware, Send
from asyncjobs.web.settings import DashboardSettings

if TYPE_CHECKING:
    from asyncjobs.app import App
    from asyncjobs.client import Client


class DashboardState:
    """What the routes share: the app, its client, the broadcaster and the stream count."""

    def __init__(self, app: App, dsn: str | Backend, settings: DashboardSettings) -> None:
        self.app = app
        self.settings = settings
        self.redactor = Redactor(app, redact_unknown_jobs=settings.redact_unknown_jobs)
        #: SSE streams open now
        self.streams = 0
        self._dsn = dsn
        self._client: Client | None = None
        self._broadcaster: Broadcaster | None = None
        self._lock = asyncio.Lock()

    @property
    def broadcaster(self) -> Broadcaster:
        if self._broadcaster is None:
            raise RuntimeError("the dashboard is not started")
        return self._broadcaster

    async def client(self) -> Client:
        """The open client, starting everything on first use."""
        if self._client is None:
            await self.start()
        assert self._client is not None
        return self._client

    async def start(self) -> None:
        async with self._lock:
            if self._client is not None:
                return
            client = self.app.client(self._dsn)
            await client.__aenter__()
            broadcaster = Broadcaster(
                client.backend, queue_size=self.settings.queue_size, grace=self.settings.grace
            )
            await broadcaster.start()
            self._client, self._broadcaster = client, broadcaster

    async def stop(self) -> None:
        async with self._lock:
            client, self._client = self._client, None
            if self._broadcaster is not None:
                await self._broadcaster.stop()  # ends every open stream
            if client is not None:
                await client.__aexit__(None, None, None)

    def close_streams(self) -> None:
        """End every open SSE stream now (before a server shuts down)."""
        if self._broadcaster is not None:
            self._broadcaster.end_all("shutdown")


class Dashboard:
    """The dashboard's ASGI app (see the module docstring); build it with ``App.asgi``."""

    def __init__(self, app: App, dsn: str | Backend, settings: DashboardSettings) -> None:
        self.settings = settings
        self.state = DashboardState(app, dsn, settings)
        router = Starlette(
            routes=Api(self.state).routes(),
            exception_handlers=EXCEPTION_HANDLERS,
            lifespan=self.lifespan,
        )
        self._asgi = SecurityMiddleware(router, settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._asgi(scope, receive, send)

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Any = None) -> AsyncIterator[None]:
        """Start the client and broadcaster; stop them (ending every stream) on exit."""
        await self.state.start()
        try:
            yield
        finally:
            await self.state.stop()
