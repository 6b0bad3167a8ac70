"""Named parameters in .sql files: ``:name`` becomes ``$n`` once, at load."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from asyncjobs import sql


def _one(text: str) -> sql.Query:
    (query,) = sql.parse_queries(f"-- name: q :one\n{text}").values()
    return query


def test_names_become_numbers_in_order_of_first_use() -> None:
    query = _one("SELECT :b::text[], :a, :b, $1 -- :c is not one, nor $9\nFROM t")
    assert query.params == ("b", "a")
    assert query.text == "SELECT $2::text[], $3, $2, $1 -- :c is not one, nor $9\nFROM t"


def test_casts_literals_and_slices_are_not_parameters() -> None:
    query = _one("""SELECT x::now, '{"events":true}', 'it''s :x', a[1:$1], y::text""")
    assert query.params == ()
    assert query.text == """SELECT x::now, '{"events":true}', 'it''s :x', a[1:$1], y::text"""


def test_now_is_typed_for_coalesce() -> None:
    query = _one("SELECT coalesce(:now, now()), :now")
    assert query.takes_now and query.params == ("now",)
    assert query.text == "SELECT coalesce($1::timestamptz, now()), $1::timestamptz"


def test_values_are_passed_by_name() -> None:
    query = _one("SELECT $1, :b, :a")
    assert query.arguments(["one"], {"a": 1, "b": 2}) == ["one", 2, 1]
    with pytest.raises(TypeError, match="takes \\['a', 'b'\\], was given \\['a'\\]"):
        query.arguments(["one"], {"a": 1})
    with pytest.raises(TypeError, match="was given \\['a', 'b', 'c'\\]"):
        query.arguments(["one"], {"a": 1, "b": 2, "c": 3})


def test_no_named_parameter_is_left_in_any_query() -> None:
    for query in sql.QUERIES.values():
        code = re.sub(r"'(?:[^']|'')*'|--[^\n]*|::\w+", "", query.text)
        assert re.search(r"(?<![:\w]):[a-z_]", code) is None, query.name


def test_every_query_names_its_parameters() -> None:
    """Callers pass values by name only (the backend's helpers take no positional values), so
    a ``$n`` written in a .sql file could never be given one."""
    for query in sql.QUERIES.values():
        code = re.sub(r"'(?:[^']|'')*'|--[^\n]*", "", query.text)
        numbers = {int(n) for n in re.findall(r"\$(\d+)", code)}
        assert numbers == set(range(1, len(query.params) + 1)), query.name


def test_a_name_is_defined_once_across_files() -> None:
    first = "-- name: a :one\nSELECT 1;\n"
    assert set(sql.parse_queries(first, "-- name: b :one\nSELECT 2;\n")) == {"a", "b"}
    with pytest.raises(ValueError, match="query 'a' is defined twice"):
        sql.parse_queries(first, "-- name: a :one\nSELECT 2;\n")


def test_every_query_file_is_loaded() -> None:
    """A new .sql file beside the others is a file of queries: it must be in QUERY_FILES
    (schema.sql is the schema; migrations have their own folder)."""
    folder = Path(sql.__file__).parent
    files = {p.name for p in folder.glob("*.sql")} - {"schema.sql"}
    assert files == set(sql.QUERY_FILES)
