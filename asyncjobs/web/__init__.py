"""The dashboard: HTTP API, live SSE streams and the trace viewer.

``app.asgi(dsn, **settings)`` builds it (a ``Dashboard``, an ASGI app); ``DashboardServer``
serves it with uvicorn; ``asyncjobs dashboard module:app`` does both from the command line.
"""

from asyncjobs.web.broadcast import Broadcaster as Broadcaster
from asyncjobs.web.broadcast import BroadcastStats as BroadcastStats
from asyncjobs.web.dashboard import Dashboard as Dashboard
from asyncjobs.web.server import DashboardServer as DashboardServer
from asyncjobs.web.settings import DashboardSettings as DashboardSettings

__all__ = ("BroadcastStats", "Broadcaster", "Dashboard", "DashboardServer", "DashboardSettings")
