"""Trace trees: the runs under one root, as nested nodes or as indented text."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from asyncjobs.runs import RunRecord


@dataclass
class TraceNode:
    run: RunRecord
    children: list[TraceNode] = field(default_factory=list)


def build_tree(runs: Iterable[RunRecord]) -> list[TraceNode]:
    """Nest runs by ``parent_run_id``; runs whose parent is not in the set are roots."""
    nodes = {run.id: TraceNode(run) for run in sorted(runs, key=lambda r: r.id)}
    roots: list[TraceNode] = []
    for node in nodes.values():
        parent = nodes.get(node.run.parent_run_id or -1)
        (parent.children if parent else roots).append(node)
    return roots


def render_tree(roots: list[TraceNode]) -> str:
    """Indented text, one run a line: ``#id job status duration [progress]``."""
    lines: list[str] = []

    def walk(node: TraceNode, prefix: str, last: bool, top: bool) -> None:
        branch = "" if top else ("└─ " if last else "├─ ")
        lines.append(prefix + branch + _describe(node.run))
        child_prefix = prefix if top else prefix + ("   " if last else "│  ")
        for index, child in enumerate(node.children):
            walk(child, child_prefix, index == len(node.children) - 1, False)

    for root in roots:
        walk(root, "", True, True)
    return "\n".join(lines)


def _describe(run: RunRecord) -> str:
    parts = [f"#{run.id} {run.job}", run.status.value]
    if run.duration is not None:
        parts.append(f"{run.duration * 1000:.0f} ms")
    if run.attempt > 1:
        parts.append(f"attempt {run.attempt}")
    if run.error and run.status.value == "failed":
        parts.append(f"{run.error.get('type')}: {run.error.get('message')}")
    return "  ".join(parts)
