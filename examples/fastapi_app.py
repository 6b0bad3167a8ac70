"""A FastAPI service: one asyncjobs client opened in the lifespan, a route that triggers a
job by name, and the run's trace streamed to the browser as Server-Sent Events."""

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator

import httpx
import orjson
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from asyncjobs import App, Client, Context, InvalidArguments, UnknownJob

DSN = os.environ.get("ASYNCJOBS_DSN", "postgresql://127.0.0.1/postgres")

# The worker's side: the job's code. The web service below never imports it.
jobs = App("media")


@jobs.job
async def make_thumbnail(ctx: Context, image_id: int, size: int = 128) -> str:
    await ctx.progress(0.5, "resizing")
    return f"thumb-{image_id}-{size}.png"


# The web service: one client (one connection pool) for the process, opened in the lifespan.
@contextlib.asynccontextmanager
async def lifespan(api: FastAPI) -> AsyncIterator[None]:
    async with Client(DSN) as client:
        api.state.jobs = client
        yield


api = FastAPI(lifespan=lifespan)


@api.exception_handler(InvalidArguments)
async def invalid(request: Request, exc: InvalidArguments) -> JSONResponse:
    return JSONResponse({"detail": str(exc), "errors": exc.errors}, status_code=422)


@api.exception_handler(UnknownJob)
async def unknown(request: Request, exc: UnknownJob) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=404)


@api.post("/images/{image_id}/thumbnail", status_code=202)
async def thumbnail(image_id: int, request: Request) -> dict[str, int]:
    client: Client = request.app.state.jobs
    run = await client.trigger_async("make_thumbnail", image_id=image_id)  # by name
    return {"run_id": run.id}


@api.get("/runs/{run_id}/trace")
async def trace(run_id: int, request: Request) -> StreamingResponse:
    """The run's trace tree, live, until every run of it has finished (EventSource-ready)."""
    client: Client = request.app.state.jobs

    async def stream() -> AsyncIterator[bytes]:
        async for update in client.watch(run_id):
            data = {
                "runs": [{"id": r.id, "job": r.job, "status": r.status, "result": r.result}
                         for r in update.runs],
                "events": [{"run_id": e.run_id, "kind": e.kind, "data": e.data}
                           for e in update.events],
            }
            yield b"id: %s\nevent: %s\ndata: %s\n\n" % (
                str(update.cursor).encode(), update.kind.encode(), orjson.dumps(data))

    return StreamingResponse(stream(), media_type="text/event-stream")


async def main() -> None:
    """Serve the app on a free port next to a worker, and call it over real HTTP."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(api, host="127.0.0.1", port=port, log_level="warning"))
    async with jobs.worker(DSN, migrate=True):
        serving = asyncio.create_task(server.serve())
        while not server.started:  # noqa: ASYNC110 - uvicorn offers a flag, not an event
            await asyncio.sleep(0.01)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                answer = await http.post("/images/7/thumbnail")
                run_id = answer.json()["run_id"]
                print("accepted:", answer.status_code, "run", run_id)
                results = {}
                async with http.stream("GET", f"/runs/{run_id}/trace") as events:
                    async for line in events.aiter_lines():
                        if line.startswith("event: "):
                            print(line)
                        elif line.startswith("data: "):
                            update = orjson.loads(line.removeprefix("data: "))
                            for event in update["events"]:
                                print("  ", event["kind"], event["data"].get("message", ""))
                            results.update({r["id"]: r["result"] for r in update["runs"]})
                print("result:", results[run_id])
        finally:
            server.should_exit = True
            await serving


if __name__ == "__main__":
    asyncio.run(main())
