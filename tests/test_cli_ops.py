"""The operator CLI: trigger, show, cancel, retry, runs, explain, migrate, --version, with
the exit codes ``asyncjobs --help`` documents. Commands run in a thread (each has its own
event loop, as from a shell) next to an in-process worker of ``tests.caller_apps``."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from asyncjobs import Client, RunStatus, Trigger
from asyncjobs.__main__ import build_parser
from asyncjobs.__main__ import main as cli
from tests import caller_apps

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.anyio


@pytest.fixture
async def served(dsn: str) -> AsyncIterator[str]:
    async with caller_apps.app.worker(dsn, concurrency=4, poll_interval=0.05):
        yield dsn


async def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    with anyio.fail_after(60):
        code = await asyncio.to_thread(cli, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _run_id(text: str) -> int:
    match = re.search(r"triggered run (\d+)", text)
    assert match, text
    return int(match.group(1))


async def test_trigger_exit_codes(served: str, capsys: pytest.CaptureFixture[str]) -> None:
    dsn = ["--dsn", served]
    code, out, _ = await run_cli(capsys, "trigger", "add", "--args", '{"a": 2, "b": 3}',
                                 "--wait", "--timeout", "30", *dsn)
    assert code == 0 and re.search(r"run \d+ succeeded in [\d.]+ s\n5\n", out), out
    code, out, _ = await run_cli(capsys, "trigger", "boom", "--args", '{"message": "bad"}',
                                 "--wait", *dsn)
    assert code == 3 and "ValueError: bad" in out
    code, out, _ = await run_cli(capsys, "trigger", "sync_sleeper", "--args",
                                 '{"seconds": 2}', "--wait", "--timeout", "0.1", *dsn)
    assert code == 6 and "it goes on" in out
    code, _, err = await run_cli(capsys, "trigger", "add", "--args", '{"a": "x"}', *dsn)
    assert code == 1 and "InvalidArguments" not in err and "a: " in err
    code, _, err = await run_cli(capsys, "trigger", "nope", *dsn)
    assert code == 1 and "no job named 'nope'" in err
    code, _, err = await run_cli(capsys, "trigger", "add", "--args", "[1]", *dsn)
    assert code == 1 and "JSON object" in err
    code, out, _ = await run_cli(capsys, "trigger", "add", "--args", '{"a": 1, "b": 1}',
                                 "--priority", "7", "--dedup-id", "cli-1", "--queue", "nowhere",
                                 *dsn)
    assert code == 0
    async with Client(served) as client:
        run = await client.get_run(_run_id(out))
    assert (run.priority, run.dedup_id, run.queue, run.trigger) == (
        7, "cli-1", "nowhere", Trigger.API)


async def test_show_cancel_and_retry(served: str, capsys: pytest.CaptureFixture[str]) -> None:
    dsn = ["--dsn", served]
    _, out, _ = await run_cli(capsys, "trigger", "boom", "--args", '{"message": "no"}',
                              "--wait", *dsn)
    failed = _run_id(out)
    code, out, _ = await run_cli(capsys, "show", str(failed), *dsn)
    assert code == 0
    for expected in (f"run {failed}: boom — failed", '"message": "no"', "error: ValueError: no",
                     "Traceback", "events:", "tree:", "boom"):
        assert expected in out, out

    code, out, _ = await run_cli(capsys, "retry", str(failed), "--wait", *dsn)
    assert code == 3 and "ValueError: no" in out
    again = int(re.search(r"triggered run (\d+) of boom, retrying run", out).group(1))  # type: ignore[union-attr]
    async with Client(served) as client:
        record = await client.get_run(again)
        assert (record.trigger, record.parent_run_id, record.args) == (
            Trigger.RETRY, failed, {"message": "no"})
    code, out, _ = await run_cli(capsys, "show", str(failed), *dsn)
    assert f"#{again}" in out or str(again) in out.split("tree:")[1]  # in the old run's tree

    _, out, _ = await run_cli(capsys, "trigger", "add", "--args", '{"a": 1, "b": 2}',
                              "--queue", "nowhere", *dsn)  # no worker serves it: pending
    pending = _run_id(out)
    code, out, _ = await run_cli(capsys, "retry", str(pending), *dsn)
    assert code == 1
    code, out, _ = await run_cli(capsys, "cancel", str(pending), "--cascade", *dsn)
    assert code == 0 and f"run {pending}: cancelled" in out
    code, out, _ = await run_cli(capsys, "cancel", str(pending), *dsn)
    assert code == 0 and "already finished (cancelled)" in out
    code, _, err = await run_cli(capsys, "show", "999999", *dsn)
    assert code == 1 and "no run with id 999999" in err


async def test_runs_and_explain(served: str, capsys: pytest.CaptureFixture[str]) -> None:
    dsn = ["--dsn", served]
    _, out, _ = await run_cli(capsys, "trigger", "add", "--args", '{"a": 1, "b": 2}', "--wait",
                              *dsn)
    done = _run_id(out)
    code, out, _ = await run_cli(capsys, "runs", "--job", "add", "--status", "succeeded", *dsn)
    assert code == 0 and "duration" in out.splitlines()[0]
    row = next(line for line in out.splitlines() if line.strip().startswith(str(done)))
    assert re.search(r"succeeded\s+api\s+1\s+[\d.]+s", row), row
    code, out, _ = await run_cli(capsys, "explain", str(done), *dsn)
    assert code == 0 and out.startswith(f"run {done} succeeded"), out


def test_every_flag_has_help() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in commands.choices.items():
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"


async def test_version_and_migrate(empty_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    with anyio.fail_after(60):
        done = await anyio.run_process([sys.executable, "-m", "asyncjobs", "--version"],
                                       cwd=ROOT, check=False)
    assert done.returncode == 0 and re.match(rb"asyncjobs \S+", done.stdout), done.stdout
    code, out, _ = await run_cli(capsys, "migrate", "--dsn", empty_dsn)
    assert code == 0 and out.startswith("installed the asyncjobs schema (version"), out
    code, out, _ = await run_cli(capsys, "migrate", "--dsn", empty_dsn)
    assert code == 0 and out.startswith("the asyncjobs schema is up to date"), out


async def test_exit_codes_are_documented(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["--help"])
    assert exited.value.code == 0
    help_text = capsys.readouterr().out
    for code in ("0  done", "1  an asyncjobs error", "3  the run failed", "6  --timeout"):
        assert code in help_text
    assert RunStatus.EXPIRED.value in help_text


def test_explain_reads_as_english() -> None:
    from asyncjobs import Explanation

    words = {RunStatus.PENDING: "is pending", RunStatus.RUNNING: "is running",
             RunStatus.SUCCEEDED: "succeeded", RunStatus.FAILED: "failed",
             RunStatus.CANCELLED: "was cancelled", RunStatus.EXPIRED: "expired before it started"}
    for status, said in words.items():
        assert str(Explanation(1, status, ())) == f"run 1 {said}"
