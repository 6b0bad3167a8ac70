"""The public API is exactly ``asyncjobs.__all__``: sorted, complete, and nothing extra."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from types import ModuleType

import asyncjobs


def test_all_is_a_sorted_tuple_of_unique_names() -> None:
    assert isinstance(asyncjobs.__all__, tuple)
    assert list(asyncjobs.__all__) == sorted(set(asyncjobs.__all__))


def test_every_listed_name_exists_and_comes_from_asyncjobs() -> None:
    for name in asyncjobs.__all__:
        value = getattr(asyncjobs, name)
        if isinstance(value, ModuleType):
            raise AssertionError(f"{name} is a module, not an API object")
        assert getattr(value, "__module__", "").startswith("asyncjobs."), name


def test_every_public_name_in_the_package_is_listed() -> None:
    # what the running package exposes (submodules excepted: importing them sets attributes)
    exposed = {
        name
        for name, value in vars(asyncjobs).items()
        if not name.startswith("_") and not isinstance(value, ModuleType)
    }
    assert exposed - set(asyncjobs.__all__) == set()


def test_init_only_reexports_with_explicit_aliases() -> None:
    """Each import in ``__init__`` is ``from asyncjobs.x import Name as Name`` (the alias marks
    the re-export as meant, for type checkers too) and every such name is in ``__all__``."""
    source = Path(inspect.getfile(asyncjobs)).read_text(encoding="utf-8")
    reexported = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            assert node.module is not None and node.module.startswith("asyncjobs."), node.module
            for alias in node.names:
                assert alias.asname == alias.name, f"import {alias.name} as {alias.name}"
                reexported.add(alias.name)
        elif isinstance(node, ast.Import):
            raise AssertionError("plain imports in __init__ would leak module names")
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            assert node.name.startswith("_") or node.name in asyncjobs.__all__, node.name
    assert reexported == set(asyncjobs.__all__)


def test_callers_api_is_public() -> None:
    """What services without the jobs' code, sync code and result checks use."""
    callers = {"Client", "JobRef", "RunErrorInfo", "RunResult", "SyncClient", "SyncRun"}
    assert callers <= set(asyncjobs.__all__)
    assert {"ok", "status", "value", "error", "record"} <= set(dir(asyncjobs.RunResult))


def test_readme_lists_the_public_api() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    listed = readme.split("`asyncjobs.__all__`: ", 1)[1].split("\n", 1)[0]
    assert listed == ", ".join(f"`{name}`" for name in asyncjobs.__all__) + "."
