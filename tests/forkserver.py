"""A fork server for worker processes: ``python -m tests.forkserver`` imports asyncjobs and the
fault apps once, then forks one worker per request. Each child runs the command line's own
entry point (``asyncjobs.__main__.main``) with its own event loop, pool and LISTEN connection,
exactly as ``python -m asyncjobs worker ...`` would, minus the Python start-up: the kill -9
test starts more than a hundred workers, and on two loaded cores each start-up costs seconds.

Protocol, one JSON object per line on stdin: ``{"argv": [...], "log": path, "env": {...}}``;
the server answers each with the child's pid on a line of stdout. The child's output goes to
``log``; when the server reaps a child it writes its exit status to ``log + ".exit"`` (the
negative signal number when a signal ended it, as ``subprocess`` reports it). End of stdin
stops the server.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import sys
from typing import Any

import asyncjobs.__main__
import tests.fault_apps  # noqa: F401  (imported here once, so the children need not)

_running: dict[int, str] = {}


def _child(request: dict[str, Any]) -> None:
    """In the forked child: redirect the output, run the worker command, never return."""
    code = 1
    try:
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.environ.update(request.get("env", {}))
        code = asyncjobs.__main__.main(request["argv"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _reap() -> None:
    while _running:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            return
        log = _running.pop(pid, None)
        if log is not None:
            code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            with open(log + ".exit.tmp", "w") as out:
                out.write(str(code))
            os.replace(log + ".exit.tmp", log + ".exit")  # appears complete, never half-written


def _kill_all() -> None:
    """Leave no worker behind when the test that asked for them is gone."""
    for pid in list(_running):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    while _running:
        pid, _ = os.waitpid(-1, 0)
        _running.pop(pid, None)


def serve() -> None:
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], 0.02)
        _reap()
        if not ready:
            continue
        line = sys.stdin.readline()
        if not line:
            _kill_all()
            return
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request)
        _running[pid] = request["log"]
        sys.stdout.write(f"{pid}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    serve()
