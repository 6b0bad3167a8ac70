"""Argument redaction: which stored keys a job's ``redact`` paths cover, and hiding them.

A path names a parameter and then fields inside it, dot-separated: ``"password"``,
``"card.number"``. Each segment may be a field's name or its alias (``Field(alias=
"cardNumber")``: ``card.number`` and ``card.cardNumber`` are the same path). Lists, tuples
and sets are transparent: ``cards.number`` covers ``number`` in every item of ``cards:
list[Card]``. In a mapping (``dict[str, Card]``) the segment ``*`` stands for every key
(``by_id.*.number``); a literal key cannot be checked against a type, so it is refused. In a
union (``Card | Bank``, ``Optional[Card]``) a field of any member counts.

Paths are checked when the job is declared: a segment that is not there is a
``ConfigurationError``, because a typo would otherwise show the secret. The check reads
pydantic's own description of the stored JSON (the arguments' JSON schema in serialization
mode, once with aliases and once with names), so the resolved keys are exactly the keys
stored, whatever produced them (aliases, alias generators, serialization aliases).
"""

from __future__ import annotations

import collections
import copy
from collections.abc import Iterator, Sequence
from typing import Any

import pydantic

from asyncjobs.errors import ConfigurationError

#: what a redacted value shows
REDACTED = "[redacted]"
#: the segment that stands for every key of a mapping
ANY_KEY = "*"

#: a key path as stored (``("card", "cardNumber")``)
KeyPath = tuple[str, ...]
#: a schema node twice: with stored keys (aliases) and with field names
_Pair = tuple[dict[str, Any], dict[str, Any]]


def resolve_paths(
    job_name: str, paths: Sequence[str], model: type[pydantic.BaseModel]
) -> tuple[KeyPath, ...]:
    """The stored key paths that ``paths`` cover in the arguments of ``model``; raises
    ``ConfigurationError`` for a path that is not there."""
    if isinstance(paths, str):
        raise ConfigurationError(f"job {job_name!r}: redact takes a list of paths, not a string")
    if not paths:
        return ()
    try:
        stored = model.model_json_schema(by_alias=True, mode="serialization")
        named = model.model_json_schema(by_alias=False, mode="serialization")
    except pydantic.PydanticUserError as exc:
        raise ConfigurationError(f"job {job_name!r}: cannot check redact paths: {exc}") from exc
    walk = _Walk(stored.get("$defs", {}), named.get("$defs", {}))
    keys: list[KeyPath] = []
    for path in paths:
        segments = path.split(".") if isinstance(path, str) else []
        if not segments or not all(segments):
            raise ConfigurationError(
                f"job {job_name!r}: redact path {path!r} must be dot-separated field names"
            )
        try:
            keys.extend(walk.resolve((stored, named), segments, top=True))
        except _NotThere as missing:
            message = f"job {job_name!r}: cannot redact {path!r}: {missing}"
            raise ConfigurationError(message) from None
    return tuple(dict.fromkeys(keys))


def redact_args(args: dict[str, Any], keys: Sequence[KeyPath]) -> dict[str, Any]:
    """A copy of stored arguments with the values at ``keys`` replaced (keys are kept, so a
    reader sees that something was there)."""
    if not keys:
        return args
    redacted = copy.deepcopy(args)
    for path in keys:
        _redact(redacted, path)
    return redacted


def _redact(value: Any, path: KeyPath) -> None:
    if isinstance(value, list):  # a list, tuple or set as stored: every item
        for item in value:
            _redact(item, path)
        return
    if not isinstance(value, dict):
        return
    key, rest = path[0], path[1:]
    for name in list(value) if key == ANY_KEY else [key] if key in value else []:
        if rest:
            _redact(value[name], rest)
        else:
            value[name] = REDACTED


class _NotThere(Exception):
    """A segment no member of the schema at that point has (the message says which)."""


class _Walk:
    """Follows path segments through the two schemas, side by side: a property has the
    same position in both (pydantic writes fields in declaration order)."""

    def __init__(self, stored_defs: dict[str, Any], named_defs: dict[str, Any]) -> None:
        self.defs = (stored_defs, named_defs)

    def resolve(self, node: _Pair, segments: list[str], *, top: bool = False) -> list[KeyPath]:
        if not segments:
            return [()]
        segment = segments[0]
        found: list[KeyPath] = []
        deeper: _NotThere | None = None
        fields: list[str] = []
        mapping = False
        for stored, named in self._objects(node):
            fields += _field_names(stored, named, top)
            mapping = mapping or stored.get("additionalProperties") not in (None, False)
            for key, child in self._children(stored, named, segment, top):
                try:
                    found += [(key, *rest) for rest in self.resolve(child, segments[1:])]
                except _NotThere as exc:  # another member of a union may still have it
                    deeper = deeper or exc
        if found:
            return found
        if deeper is not None:
            raise deeper
        if segment == ANY_KEY:
            raise _NotThere("'*' only stands for the keys of a mapping (a dict)")
        if mapping and not fields:
            raise _NotThere(f"{segment!r} would be a key of a mapping, which no type can check: "
                            "use '*' for every key")
        known = ", ".join(dict.fromkeys(fields)) or "none: it is not a model"
        raise _NotThere(f"{segment!r} is not a field there (fields: {known})")

    def _children(
        self, stored: dict[str, Any], named: dict[str, Any], segment: str, top: bool
    ) -> Iterator[tuple[str, _Pair]]:
        if segment == ANY_KEY:
            extra = stored.get("additionalProperties")
            if extra is not None and extra is not False:
                other = named.get("additionalProperties")
                yield ANY_KEY, (_schema(extra), _schema(other))
            return
        pairs = zip(
            stored.get("properties", {}).items(), named.get("properties", {}).items(), strict=True
        )
        for (key, child), (name, other) in pairs:
            # the top level's names are synthetic (p0, p1...): only parameter names count there
            if segment == key or (segment == name and not top):
                yield key, (child, other)

    def _objects(self, node: _Pair) -> Iterator[_Pair]:
        """The object schemas ``node`` may stand for: through ``$ref``, unions and the
        items of arrays (which redaction passes through)."""
        queue, seen = collections.deque([node]), set()
        while queue:
            stored, named = queue.popleft()  # in order: messages list a union's members in order
            ref = stored.get("$ref")
            if isinstance(ref, str) and ref not in seen:
                seen.add(ref)
                name = ref.rsplit("/", 1)[-1]
                queue.append((self.defs[0][name], self.defs[1][name]))
            for word in ("anyOf", "oneOf", "allOf", "prefixItems"):
                queue.extend(zip(stored.get(word, []), named.get(word, []), strict=True))
            if isinstance(stored.get("items"), dict):
                queue.append((stored["items"], named["items"]))
            if "properties" in stored or "additionalProperties" in stored:
                yield stored, named


def _field_names(stored: dict[str, Any], named: dict[str, Any], top: bool) -> list[str]:
    keys, names = stored.get("properties", {}), named.get("properties", {})
    return [
        key if top or key == name else f"{name} (alias {key})"
        for key, name in zip(keys, names, strict=True)
    ]


def _schema(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
