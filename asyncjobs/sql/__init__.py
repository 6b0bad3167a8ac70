"""SQL lives in .sql files: named queries, the schema and its numbered migrations."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType

# The kind after the name (:one, :many, :exec) tells a reader what the query returns; the
# backend picks fetch/fetchrow/execute itself, so the kind is not kept.
_HEADER = re.compile(r"^-- name: (\w+) :(one|many|exec)\s*$", re.MULTILINE)
_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
#: A migration's header line naming the oldest code version that still works after it.
_COMPATIBLE = re.compile(r"^-- compatible-with-code: (\d+)\s*$", re.MULTILINE)
_POSITIONAL = re.compile(r"\$(\d+)")
#: what the parameter scan passes over (string literals, comments, casts such as ``::text[]``)
#: and what it translates: a named parameter, ``:name``
_TOKEN = re.compile(r"'(?:[^']|'')*'|--[^\n]*|::\w+|(?<![:\w]):([a-z_][a-z0-9_]*)")
_SKIPPED = re.compile(r"'(?:[^']|'')*'|--[^\n]*")


@dataclass(frozen=True, slots=True)
class Query:
    """One named statement, its parameters written ``:name`` (or ``$n``, the older style).

    Each ``:name`` becomes a ``$n`` once, at load, numbered after the statement's last
    ``$n`` in order of first use; ``params`` lists the names in that order, and the backend
    passes values by name. ``:now`` is the time of a time-dependent statement
    (``coalesce(:now, now())``): the backend fills it with its test clock's time, or NULL to
    keep the database clock.
    """

    name: str
    text: str
    params: tuple[str, ...] = ()

    @property
    def takes_now(self) -> bool:
        return "now" in self.params

    def arguments(self, positional: Sequence[object], named: dict[str, object]) -> list[object]:
        """The statement's arguments: ``positional`` for its ``$n``, then ``named`` in order;
        a missing or unknown name is a bug in the caller, reported before any round trip."""
        if set(named) != set(self.params):
            raise TypeError(
                f"query {self.name!r} takes {sorted(self.params)}, was given {sorted(named)}"
            )
        return [*positional, *(named[p] for p in self.params)]


def _query(name: str, body: str) -> Query:
    code = _SKIPPED.sub("", body)  # a comment may name a parameter ("in the last $2")
    last = max((int(n) for n in _POSITIONAL.findall(code)), default=0)
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        param = match.group(1)
        if param is None:
            return match.group(0)
        if param not in names:
            names.append(param)
        placeholder = f"${last + names.index(param) + 1}"
        return f"{placeholder}::timestamptz" if param == "now" else placeholder

    return Query(name, _TOKEN.sub(number, body), tuple(names))


@dataclass(frozen=True, slots=True)
class Migration:
    """One ``migrations/NNNN_name.sql`` file.

    ``compatible_from`` comes from the file's ``-- compatible-with-code: N`` line: code built
    for schema version ``N`` or newer keeps working on a database this migration was applied
    to (an *additive* migration: new tables, nullable or defaulted columns, indexes,
    functions). Without the line it is the migration's own version: older code must stop.
    """

    version: int
    name: str
    text: str
    compatible_from: int


def _read(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def parse_queries(*sources: str) -> MappingProxyType[str, Query]:
    """Split files of ``-- name: x :kind`` blocks into one read-only mapping; a name defined
    twice, in one file or in two, is an error."""
    queries: dict[str, Query] = {}
    for source in sources:
        headers = list(_HEADER.finditer(source))
        for header, following in zip(headers, [*headers[1:], None], strict=True):
            end = following.start() if following else len(source)
            body = source[header.end() : end].strip()
            name = header.group(1)
            if name in queries:
                raise ValueError(f"query {name!r} is defined twice")
            queries[name] = _query(name, body)
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
        found.append(_migration(int(match.group(1)), match.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise ValueError("migration versions must run 1, 2, 3, ... without gaps")
    return tuple(found)


def _migration(version: int, name: str, text: str) -> Migration:
    headers = _COMPATIBLE.findall(text)
    if len(headers) > 1:
        raise ValueError(f"migration {version:04d}_{name}: more than one compatible-with-code")
    compatible_from = int(headers[0]) if headers else version
    if not 1 <= compatible_from <= version:
        raise ValueError(
            f"migration {version:04d}_{name}: compatible-with-code must be 1 to {version}"
        )
    return Migration(version, name, text, compatible_from)


def incompatibility(code_version: int, applied: Sequence[tuple[int, int | None]]) -> str | None:
    """Why code built for schema ``code_version`` cannot use a database whose applied
    migrations are ``applied`` ((version, compatible_from) pairs; ``None`` is the version
    itself), or ``None`` when it can: the database is at ``code_version``, or every
    migration above it declares compatibility with it (a rolling deploy).
    """
    if not applied:
        return "not installed"
    current = max(version for version, _ in applied)
    if current < code_version:
        return f"at version {current}, older than this code (version {code_version})"
    blocking = sorted(
        version
        for version, compatible_from in applied
        if version > code_version and (compatible_from or version) > code_version
    )
    if blocking:
        return (
            f"at version {current}; migration {blocking[0]} is not compatible with this "
            f"code (version {code_version})"
        )
    return None


#: the named statements, one file per concern (the ports of asyncjobs/backends/base.py, the
#: declared definitions, and the schema's version bookkeeping)
QUERY_FILES = (
    "versions.sql",
    "definitions.sql",
    "queue.sql",
    "schedules.sql",
    "insights.sql",
    "feed.sql",
)
QUERIES = parse_queries(*(_read(name) for name in QUERY_FILES))
SCHEMA = _read("schema.sql")
MIGRATIONS = load_migrations()
SCHEMA_VERSION = MIGRATIONS[-1].version
