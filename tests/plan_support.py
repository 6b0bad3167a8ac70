"""Reading EXPLAIN (FORMAT JSON) output in the plan tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every node of a plan tree, the root first."""
    yield plan
    for child in plan.get("Plans", []):
        yield from plan_nodes(child)
