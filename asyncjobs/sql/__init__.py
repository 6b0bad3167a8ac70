"""SQL lives in .sql files: named queries, the schema and its numbered migrations."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType
from typing import Literal

Returns = Literal["one", "many", "exec"]

_HEADER = re.compile(r"^-- name: (\w+) :(one|many|exec)\s*$", re.MULTILINE)
_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Query:
    name: str
    returns: Returns
    text: str


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    text: str


def _read(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def parse_queries(source: str) -> MappingProxyType[str, Query]:
    """Split a file of ``-- name: x :kind`` blocks into a read-only mapping."""
    headers = list(_HEADER.finditer(source))
    queries: dict[str, Query] = {}
    for header, following in zip(headers, [*headers[1:], None], strict=True):
        end = following.start() if following else len(source)
        body = source[header.end() : end].strip()
        name, returns = header.group(1), header.group(2)
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = Query(name, returns, body)  # type: ignore[arg-type]
    return MappingProxyType(queries)


def load_migrations() -> tuple[Migration, ...]:
    """Every ``migrations/NNNN_name.sql``, in version order; numbering must have no gaps."""
    folder = resources.files(__package__).joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _MIGRATION_NAME.match(entry.name)
        if match is None:
            raise ValueError(f"migration file {entry.name!r} is not named NNNN_name.sql")
        found.append(Migration(int(match.group(1)), match.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise ValueError("migration versions must run 1, 2, 3, ... without gaps")
    return tuple(found)


QUERIES = parse_queries(_read("queries.sql"))
SCHEMA = _read("schema.sql")
MIGRATIONS = load_migrations()
SCHEMA_VERSION = MIGRATIONS[-1].version
