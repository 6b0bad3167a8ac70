"""A separate process that triggers ``tests.caller_apps`` jobs by name without importing
them: ``python -m tests.caller_remote DSN``. It prints one JSON object with what it saw."""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta
from typing import Any

import orjson

import asyncjobs


async def main(dsn: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    async with asyncjobs.Client(dsn) as client:
        seen["sum"] = await client.run_json("add", {"a": 2, "b": 3}, wait_timeout=30)
        typed = await client.run_async(asyncjobs.JobRef("add", float), a=1, b=2)
        seen["typed"] = [typed, type(typed).__name__]
        seen["by_alias"] = await client.run_async("plus", a=20, b=22)
        seen["default_arg"] = await client.run_async("greet", name="ann")
        try:
            await client.trigger_async("add", a=1, b="two", c=3)
        except asyncjobs.InvalidArguments as exc:
            seen["invalid"] = {"message": str(exc), "errors": exc.errors}
        try:
            await client.trigger_json("no_such_job", {})
        except asyncjobs.UnknownJob as exc:
            seen["unknown"] = str(exc)
        run = await client.trigger_json(
            "add", {"a": 1, "b": 1}, priority=9, dedup_id="remote-1", queue="side",
            not_before=timedelta(hours=1), not_after=timedelta(hours=2),
        )
        record = await run.get()
        seen["options"] = {
            "priority": record.priority, "dedup_id": record.dedup_id, "queue": record.queue,
            "max_attempts": record.max_attempts, "trigger": record.trigger.value,
            "delay_s": (record.not_before - record.created_at).total_seconds(),
        }
        await run.cancel()
        default = await (await client.trigger_async("add", a=0, b=0)).get()
        seen["defaults"] = {"priority": default.priority, "queue": default.queue,
                            "max_attempts": default.max_attempts}
        outcome = await (await client.trigger_async("boom", message="no")).wait(timeout=30)
        seen["outcome"] = {"ok": outcome.ok, "status": outcome.status.value,
                           "type": outcome.error and outcome.error.type,
                           "message": outcome.error and outcome.error.message,
                           "traceback": bool(outcome.error and outcome.error.traceback)}
    seen["imported"] = "tests.caller_apps" in sys.modules
    return seen


if __name__ == "__main__":
    result = asyncio.run(main(sys.argv[1]))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
