"""One dedicated LISTEN connection per process, fanned out to in-process callbacks.

The connection reconnects with capped exponential backoff when it is lost (server restart,
``pg_terminate_backend``); after each (re)connect every callback gets a ``reconnected``
notification so it can catch up by polling whatever it may have missed. An outage is logged
once when it starts and once when it ends, not on every attempt.

``LOCAL_PEERS`` lets a statement's effect reach the listeners of this process at once: a
trigger wakes the in-process workers of its queues right after its insert returns, without
waiting for its NOTIFY to travel to the server and back (the NOTIFY still serves the other
processes, and these listeners too if the local wake-up was missed).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
import weakref
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


def parse_notification(payload: str, own_origin: str | None = None) -> Notification:
    """The JSON payload the SQL sends on channel ``asyncjobs`` → ``Notification``. One whose
    ``origin`` is ``own_origin`` wakes no claimer: they were woken locally (``LocalPeers``)."""
    try:
        data: dict[str, Any] = orjson.loads(payload) if payload else {}
        results = {int(run_id): value for run_id, value in (data.get("results") or {}).items()}
    except (orjson.JSONDecodeError, AttributeError, ValueError):
        logger.warning("ignoring a malformed notification: %.200r", payload)
        return Notification()
    echo = own_origin is not None and data.get("origin") == own_origin
    return Notification(
        queues=frozenset() if echo else frozenset(data.get("queues") or ()),
        done=frozenset(data.get("done") or ()),
        many_done=bool(data.get("many")),
        cancel=frozenset(data.get("cancel") or ()),
        cancel_many=bool(data.get("cancel_many")),
        all_queues=not echo and bool(data.get("all_queues")),
        events=True,
        results=results,
    )


class PostgresListener:
    """Owns the LISTEN connection; started by the first callback, stopped by ``stop()``."""

    def __init__(self, dsn: str, channel: str) -> None:
        self._dsn = dsn
        self._channel = channel
        self._callbacks: list[Listener] = []
        self._task: asyncio.Task[None] | None = None
        #: the event loop of the callbacks (a ``SyncClient`` runs its own loop in a thread)
        self._loop: asyncio.AbstractEventLoop | None = None
        #: the DSN under which it joined ``LOCAL_PEERS``, if it did
        self.peer_dsn: str | None = None
        self.connected = asyncio.Event()
        self.reconnects = 0

    def add(self, callback: Listener) -> None:
        self._callbacks.append(callback)
        if self._task is None:
            self._loop = asyncio.get_running_loop()
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

    @property
    def origin(self) -> str | None:
        """The ``origin`` of the statements whose wake-ups reach this listener locally
        (``LocalPeers``): their NOTIFY wakes no claimer again."""
        if self.peer_dsn is None or self._loop is None:
            return None
        return LOCAL_PEERS.origin(self.peer_dsn, self._loop)

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        self.dispatch(parse_notification(str(payload), self.origin))

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


class LocalPeers:
    """The listeners of this process by the DSN whose database they hear (see module doc).

    Only listeners of the running event loop are reached: the callbacks are not thread-safe,
    and a listener of another loop still gets the NOTIFY. ``origin`` names this process,
    loop and DSN in the NOTIFY of a statement whose wake-up was dispatched here, so those
    listeners do not wake their claimers a second time for it (an empty claim)."""

    def __init__(self) -> None:
        self._by_dsn: dict[str, list[PostgresListener]] = {}
        self._process = uuid.uuid4().hex[:12]
        self._dsn_ids: dict[str, int] = {}
        self._loop_ids: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, int] = (
            weakref.WeakKeyDictionary()
        )
        self._loops_seen = 0

    def origin(self, dsn: str, loop: asyncio.AbstractEventLoop) -> str:
        dsn_id = self._dsn_ids.setdefault(dsn, len(self._dsn_ids))
        loop_id = self._loop_ids.get(loop)
        if loop_id is None:  # numbered once: a closed loop's number is never reused
            loop_id = self._loop_ids[loop] = self._loops_seen
            self._loops_seen += 1
        return f"{self._process}:{loop_id}:{dsn_id}"

    def join(self, dsn: str, listener: PostgresListener) -> None:
        self._by_dsn.setdefault(dsn, []).append(listener)
        listener.peer_dsn = dsn

    def leave(self, dsn: str, listener: PostgresListener) -> None:
        peers = self._by_dsn.get(dsn, [])
        if listener in peers:
            peers.remove(listener)
        listener.peer_dsn = None
        if not peers:
            self._by_dsn.pop(dsn, None)

    def dispatch(self, dsn: str, notification: Notification) -> None:
        """Hand ``notification`` to the callbacks of every listener of ``dsn`` in this loop."""
        peers = self._by_dsn.get(dsn)
        if not peers:
            return
        loop = asyncio.get_running_loop()
        for listener in peers:
            if listener._loop is loop:
                listener.dispatch(notification)


LOCAL_PEERS = LocalPeers()


def _terminate_connection(connecting: asyncio.Future[asyncpg.Connection]) -> None:
    if connecting.cancelled() or connecting.exception() is not None:
        return
    connecting.result().terminate()
