"""SSE against a real uvicorn server: snapshot then live events in order, resume after a
dropped connection without gap or duplicate, the end of a finished tree, slow subscribers."""

from __future__ import annotations

import asyncio
import functools
import re
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import orjson
import pytest

from asyncjobs import RunStatus
from tests.web_support import (
    SSE_HEADERS,
    Message,
    dashboard,
    event_ids,
    read_until_end,
    sse_messages,
    wait_for,
    web_app,
)

pytestmark = pytest.mark.anyio


async def _tree_event_ids(client: object, run_ids: list[int]) -> list[int]:
    ids = []
    for run_id in run_ids:
        ids += [e.id for e in await client.get_events(run_id)]  # type: ignore[attr-defined]
    return sorted(ids)


async def test_trace_stream_sends_a_snapshot_then_live_events_in_order_then_ends(
    dsn: str,
) -> None:
    app, gates = web_app()
    async with (
        app.client(dsn) as client,
        app.worker(dsn, concurrency=4),
        dashboard(app, dsn) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as http,
    ):
        run = await client.trigger_async("tree", width=3, gate="go")
        await wait_for(lambda: _is_running(client, run.id))
        path = f"/api/runs/{run.id}/events"
        async with http.stream("GET", path, headers=SSE_HEADERS) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            messages = sse_messages(response)
            snapshot = await anext(messages)
            assert snapshot.event == "snapshot"
            assert [r["id"] for r in snapshot.data["runs"]] == [run.id]
            assert snapshot.data["runs"][0]["status"] == "running"
            assert [e["kind"] for e in snapshot.data["events"]][:2] == ["pending", "running"]
            gates["go"].set()  # now the tree grows while we watch
            live = [m async for m in messages]
        assert [m.event for m in live[:-1]] == ["events"] * (len(live) - 1)
        end = live[-1]
        assert end.event == "end"
        final = {r["id"]: r for r in end.data["runs"]}
        assert len(final) == 4 and {r["status"] for r in final.values()} == {"succeeded"}
        everything = [snapshot, *live]
        ids = event_ids(everything)
        assert sorted(ids) == await _tree_event_ids(client, list(final)), "each event once"
        cursors = [_cursor(e["cursor"]) for m in everything for e in m.data["events"]]
        assert cursors == sorted(cursors) and len(set(cursors)) == len(cursors)
        assert [m.id for m in everything] == [str(m.data["cursor"]) for m in everything]
        # a leaf appears (pending) before it runs, and runs before it succeeds
        for run_id in final:
            kinds = [
                e["kind"]
                for m in everything
                for e in m.data["events"]
                if e["run_id"] == run_id and e["kind"] in ("pending", "running", "succeeded")
            ]
            assert kinds == ["pending", "running", "succeeded"]


async def _is_running(client: object, run_id: int) -> bool:
    run = await client.get_run(run_id)  # type: ignore[attr-defined]
    return bool(run.status is RunStatus.RUNNING)


def _cursor(text: str) -> tuple[int, int]:
    xid, event_id = text.split("-")
    return int(xid), int(event_id)


async def test_resume_with_last_event_id_after_a_dropped_connection(dsn: str) -> None:
    app, gates = web_app()
    async with (
        app.client(dsn) as client,
        app.worker(dsn, concurrency=4),
        dashboard(app, dsn) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as http,
    ):
        run = await client.trigger_async("tree", width=4, gate="go")
        path = f"/api/runs/{run.id}/events"
        first: list[Message] = []
        async with http.stream("GET", path, headers=SSE_HEADERS) as response:
            messages = sse_messages(response)
            first.append(await anext(messages))
            gates["go"].set()
            async for message in messages:
                first.append(message)
                if len(event_ids(first)) >= 6:
                    break  # the connection drops here, in the middle of the tree
        await wait_for(lambda: _is_done(client, run.id))  # the rest happens while we are away
        rest = await read_until_end(http, path, last_event_id=first[-1].id)
        assert {m.event for m in rest[:-1]} <= {"events"}, "a resumed stream sends no snapshot"
        assert rest[-1].event == "end"
        ids = event_ids(first) + event_ids(rest)
        assert len(ids) == len(set(ids)), "no duplicate"
        final = [r["id"] for r in rest[-1].data["runs"]]
        assert sorted(ids) == await _tree_event_ids(client, final), "no gap"
        # the JSON twin of the stream: one run's own events
        own = (await http.get(path)).json()["events"]
        assert [e["id"] for e in own] == [e.id for e in await client.get_events(run.id)]


async def _is_done(client: object, run_id: int) -> bool:
    run = await client.get_run(run_id)  # type: ignore[attr-defined]
    return bool(run.status.is_terminal)


async def test_a_finished_tree_streams_its_snapshot_and_ends(dsn: str) -> None:
    app, _ = web_app()
    async with (
        app.client(dsn) as client,
        app.worker(dsn, concurrency=4),
        dashboard(app, dsn) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as http,
    ):
        run = await client.trigger_async("broken", text="boom")
        await run.client.wait(run.id, timeout=20)
        messages = await read_until_end(http, f"/api/runs/{run.id}/events")
        # usually just [snapshot, end]; an event that is not final yet (an older transaction
        # somewhere on the server still runs) follows as "events"
        assert messages[0].event == "snapshot" and messages[-1].event == "end"
        assert {m.event for m in messages[1:-1]} <= {"events"}
        assert sorted(event_ids(messages)) == await _tree_event_ids(client, [run.id])
        (failed,) = messages[-1].data["runs"]
        assert failed["status"] == "failed"
        assert failed["error"]["type"] == "ValueError" and "boom" in failed["error"]["traceback"]
        missing = await http.get("/api/runs/999999/events", headers=SSE_HEADERS)
        assert missing.status_code == 404
        bad = await http.get(
            f"/api/runs/{run.id}/events", headers={**SSE_HEADERS, "last-event-id": "12; drop table"}
        )
        assert bad.status_code == 400


async def test_the_global_feed_sends_a_snapshot_then_every_change(dsn: str) -> None:
    app, gates = web_app()
    async with (
        app.client(dsn) as client,
        app.worker(dsn, concurrency=4),
        dashboard(app, dsn) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as http,
    ):
        old = await client.trigger_async("leaf", n=1)
        await client.wait(old.id, timeout=20)
        async with http.stream("GET", "/api/events?job=leaf", headers=SSE_HEADERS) as response:
            messages = sse_messages(response)
            snapshot = await anext(messages)
            assert snapshot.event == "snapshot"
            assert [r["id"] for r in snapshot.data["runs"]] == [old.id]
            run = await client.trigger_async("hold", gate="feed")
            seen: dict[int, str] = {}
            async for message in messages:
                assert message.event == "events"
                for row in message.data["runs"]:
                    seen[row["id"]] = row["status"]
                    assert "traceback" not in (row["error"] or {})
                if seen.get(run.id) == "running":
                    gates["feed"].set()
                if seen.get(run.id) == "succeeded":
                    break
        assert message.data["events"][-1].keys() == {"id", "run_id", "kind", "at"}
        # reconnecting with the last id continues right there: no snapshot, the next change
        resumed = {**SSE_HEADERS, "last-event-id": message.id or ""}
        async with http.stream("GET", "/api/events", headers=resumed) as response:
            messages = sse_messages(response)
            later = await client.trigger_async("leaf", n=2)
            replayed = []
            async for message in messages:
                assert message.event == "events"
                replayed += [e["run_id"] for e in message.data["events"]]
                if any(r["id"] == later.id for r in message.data["runs"]):
                    break
            assert set(replayed) == {later.id}, "nothing from before the cursor comes again"


async def test_a_slow_subscriber_is_dropped_without_holding_memory_and_can_resume(
    dsn: str,
) -> None:
    """One client reads along, another stops reading. Each event is written only after the
    reader got the previous one, so every event is its own batch; the stalled client's
    queue overflows after ``queue_size`` batches and it is dropped, never buffered further."""
    app, gates = web_app()
    queue_size = 4
    async with (
        app.client(dsn) as client,
        app.worker(dsn, concurrency=4),
        dashboard(app, dsn, queue_size=queue_size) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as http,
    ):
        run = await client.trigger_async("hold", gate="slow")
        record = await wait_for(lambda: _running_record(client, run.id))
        path = f"/api/runs/{run.id}/events"
        fast_messages: list[Message] = []
        fast = asyncio.ensure_future(read_until_end(http, path, timeout=60, into=fast_messages))
        await wait_for(_async(lambda: fast_messages))
        slow = await _open_without_reading(server.port, path)
        await wait_for(lambda: _stats_when(http, lambda s: s["subscribers"] == 2))
        try:
            for line in range(60):  # at most ~24 MB; the drop comes far earlier
                data = {"level": "info", "message": f"line {line}", "fields": {"x": "x" * 400_000}}
                await client.backend.add_events(
                    record.worker_id, [(run.id, record.attempt, "log", data)]
                )
                text = f"line {line}"
                await wait_for(_async(functools.partial(_logged, fast_messages, text)))
                if (await http.get("/api/stats")).json()["broadcaster"]["dropped"]:
                    break
            stats = (await http.get("/api/stats")).json()["broadcaster"]
            assert stats["dropped"] == 1, stats
            assert stats["max_queued"] <= queue_size
            assert stats["subscribers"] == 1  # the slow one is gone, its queue freed
            gates["slow"].set()
            await fast
            # reading on, the slow client gets what was in flight, then the end of the body
            received = await asyncio.wait_for(_read_to_eof(slow), 30)
        finally:
            fast.cancel()
            slow.close()
        assert fast_messages[-1].event == "end"
        ids = event_ids(fast_messages)
        assert len(ids) == len(set(ids))
        complete = _complete_messages(received)
        rest = await read_until_end(http, path, last_event_id=complete[-1][0])
        got = [e["id"] for _, data in complete for e in data["events"]] + event_ids(rest)
        assert sorted(got) == sorted(ids), "the dropped client resumes with no gap or duplicate"
        assert await wait_for(lambda: _streams_are(http, 0), 10)


async def _running_record(client: object, run_id: int) -> object:
    run = await client.get_run(run_id)  # type: ignore[attr-defined]
    return run if run.status is RunStatus.RUNNING else None


def _async(check: Callable[[], object]) -> Callable[[], Awaitable[object]]:
    async def wrapped() -> object:
        return check()

    return wrapped


def _logged(messages: list[Message], text: str) -> bool:
    return any(e["data"].get("message") == text for m in messages[-3:] for e in m.data["events"])


async def _stats_when(
    http: httpx.AsyncClient, check: Callable[[dict[str, Any]], object]
) -> dict[str, Any] | None:
    stats: dict[str, Any] = (await http.get("/api/stats")).json()
    return stats if check(stats["broadcaster"]) else None


async def _open_without_reading(port: int, path: str) -> socket.socket:
    """A client that sends its request and then does not read: tiny receive buffer."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n\r\n"
    await loop.sock_sendall(sock, request.encode())
    return sock


async def _read_to_eof(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    chunks = []
    while chunk := await loop.sock_recv(sock, 65536):
        chunks.append(chunk)
        if chunks[-1].endswith(b"0\r\n\r\n"):  # the chunked body's last chunk
            break
    return b"".join(chunks)


def _complete_messages(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(id, data) of every whole SSE message in a raw chunked response (one chunk each)."""
    found = re.findall(
        rb"id: (\d+-\d+)\r\nevent: \w+\r\ndata: (.*?)\r\n(?:retry: \d+\r\n)?\r\n", raw
    )
    return [(event_id.decode(), orjson.loads(data)) for event_id, data in found]


async def test_open_streams_are_limited(dsn: str) -> None:
    app, gates = web_app()
    async with (
        app.client(dsn) as client,
        dashboard(app, dsn, max_streams=1) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as http,
    ):
        run = await client.trigger_async("hold", gate="never")
        async with http.stream("GET", f"/api/runs/{run.id}/events", headers=SSE_HEADERS) as one:
            assert (await anext(sse_messages(one))).event == "snapshot"
            second = await http.get("/api/events", headers=SSE_HEADERS)
            assert second.status_code == 503
            assert second.json()["error"]["type"] == "TooManyStreams"
        assert await wait_for(lambda: _streams_are(http, 0), 10)
        gates["never"].set()


async def _streams_are(http: httpx.AsyncClient, count: int) -> bool:
    return bool((await http.get("/api/stats")).json()["streams"] == count)
