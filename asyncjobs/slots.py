"""Worker-local capacity: how many runs may execute in this process at once."""

from __future__ import annotations

import asyncio


class Slots:
    """A counting semaphore whose free count the claim loop can read.

    ``take`` never waits (the claim loop only claims what is free); ``take_when_free`` waits,
    for a job that gave its slot back while it waited on a child and now wants to go on.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._used = 0
        self._freed = asyncio.Condition()
        #: jobs in ``take_when_free``: only then does a freed slot need to tell anyone
        self._waiting = 0

    @property
    def free(self) -> int:
        return self.capacity - self._used

    def take(self) -> None:
        self._used += 1

    def give_back(self) -> None:
        self._used -= 1
        if self._waiting:  # a task per freed slot otherwise: one per run, for nobody
            asyncio.get_running_loop().create_task(self._notify())

    async def take_when_free(self) -> None:
        self._waiting += 1
        try:
            async with self._freed:
                await self._freed.wait_for(lambda: self._used < self.capacity)
                self._used += 1
        finally:
            self._waiting -= 1

    async def _notify(self) -> None:
        async with self._freed:
            self._freed.notify_all()
