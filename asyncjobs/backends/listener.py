"""One dedicated LISTEN connection per process, fanned out to in-process callbacks.

The connection reconnects with capped exponential backoff when it is lost (server restart,
``pg_terminate_backend``); after each (re)connect every callback gets a ``reconnected``
notification so it can catch up by polling whatever it may have missed. An outage is logged
once when it starts and once when it ends, not on every attempt.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg
import orjson

from asyncjobs.backends.base import Listener, Notification

logger = logging.getLogger(__name__)

RECONNECT_MIN_DELAY = 0.05
RECONNECT_MAX_DELAY = 5.0
#: a connection lost sooner than this after it was made is not retried at once, but with
#: backoff, so a server that keeps dropping it is not hammered
STABLE_AFTER = 1.0
#: ``application_name`` of the LISTEN session (unless the DSN sets one), so operators and
#: tests can tell it apart in ``pg_stat_activity``
APPLICATION_NAME = "asyncjobs-listener"


def parse_notification(payload: str) -> Notification:
    """The JSON payload the SQL sends on channel ``asyncjobs`` → ``Notification``."""
    try:
        data: dict[str, Any] = orjson.loads(payload) if payload else {}
    except orjson.JSONDecodeError:
        logger.warning("ignoring a malformed notification: %.200r", payload)
        return Notification()
    return Notification(
        queues=frozenset(data.get("queues") or ()),
        done=frozenset(data.get("done") or ()),
        many_done=bool(data.get("many")),
        cancel=frozenset(data.get("cancel") or ()),
        cancel_many=bool(data.get("cancel_many")),
        all_queues=bool(data.get("all_queues")),
        events=True,
    )


class PostgresListener:
    """Owns the LISTEN connection; started by the first callback, stopped by ``stop()``."""

    def __init__(self, dsn: str, channel: str) -> None:
        self._dsn = dsn
        self._channel = channel
        self._callbacks: list[Listener] = []
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self.reconnects = 0

    def add(self, callback: Listener) -> None:
        self._callbacks.append(callback)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="asyncjobs-listener")

    def remove(self, callback: Listener) -> None:
        if callback in self._callbacks:
            self._callbacks.remove(callback)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def dispatch(self, notification: Notification) -> None:
        """Hand ``notification`` to every callback (also used for wake-ups that come from
        no NOTIFY, e.g. a test clock moved)."""
        for callback in list(self._callbacks):
            try:
                callback(notification)
            except Exception:
                logger.exception("a notification callback failed")

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        self.dispatch(parse_notification(str(payload)))

    async def _run(self) -> None:
        delay = RECONNECT_MIN_DELAY
        outage_logged = False
        first = True
        while True:
            lost = asyncio.Event()
            conn = await self._connect(lost)
            if conn is None:
                if not outage_logged:
                    logger.warning("LISTEN connection unavailable; retrying with backoff")
                    outage_logged = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_DELAY)
                continue
            if outage_logged:
                logger.warning("LISTEN connection restored")
            outage_logged = False
            up_since = asyncio.get_running_loop().time()
            probe = asyncio.create_task(self._probe(conn, lost))
            try:
                self.connected.set()
                if not first:
                    self.reconnects += 1
                # on the first connect too: a caller that subscribed while we were connecting
                # may have missed something, and catches up by checking once
                self.dispatch(Notification(reconnected=True, events=True))
                first = False
                await lost.wait()
            finally:
                self.connected.clear()
                probe.cancel()
                await self._close(conn)
            logger.warning("LISTEN connection lost; reconnecting")
            outage_logged = True
            if asyncio.get_running_loop().time() - up_since >= STABLE_AFTER:
                delay = RECONNECT_MIN_DELAY  # it had been fine: reconnect at once
            else:
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_DELAY)

    async def _connect(self, lost: asyncio.Event) -> asyncpg.Connection | None:
        settings = {} if "application_name" in self._dsn else {"application_name": APPLICATION_NAME}
        connecting = asyncio.ensure_future(
            asyncpg.connect(self._dsn, timeout=5, server_settings=settings)
        )
        try:
            conn: asyncpg.Connection = await asyncio.shield(connecting)
        except asyncio.CancelledError:
            # stopped while connecting: asyncpg would leak a connection cancelled half-way
            # (an unclosed socket), so let it finish and close it then
            connecting.add_done_callback(_terminate_connection)
            raise
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            return None
        try:
            conn.add_termination_listener(lambda _conn: lost.set())
            await conn.add_listener(self._channel, self._on_notify)
        except BaseException as exc:  # cancelled too: the connection is not handed out
            conn.terminate()
            if isinstance(exc, OSError | asyncpg.PostgresError | asyncpg.InterfaceError
                          | TimeoutError):  # fmt: skip
                return None
            raise
        return conn

    @staticmethod
    async def _probe(conn: asyncpg.Connection, lost: asyncio.Event) -> None:
        """An idle connection notices a dead socket only when it next reads; ask every 2 s."""
        while not conn.is_closed():
            await asyncio.sleep(2.0)
            try:
                await asyncio.wait_for(conn.fetchval("SELECT 1"), timeout=5)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                break
        lost.set()

    @staticmethod
    async def _close(conn: asyncpg.Connection) -> None:
        try:
            await asyncio.wait_for(conn.close(), timeout=1)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            conn.terminate()


def _terminate_connection(connecting: asyncio.Future[asyncpg.Connection]) -> None:
    if connecting.cancelled() or connecting.exception() is not None:
        return
    connecting.result().terminate()
