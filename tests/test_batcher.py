"""The batcher never drops an item and never fails a neighbour (issue 10, item 1).

A fake store stands for the database: it refuses any batch that holds a bad item (as
PostgreSQL refuses a whole statement) and can be down for a number of flushes (an outage).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from asyncjobs.backends.postgres import translate_errors
from asyncjobs.batcher import Batcher
from asyncjobs.errors import DatabaseBusy, DatabaseError, DatabaseUnavailable

pytestmark = pytest.mark.anyio

Item = tuple[int, str]  # (run id, payload)
Start = Callable[[Batcher[Item]], Awaitable[None]]


class Store:
    def __init__(
        self, bad: set[str] | None = None, down_for: int = 0, busy_for: int = 0
    ) -> None:
        self.bad = bad or set()
        self.down_for = down_for
        self.busy_for = busy_for
        #: called before each flush: lets a test start an outage in the middle
        self.before: Callable[[Store, list[Item]], None] = lambda store, items: None
        self.flushes: list[list[Item]] = []
        self.stored: list[Item] = []

    async def flush(self, items: list[Item]) -> None:
        self.before(self, items)
        self.flushes.append(list(items))
        await asyncio.sleep(0)
        if self.down_for > 0:
            self.down_for -= 1
            raise DatabaseUnavailable("connection refused")
        if self.busy_for > 0:
            self.busy_for -= 1
            raise DatabaseBusy("deadlock detected")
        refused = [payload for _, payload in items if payload in self.bad]
        if refused:
            raise DatabaseError(f"cannot store {refused[0]!r}")
        self.stored.extend(items)


def repaired(item: Item, error: Exception, step: int) -> Item | None:
    return (item[0], f"repaired {item[1]} ({error})") if step == 1 else None


@pytest.fixture
async def running() -> AsyncIterator[Start]:
    """Starts a batcher's flush loop; cancels it after the test."""
    tasks: list[asyncio.Task[None]] = []

    async def start(batcher: Batcher[Item]) -> None:
        tasks.append(asyncio.create_task(batcher.run()))

    yield start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _items(count: int, bad_at: set[int] | None = None) -> list[Item]:
    return [(1000 + n, f"bad-{n}" if n in (bad_at or ()) else f"ok-{n}") for n in range(count)]


async def test_a_batch_without_bad_items_is_one_flush(running: Start) -> None:
    store = Store()
    batcher = Batcher("t", store.flush, repair=repaired)
    items = _items(100)
    futures = [batcher.add(item) for item in items]
    await running(batcher)
    await asyncio.gather(*futures)
    assert store.flushes == [items]  # one round trip, nothing else
    assert store.stored == items


async def test_one_bad_item_affects_only_itself_order_kept(
    running: Start, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(bad={"bad-17"})
    batcher = Batcher("t", store.flush, repair=repaired, describe=lambda i: f"run {i[0]}")
    items = _items(40, bad_at={17})
    futures = [batcher.add(item) for item in items]
    await running(batcher)
    with caplog.at_level(logging.ERROR, logger="asyncjobs.batcher"):
        await asyncio.gather(*futures)  # every item settled, none with an error
    expected = [*items[:17], (1017, "repaired bad-17 (cannot store 'bad-17')"), *items[18:]]
    assert store.stored == expected
    # halving finds it in about 2·log2(40) flushes, plus two retries alone and the replacement
    assert len(store.flushes) <= 2 * 6 + 4
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "run 1017" in errors[0], errors


async def test_several_bad_items_without_repair_fail_only_their_own_future(running: Start) -> None:
    store = Store(bad={"bad-3", "bad-4", "bad-30"})
    batcher = Batcher("t", store.flush)
    items = _items(32, bad_at={3, 4, 30})
    futures = [batcher.add(item) for item in items]
    await running(batcher)
    outcomes = await asyncio.gather(*futures, return_exceptions=True)
    failed = {n for n, outcome in enumerate(outcomes) if isinstance(outcome, Exception)}
    assert failed == {3, 4, 30}
    assert all(isinstance(outcomes[n], DatabaseError) for n in failed)
    assert store.stored == [item for n, item in enumerate(items) if n not in failed]


async def test_an_item_refused_twice_alone_is_tried_again_as_is(running: Start) -> None:
    """A lone refusal may be the moment's (a deadlock): the item is stored unchanged."""
    store = Store(bad={"ok-0"})

    def heal_after_two(store: Store, items: list[Item]) -> None:
        if len(store.flushes) == 2:
            store.bad.clear()

    store.before = heal_after_two
    batcher = Batcher("t", store.flush, repair=repaired)
    future = batcher.add((7, "ok-0"))
    await running(batcher)
    await future
    assert store.stored == [(7, "ok-0")] and len(store.flushes) == 3


async def test_an_outage_is_retried_and_drops_nothing(running: Start) -> None:
    store = Store(down_for=3)
    batcher = Batcher("t", store.flush, repair=repaired, max_backoff=0.01)
    items = _items(50)
    futures = [batcher.add(item) for item in items]
    await running(batcher)
    await asyncio.gather(*futures)
    assert store.stored == items
    assert store.flushes == [items] * 4


async def test_a_transient_refusal_is_retried_whole_not_blamed_on_an_item(running: Start) -> None:
    """A deadlock or a lock/statement timeout, however long it lasts, repairs nothing: the
    batch is retried as it is, in order (a succeeded run must not become ResultNotStorable)."""
    store = Store(busy_for=6)
    batcher = Batcher("t", store.flush, repair=repaired, max_backoff=0.01)
    items = _items(20)
    futures = [batcher.add(item) for item in items]
    await running(batcher)
    await asyncio.gather(*futures)
    assert store.stored == items
    assert store.flushes == [items] * 7


async def test_the_driver_seam_calls_timeouts_and_deadlocks_busy(dsn: str) -> None:
    """What PostgreSQL says for a statement timeout reaches the batcher as DatabaseBusy."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SET statement_timeout = '10ms'")
        with pytest.raises(DatabaseBusy, match="QueryCanceled"), translate_errors():
            await conn.execute("SELECT pg_sleep(1)")
    finally:
        await conn.close()


async def test_an_outage_while_isolating_a_bad_item_is_retried_and_drops_nothing(
    running: Start,
) -> None:
    store = Store(bad={"bad-20"})

    def outage_on_third_flush(store: Store, items: list[Item]) -> None:
        if len(store.flushes) == 2:
            store.down_for = 3  # the database goes away in the middle of the halving

    store.before = outage_on_third_flush
    batcher = Batcher("t", store.flush, repair=repaired, max_backoff=0.01)
    items = _items(24, bad_at={20})
    futures = [batcher.add(item) for item in items]
    await running(batcher)
    await asyncio.gather(*futures)
    assert store.stored == [*items[:20], (1020, "repaired bad-20 (cannot store 'bad-20')"),
                            *items[21:]]  # fmt: skip


async def test_items_added_during_isolation_wait_their_turn_in_order(running: Start) -> None:
    store = Store(bad={"bad-1"})
    batcher = Batcher("t", store.flush, repair=repaired)
    first = _items(4, bad_at={1})
    futures = [batcher.add(item) for item in first]
    await running(batcher)
    await asyncio.sleep(0)
    later = [(2000, "later-0"), (2001, "later-1")]
    futures += [batcher.add(item) for item in later]
    await asyncio.gather(*futures)
    await batcher.drain()
    assert store.stored == [first[0], (1001, "repaired bad-1 (cannot store 'bad-1')"),
                            *first[2:], *later]  # fmt: skip
