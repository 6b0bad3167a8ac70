"""The app the cross-process caller tests run in a worker process (``asyncjobs worker
tests.caller_apps:app``). The caller processes never import this module: they trigger its
jobs by name (``tests.caller_remote``)."""

from __future__ import annotations

import threading
import time
from typing import Any

import anyio.from_thread

from asyncjobs import App, Context, get_context

app = App("callers")
app.queue("side")


@app.job(priority=3, retries=1, backoff_base=0.01, aliases=["plus"])
async def add(a: int, b: int) -> int:
    return a + b


@app.job
async def greet(name: str, punctuation: str = "!") -> str:
    return f"hello {name}{punctuation}"


@app.job
async def boom(message: str) -> None:
    raise ValueError(message)


@app.job
def sync_add(a: int, b: int) -> dict[str, Any]:
    """A plain function: runs in a worker thread."""
    return {"sum": a + b, "thread": threading.current_thread().name,
            "main": threading.current_thread() is threading.main_thread()}


@app.job
def sync_context(ctx: Context, n: int) -> dict[str, Any]:
    """A plain function with a Context: the context is there in the thread, and async calls
    go back to the loop with anyio.from_thread."""
    anyio.from_thread.run(ctx.progress, 0.5, f"half of {n}")
    current = get_context()
    return {"same": current is ctx, "run_id": ctx.run_id, "n": n}


@app.job(timeout=0.5)
def sync_sleeper(seconds: float) -> str:
    """Outlives its timeout: the run fails with JobTimeout, the thread goes on."""
    time.sleep(seconds)
    return "woke up"
