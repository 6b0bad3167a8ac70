"""Shared pieces of the dashboard tests: an app with controllable jobs, a real uvicorn server
on a free port, and an SSE reader (httpx's ASGI transport buffers streams, so it cannot
test them)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from pydantic import BaseModel

from asyncjobs import App, Context
from asyncjobs.web import DashboardServer

SSE_HEADERS = {"accept": "text/event-stream"}
XSS = "<script>window.__pwned = true</script><img src=x onerror=alert(1)>"


class Card(BaseModel):
    holder: str
    number: str


@dataclass
class Gates:
    """asyncio events jobs wait on, by name, created on first use."""

    events: dict[str, asyncio.Event] = field(default_factory=dict)

    def __getitem__(self, name: str) -> asyncio.Event:
        return self.events.setdefault(name, asyncio.Event())


def web_app() -> tuple[App, Gates]:
    app = App("webtest")
    gates = Gates()

    @app.job
    async def leaf(ctx: Context, n: int) -> int:
        await ctx.progress(0.5, f"leaf {n}")
        await ctx.log(f"leaf {n} says hi")
        return n

    @app.job
    async def tree(ctx: Context, width: int, gate: str = "") -> int:
        """Waits for its gate, then runs `width` leaves one after the other."""
        await ctx.log("tree started")
        if gate:
            await gates[gate].wait()
        total = 0
        for n in range(width):
            total += await leaf.run_async(n=n)
            await ctx.progress((n + 1) / width, f"{n + 1} of {width} leaves")
        return total

    @app.job
    async def hold(ctx: Context, gate: str) -> None:
        """Runs until its gate opens (or it is cancelled)."""
        await ctx.log(f"holding for {gate}")
        await gates[gate].wait()

    @app.job(redact=["password", "card.number"])
    async def secretive(ctx: Context, user: str, password: str, card: Card) -> str:
        await ctx.log(f"charging {card.holder}")
        return user

    @app.job
    async def echo(ctx: Context, text: str) -> str:
        await ctx.log(text, level="warning")
        return text

    @app.job
    async def chatty(ctx: Context, lines: int, size: int) -> int:
        for n in range(lines):
            await ctx.log(f"line {n}", blob="x" * size)
        return lines

    @app.job
    async def broken(ctx: Context, text: str) -> None:
        raise ValueError(text)

    @app.job
    async def pulse(ctx: Context, count: int, every: float) -> int:
        """Reports progress ``count`` times, ``every`` seconds apart (one state change each)."""
        for n in range(1, count + 1):
            await ctx.progress(n / count, f"pulse {n}")
            await asyncio.sleep(every)
        return count

    return app, gates


@contextlib.asynccontextmanager
async def dashboard(app: App, dsn: str, **settings: Any) -> AsyncIterator[DashboardServer]:
    """The app's dashboard served by uvicorn on 127.0.0.1 at a free port."""
    async with DashboardServer(app.asgi(dsn, **settings), "127.0.0.1", 0) as server:
        yield server


@dataclass
class Message:
    event: str
    id: str | None
    data: dict[str, Any]


async def sse_messages(response: httpx.Response) -> AsyncIterator[Message]:
    """Parse a text/event-stream response into messages (comments and pings skipped)."""
    event: str = "message"
    event_id: str | None = None
    data: list[str] = []
    async for line in response.aiter_lines():
        if line == "":
            if data:
                yield Message(event, event_id, orjson.loads("\n".join(data)))
            event, event_id, data = "message", None, []
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "id":
                event_id = value
            elif name == "data":
                data.append(value)


async def read_until_end(
    http: httpx.AsyncClient,
    path: str,
    last_event_id: str | None = None,
    timeout: float = 30,
    into: list[Message] | None = None,
) -> list[Message]:
    """Every message of a trace stream up to its ``end`` (appended to ``into`` as they
    come), resuming like a browser when the server drops the connection."""
    messages: list[Message] = [] if into is None else into
    async with asyncio.timeout(timeout):
        while True:
            headers = dict(SSE_HEADERS)
            if last_event_id:
                headers["last-event-id"] = last_event_id
            async with http.stream("GET", path, headers=headers) as response:
                assert response.status_code == 200, await response.aread()
                async for message in sse_messages(response):
                    messages.append(message)
                    last_event_id = message.id or last_event_id
                    if message.event == "end":
                        return messages


def event_ids(messages: list[Message]) -> list[int]:
    return [e["id"] for m in messages for e in m.data["events"]]


async def wait_for(condition: Any, timeout: float = 15.0, interval: float = 0.02) -> Any:
    """Poll an async condition until it is truthy (bounded)."""
    async with asyncio.timeout(timeout):
        while True:
            value = await condition()
            if value:
                return value
            await asyncio.sleep(interval)
