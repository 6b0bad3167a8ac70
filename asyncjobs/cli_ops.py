"""Operator commands of the CLI: ``trigger``, ``show``, ``cancel``, ``retry``.

They need only a DSN, not the app's code: jobs are triggered by name and their arguments
validated against the schema workers stored (see ``asyncjobs.remote``).

Exit codes (``trigger --wait`` and ``retry --wait`` say how the run ended)::

    0  done (with --wait: the run succeeded)
    1  an asyncjobs error (unknown job, invalid arguments, no such run, database down...)
    2  wrong command line
    3  the run failed
    4  the run was cancelled
    5  the run expired before it started
    6  --timeout passed first (the run goes on)
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import orjson

from asyncjobs.backends.base import Backend
from asyncjobs.client import Client, Run
from asyncjobs.errors import InvalidArguments, RunTimeout
from asyncjobs.remote import shown_args
from asyncjobs.results import RunResult
from asyncjobs.runs import RunEvent, RunRecord, RunStatus
from asyncjobs.trace import build_tree, render_tree

EXIT_OK = 0
EXIT_FAILED = 3
EXIT_CANCELLED = 4
EXIT_EXPIRED = 5
EXIT_TIMEOUT = 6

_EXIT_BY_STATUS = {
    RunStatus.SUCCEEDED: EXIT_OK,
    RunStatus.FAILED: EXIT_FAILED,
    RunStatus.CANCELLED: EXIT_CANCELLED,
    RunStatus.EXPIRED: EXIT_EXPIRED,
}

#: event data longer than this is cut in ``show``
EVENT_CHARS = 160

AddDsn = Callable[[argparse.ArgumentParser], None]


def _pretty(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()


def _add_wait(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wait", action="store_true",
                        help="wait for the run to finish, print its result, and exit with a "
                             "code that says how it ended (see `asyncjobs --help`)")
    parser.add_argument("--timeout", type=float, metavar="SECONDS",
                        help="with --wait: give up waiting after this many seconds (exit 6)")


# ---------------------------------------------------------------------- trigger


def add_trigger(parser: argparse.ArgumentParser, add_dsn: AddDsn) -> None:
    parser.add_argument("job", help="the job's name (or one of its aliases)")
    parser.add_argument("--args", default="{}", metavar="JSON",
                        help="the arguments as a JSON object (default {})")
    _add_wait(parser)
    parser.add_argument("--priority", type=int, help="higher runs first (default: the job's)")
    parser.add_argument("--dedup-id", help="refuse the run while an active run holds this id")
    parser.add_argument("--queue", help="put the run in this queue (default: the job's)")
    add_dsn(parser)


async def cmd_trigger(args: argparse.Namespace, dsn: str | Backend) -> int:
    try:
        arguments = orjson.loads(args.args)
    except orjson.JSONDecodeError as exc:
        raise InvalidArguments(f"--args is not JSON: {exc}") from None
    if not isinstance(arguments, dict):
        raise InvalidArguments("--args must be a JSON object, like '{\"order_id\": 7}'")
    async with Client(dsn) as client:
        run = await client.trigger_json(
            args.job, arguments, priority=args.priority, dedup_id=args.dedup_id, queue=args.queue
        )
        print(f"triggered run {run.id} of {run.job.name}")
        return await _maybe_wait(run, args) if args.wait else EXIT_OK


async def _maybe_wait(run: Run[Any], args: argparse.Namespace) -> int:
    try:
        outcome = await run.wait(args.timeout)
    except RunTimeout:
        print(f"run {run.id} did not finish within {args.timeout} s; it goes on")
        return EXIT_TIMEOUT
    _print_outcome(outcome)
    return _EXIT_BY_STATUS[outcome.status]


def _print_outcome(outcome: RunResult[Any]) -> None:
    record = outcome.record
    print(f"run {record.id} {record.status.value}" + _took(record))
    if outcome.ok:
        print(_pretty(record.result))
    elif outcome.error is not None:
        print(f"{outcome.error.type}: {outcome.error.message}")


def _took(record: RunRecord) -> str:
    return "" if record.duration is None else f" in {record.duration:.3f} s"


# ---------------------------------------------------------------------- show


def add_show(parser: argparse.ArgumentParser, add_dsn: AddDsn) -> None:
    parser.add_argument("run_id", type=int, help="the run to show")
    parser.add_argument("--events", type=int, default=50, metavar="N",
                        help="show its last N events (default 50, 0 for none)")
    add_dsn(parser)


async def cmd_show(args: argparse.Namespace, dsn: str | Backend) -> int:
    async with Client(dsn) as client:
        run = await client.get_run(args.run_id)
        events = await _last_events(client, run.id, args.events)
        tree = await client.get_runs(root_run_id=run.root_run_id or run.id, limit=1000)
        shown = await shown_args(client, run)  # redacted by the rules the workers stored
    print(_describe(run))
    print(f"arguments: {_pretty(shown)}")
    if run.status is RunStatus.SUCCEEDED:
        print(f"result: {_pretty(run.result)}")
    if run.error:
        print(f"error: {run.error.get('type')}: {run.error.get('message')}")
        if run.error.get("traceback"):
            print(str(run.error["traceback"]).rstrip())
    if events:
        print("events:")
        for event in events:
            data = orjson.dumps(event.data).decode()
            if len(data) > EVENT_CHARS:  # the error's traceback is printed above in full
                data = data[:EVENT_CHARS] + "…"
            print(f"  {event.at:%Y-%m-%d %H:%M:%S.%f} {event.kind:<10} {data}")
    print("tree:")
    print(render_tree(build_tree(tree.runs)))
    return EXIT_OK


async def _last_events(client: Client, run_id: int, count: int) -> list[RunEvent]:
    if count <= 0:
        return []
    events: list[RunEvent] = []
    after = 0
    while True:  # oldest first, in pages; keep the last `count`
        page = await client.get_events(run_id, after, 1000)
        events = (events + page)[-count:]
        if len(page) < 1000:
            return events
        after = page[-1].id


def _describe(run: RunRecord) -> str:
    lines = [
        f"run {run.id}: {run.job} — {run.status.value}" + _took(run),
        f"  queue {run.queue}, priority {run.priority}, attempt {run.attempt} (retries "
        f"{run.retries} of {run.max_attempts - 1}, restarts {run.restarts} of "
        f"{run.max_restarts}), trigger {run.trigger.value}",
        f"  created {run.created_at:%Y-%m-%d %H:%M:%S}, not before "
        f"{run.not_before:%Y-%m-%d %H:%M:%S}"
        + (f", not after {run.not_after:%Y-%m-%d %H:%M:%S}" if run.not_after else ""),
    ]
    links = [f"{name} {value}" for name, value in (
        ("parent", run.parent_run_id), ("root", run.root_run_id), ("dedup id", run.dedup_id),
        ("worker", run.worker_id),
    ) if value is not None and not (name == "root" and value == run.id)]
    if links:
        lines.append("  " + ", ".join(links))
    if run.status_message or run.progress is not None:
        progress = "" if run.progress is None else f"{run.progress:.0%} "
        lines.append(f"  progress {progress}{run.status_message or ''}".rstrip())
    return "\n".join(lines)


# ---------------------------------------------------------------------- cancel, retry


def add_cancel(parser: argparse.ArgumentParser, add_dsn: AddDsn) -> None:
    parser.add_argument("run_id", type=int, help="the run to cancel")
    parser.add_argument("--cascade", action="store_true",
                        help="cancel every run it triggered (its whole subtree) too")
    add_dsn(parser)


async def cmd_cancel(args: argparse.Namespace, dsn: str | Backend) -> int:
    async with Client(dsn) as client:
        changed = await client.cancel(args.run_id, cascade=args.cascade)
        if not changed:
            run = await client.get_run(args.run_id)
            print(f"run {run.id} has already finished ({run.status.value}): nothing to cancel")
            return EXIT_OK
    for run_id, status in changed:
        state = "cancelled" if status is RunStatus.CANCELLED else "cancel requested"
        print(f"run {run_id}: {state}")
    return EXIT_OK


def add_retry(parser: argparse.ArgumentParser, add_dsn: AddDsn) -> None:
    parser.add_argument("run_id", type=int, help="a finished run to run again")
    _add_wait(parser)
    add_dsn(parser)


async def cmd_retry(args: argparse.Namespace, dsn: str | Backend) -> int:
    async with Client(dsn) as client:
        run = await client.retry(args.run_id)
        print(f"triggered run {run.id} of {run.job.name}, retrying run {args.run_id}")
        return await _maybe_wait(run, args) if args.wait else EXIT_OK
