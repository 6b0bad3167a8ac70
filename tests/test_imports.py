"""The package's import graph has no circle, and ``App`` imports nothing built from it.

``lint-imports`` (run by ``.ci/run``) checks the layers in ``pyproject.toml``; this test checks
the property the layers exist for with grimp directly, so a circle fails the suite too, and
names the modules in it. Imports under ``TYPE_CHECKING`` never run and are left out, as in the
contract.
"""

from __future__ import annotations

from collections.abc import Iterable

import grimp
import pytest

import asyncjobs
from asyncjobs.client import Client
from asyncjobs.web import Dashboard
from asyncjobs.worker import Worker


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    # no cache: a stale one would hide a new edge
    return grimp.build_graph(
        "asyncjobs",
        include_external_packages=False,
        exclude_type_checking_imports=True,
        cache_dir=None,
    )


def strongly_connected(nodes: Iterable[str], edges: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative: no recursion limit to mind."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            step = next(successors, None)
            if step is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    components.append(component)
            elif step not in index:
                index[step] = low[step] = len(index)
                stack.append(step)
                on_stack.add(step)
                work.append((step, iter(sorted(edges[step]))))
            elif step in on_stack:
                low[node] = min(low[node], index[step])
    return components


def test_strongly_connected_finds_a_circle() -> None:
    # the check below can fail: a three-module circle and a self-contained module
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    components = strongly_connected(sorted(edges), edges)
    assert sorted(sorted(c) for c in components) == [["a", "b", "c"], ["d"]]


def test_no_import_circle(graph: grimp.ImportGraph) -> None:
    modules = sorted(graph.modules)
    assert "asyncjobs.backends.postgres" in modules  # every subpackage is seen
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in modules}
    circles = [sorted(c) for c in strongly_connected(modules, edges) if len(c) > 1]
    assert circles == []


@pytest.mark.parametrize(
    "above", ["asyncjobs.client", "asyncjobs.worker", "asyncjobs.scheduler", "asyncjobs.web"]
)
def test_app_imports_nothing_built_from_it(graph: grimp.ImportGraph, above: str) -> None:
    chain = graph.find_shortest_chain(importer="asyncjobs.app", imported=above, as_packages=True)
    assert chain is None


def test_the_composition_root_wires_the_factories() -> None:
    app = asyncjobs.App("wired")
    dsn = "postgresql://127.0.0.1:1/none"  # nothing connects: constructing only
    assert isinstance(app.client(dsn), Client)
    assert isinstance(app.worker(dsn), Worker)
    assert isinstance(app.asgi(dsn), Dashboard)
