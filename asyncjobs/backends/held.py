"""One pooled connection kept between the uses of a single user (group commit's sender).

Taking a connection from asyncpg's pool and giving it back costs more Python than a one-row
insert itself (a proxy per acquire; a task, a shield and a timer per release), so the
enqueue path keeps the connection it used. It goes back to the pool after ``idle`` seconds
without a use, as soon as a use fails (a cancelled statement, a lost connection: the pool
knows how to clean up after those), and on close. Only one use may run at a time; the
caller (``GroupCommit``) guarantees it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

A = TypeVar("A")
X = TypeVar("X")

#: seconds a kept connection may stay unused before it goes back to the pool
DEFAULT_IDLE = 1.0


class HeldConnection:
    """``errors``: the backend's ``translate_errors``, around taking a connection."""

    def __init__(
        self,
        errors: Callable[[], contextlib.AbstractContextManager[None]],
        idle: float = DEFAULT_IDLE,
    ) -> None:
        self._errors = errors
        self._idle = idle
        self._pool: asyncpg.Pool | None = None
        self._conn: PoolConnectionProxy[Any] | None = None
        self._in_use = False
        self._last_used = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._releases: set[asyncio.Task[None]] = set()

    def open(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def use(
        self, work: Callable[[PoolConnectionProxy[Any], A], Awaitable[X]], argument: A
    ) -> X:
        """``work(connection, argument)`` on the kept connection (taken from the pool first
        if none is kept)."""
        pool = self._pool
        if pool is None:
            raise RuntimeError("the backend is not open; use `async with` on the client/worker")
        conn = self._conn
        if conn is None:
            with self._errors():
                conn = self._conn = await pool.acquire()
        self._in_use = True
        try:
            result = await work(conn, argument)
        except BaseException:
            self._conn = None
            with contextlib.suppress(Exception):  # the work's own error is the one to report
                await pool.release(conn)
            raise
        finally:
            self._in_use = False
        if self._pool is None:  # closed meanwhile: give it back now
            self._conn = None
            await pool.release(conn)
        else:
            self._last_used = asyncio.get_running_loop().time()
            if self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(self._idle, self._expire)
        return result

    async def close(self) -> None:
        """Give the connection back (one in use goes back when its use ends)."""
        pool, self._pool = self._pool, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if pool is not None and self._conn is not None and not self._in_use:
            conn, self._conn = self._conn, None
            await pool.release(conn)
        if self._releases:
            await asyncio.gather(*self._releases, return_exceptions=True)

    def _expire(self) -> None:
        """The idle timer: give the connection back if unused for ``idle`` seconds, else
        look again when that time is up (one timer, not one per use)."""
        self._timer = None
        if self._conn is None or self._pool is None:
            return
        loop = asyncio.get_running_loop()
        unused = loop.time() - self._last_used
        if self._in_use or unused < self._idle:
            delay = self._idle if self._in_use else self._idle - unused
            self._timer = loop.call_later(delay, self._expire)
            return
        conn, self._conn = self._conn, None
        task = loop.create_task(self._pool.release(conn))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)
