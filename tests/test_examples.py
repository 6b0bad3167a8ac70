"""The examples run, and the README shows them exactly as they are in examples/."""

from __future__ import annotations

import os
import re
import shutil
import sys
import tomllib
from pathlib import Path

import anyio
import pytest

from asyncjobs.testing import ENV_DSN, ThrowawayDatabases

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
# A test module for pytest, not a program: run by test_the_pytest_example_passes_...
PYTEST_EXAMPLE = ROOT / "examples" / "unit_testing.py"
PROGRAMS = [p for p in EXAMPLES if p != PYTEST_EXAMPLE]
# Each README code block that starts with `# examples/NAME.py` must equal that file.
README_BLOCK = re.compile(r"```python\n# (examples/\w+\.py)\n(.*?)```", re.DOTALL)

# A string must appear in the output; a pattern must match it (counts that grow on a re-run).
EXPECTED_OUTPUT: dict[str, list[str | re.Pattern[str]]] = {
    "quickstart.py": ["message_id='<receipt-7@shop>'"],
    "options.py": ["duplicate of run", "created: False", "reindexed acme", "expired"],
    "trace_tree.py": ["result: 6", "└─", "cancelled"],
    "limits.py": ["most running at once per tenant: {'acme': 1, 'zeta': 1}", "acme:us: 9",
                  "rate_limited: acme:eu waits", "acme:eu: [0, 1, 2]",
                  "refused: job 'call_provider': its concurrency_key function returned a key"],
    "schedules.py": ["trigger: schedule", "heartbeat          * * * * * *      disabled"],
    "lifecycle.py": ["worker started", "log 3 rows skipped in a.csv", "old name -> 300 rows",
                     "- not_before:", "- job_disabled:", re.compile(r"'cancelled': [1-9]"),
                     "last success: run"],
    "fastapi_app.py": ["accepted: 202 run", "event: snapshot", "progress resizing",
                       "event: end", "result: thumb-7-128.png"],
    "sync_caller.py": ["view: 202", "status: 200 {'report': {", "bad input: 400",
                       "['customer_id']", "failing: 500", "no such customer",
                       "re-rendered 2: 3 pages"],
}


@pytest.mark.anyio
@pytest.mark.parametrize("example", PROGRAMS, ids=lambda p: p.name)
async def test_example_runs_twice(example: Path, dsn: str) -> None:
    """Twice against the same database: an example must leave it as a re-run needs it (a
    disabled schedule switched back on, no run left holding a dedup id)."""
    for attempt in ("first", "second"):
        with anyio.fail_after(90):
            result = await anyio.run_process(
                [sys.executable, str(example)],
                env={**os.environ, "ASYNCJOBS_DSN": dsn},
                cwd=ROOT,
                check=False,
            )
        stdout, stderr = result.stdout.decode(), result.stderr.decode()
        assert result.returncode == 0, f"{attempt} run: {stderr}"
        for expected in EXPECTED_OUTPUT.get(example.name, []):
            if isinstance(expected, str):
                assert expected in stdout, f"{attempt} run: {stdout}"
            else:
                assert expected.search(stdout), f"{attempt} run: {stdout}"


def test_every_example_has_expectations() -> None:
    assert {p.name for p in PROGRAMS} <= EXPECTED_OUTPUT.keys()


def _install_entry_points(site: Path) -> None:
    """Make pyproject.toml's pytest11 entry points visible to a new interpreter, as
    installing asyncjobs does (a dist-info folder on its path), without installing it."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    lines = "".join(f'{name} = {target}\n' for name, target in declared["pytest11"].items())
    dist_info = site / "asyncjobs_entry_points-0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: asyncjobs-entry-points\n"
                                        "Version: 0\n")
    (dist_info / "entry_points.txt").write_text(f"[pytest11]\n{lines}")


@pytest.mark.anyio
async def test_the_pytest_example_passes_as_in_a_users_project(
    tmp_path: Path, asyncjobs_databases: ThrowawayDatabases
) -> None:
    """The README's testing example, alone in a folder (no conftest, no pytest settings),
    under pytest with warnings as errors: the plugin comes from the declared entry point."""
    project, site = tmp_path / "project", tmp_path / "site"
    project.mkdir()
    shutil.copy(PYTEST_EXAMPLE, project / "test_billing.py")
    _install_entry_points(site)
    path = os.pathsep.join([str(site), str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, ENV_DSN: asyncjobs_databases.server_dsn}
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-W", "error", "-v"]
    with anyio.fail_after(90):
        result = await anyio.run_process(command, cwd=project, env=env, check=False)
    output = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, output
    assert "test_the_function_alone PASSED" in output
    assert "test_through_a_worker PASSED" in output
    assert "test_an_hour_later_in_no_time PASSED" in output
    assert "3 passed" in output
    assert f"asyncjobs: tests ran on PostgreSQL at {asyncjobs_databases.server_dsn}" in output


def test_readme_shows_examples_verbatim() -> None:
    readme = (ROOT / "README.md").read_text()
    shown = dict(README_BLOCK.findall(readme))
    assert shown, "the README shows no example"
    for path, code in shown.items():
        assert (ROOT / path).read_text() == code, f"README copy of {path} is out of date"
