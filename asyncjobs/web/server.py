"""Serving the dashboard with uvicorn, inside the running event loop.

``DashboardServer`` binds the socket itself, so the address is known (and port 0 works) before
the server starts, and it refuses a non-loopback address without a token (``check_bind``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from types import FrameType, TracebackType

import uvicorn

from asyncjobs.errors import ConfigurationError
from asyncjobs.web.dashboard import Dashboard
from asyncjobs.web.security import check_bind

#: Seconds uvicorn waits for open streams after a shutdown was asked for.
SHUTDOWN_TIMEOUT = 3


class DashboardServer:
    """``async with DashboardServer(dashboard, port=0) as server: print(server.url)``.

    ``await server.wait()`` serves until the server stops (Ctrl-C when run from the main
    thread: uvicorn handles the signal).
    """

    def __init__(
        self,
        dashboard: Dashboard,
        host: str = "127.0.0.1",
        port: int = 8000,
        *,
        log_level: str = "warning",
    ) -> None:
        check_bind(host, dashboard.settings)
        self.dashboard = dashboard
        self.host = host
        self.port = port
        self._config = uvicorn.Config(
            dashboard,
            log_level=log_level,
            lifespan="on",
            timeout_graceful_shutdown=SHUTDOWN_TIMEOUT,
            access_log=False,
        )
        self._server = _Server(self._config, dashboard)
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    async def __aenter__(self) -> DashboardServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        sock = _bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="dashboard")
        while not self._server.started:
            if self._task.done():
                await self._task  # raises what made it fail
                raise ConfigurationError("the dashboard server stopped while starting")
            await asyncio.sleep(0.01)

    async def wait(self) -> None:
        if self._task is not None:
            await asyncio.shield(self._task)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        self.dashboard.state.close_streams()  # open SSE streams would hold the shutdown up
        self._server.should_exit = True
        await task


class _Server(uvicorn.Server):
    """uvicorn's server, ending the dashboard's streams first when a signal stops it, so
    each stream finishes its response instead of being cut off mid-way."""

    def __init__(self, config: uvicorn.Config, dashboard: Dashboard) -> None:
        super().__init__(config)
        self._dashboard = dashboard

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        with contextlib.suppress(RuntimeError):  # no loop running: nothing to end
            loop = asyncio.get_running_loop()
            loop.call_soon_threadsafe(self._dashboard.state.close_streams)
        super().handle_exit(sig, frame)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigurationError(f"cannot listen on {host}:{port}: {exc}") from exc
    sock.listen(128)
    sock.setblocking(False)
    return sock
