"""The examples run, and the README shows them exactly as they are in examples/."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import anyio
import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
# Each README code block that starts with `# examples/NAME.py` must equal that file.
README_BLOCK = re.compile(r"```python\n# (examples/\w+\.py)\n(.*?)```", re.DOTALL)

# A string must appear in the output; a pattern must match it (counts that grow on a re-run).
EXPECTED_OUTPUT: dict[str, list[str | re.Pattern[str]]] = {
    "quickstart.py": ["message_id='<receipt-7@shop>'"],
    "options.py": ["duplicate of run", "created: False", "reindexed acme", "expired"],
    "trace_tree.py": ["result: 6", "└─", "cancelled"],
    "unit_testing.py": ["failed as expected: ValueError negative invoice", "ok"],
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
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
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
    assert {p.name for p in EXAMPLES} <= EXPECTED_OUTPUT.keys()


def test_readme_shows_examples_verbatim() -> None:
    readme = (ROOT / "README.md").read_text()
    shown = dict(README_BLOCK.findall(readme))
    assert shown, "the README shows no example"
    for path, code in shown.items():
        assert (ROOT / path).read_text() == code, f"README copy of {path} is out of date"
