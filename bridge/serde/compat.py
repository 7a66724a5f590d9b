"""Avro schema compatibility: can data written with one schema be read with another?

`problems(reader, writer)` applies the schema-resolution rules of the Avro specification
("Schema Resolution") and returns what breaks, one message per problem with its path
(empty: compatible). On top of that, `check(level, new, existing)` answers a Schema
Registry compatibility level (BACKWARD = the new schema reads data written with the old
ones; FORWARD = the old schemas read data written with the new one; FULL = both;
*_TRANSITIVE = against every existing version instead of only the latest).

Why our own checker: confluent-kafka's `mock://` registry does not enforce compatibility,
and the registry's own test endpoint answers only yes or no through the client; the bridge
must refuse an incompatible change at startup with a message that says what to fix.

Rules implemented (reader R, writer W):
- a writer union: every branch W may have written must resolve against R;
- a reader union (writer not a union): the first branch of R that matches W;
- primitives: equal types, or the promotions int -> long/float/double, long -> float/double,
  float -> double, string <-> bytes; logical types follow their underlying type;
- records: same unqualified name (or a reader alias); each reader field by name (or alias)
  from the writer, or else it needs a default; writer fields the reader lacks are skipped;
- enums: same name; a writer symbol the reader lacks needs the reader's `default` symbol;
- arrays by items, maps by values, fixed by name and size.
Released versions of our own schemas are kept in `avro/history/<name>/v<N>.avsc`
(`released_versions`), each as one self-contained schema (other files' types inlined).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import Any

import fastavro

LEVELS = (
    "NONE",
    "BACKWARD",
    "BACKWARD_TRANSITIVE",
    "FORWARD",
    "FORWARD_TRANSITIVE",
    "FULL",
    "FULL_TRANSITIVE",
)

_PROMOTIONS = {
    ("int", "long"),
    ("int", "float"),
    ("int", "double"),
    ("long", "float"),
    ("long", "double"),
    ("float", "double"),
    ("string", "bytes"),
    ("bytes", "string"),
}
"""(writer type, reader type) pairs the Avro spec lets a reader promote."""

_NAMED = ("record", "error", "enum", "fixed")


def parse(schema: Any) -> Any:
    """A schema (JSON text or value) with every name made fully qualified (fastavro does the
    namespace rules), so named types can be matched by full name."""
    value = json.loads(schema) if isinstance(schema, str) else schema
    return fastavro.parse_schema(value, _write_hint=False, _force=True)


def _collect(node: Any, named: dict[str, Any]) -> None:
    if isinstance(node, list):
        for item in node:
            _collect(item, named)
    elif isinstance(node, dict):
        kind = node.get("type")
        if kind in _NAMED and "name" in node:
            named[node["name"]] = node
        for key in ("fields", "items", "values"):
            if key in node:
                _collect(node[key], named)
        if kind in ("record", "error"):
            for field in node["fields"]:
                _collect(field["type"], named)
        elif isinstance(kind, dict | list):
            _collect(kind, named)


class _Side:
    """One schema with its named types, to resolve references."""

    def __init__(self, schema: Any) -> None:
        self.schema = parse(schema)
        self.named: dict[str, Any] = {}
        _collect(self.schema, self.named)

    def resolve(self, node: Any) -> Any:
        while True:
            if isinstance(node, str) and node in self.named:
                node = self.named[node]
            elif isinstance(node, dict) and isinstance(node.get("type"), dict | list | str):
                inner = node["type"]
                # {"type": "long", "logicalType": ...} or {"type": {...}}: the underlying type
                if isinstance(inner, dict | list) or inner not in (*_NAMED, "array", "map"):
                    node = inner
                else:
                    return node
            else:
                return node


def _kind(node: Any) -> str:
    if isinstance(node, list):
        return "union"
    if isinstance(node, dict):
        return str(node["type"])
    return str(node)


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


class _Checker:
    def __init__(self, reader: _Side, writer: _Side) -> None:
        self.reader = reader
        self.writer = writer
        self.found: list[str] = []
        self._seen: set[tuple[str, str]] = set()

    def check(self, r: Any, w: Any, path: str) -> bool:
        """True when everything W can write is readable as R; problems go to `found`."""
        r, w = self.reader.resolve(r), self.writer.resolve(w)
        rk, wk = _kind(r), _kind(w)
        if wk == "union":
            ok = True
            for branch in w:
                ok = self.check(r, branch, path) and ok
            return ok
        if rk == "union":
            for branch in r:
                if self._matches(branch, w):
                    return self.check(branch, w, path)
            self.found.append(f"{path}: writer type {self._describe(w)} is not in reader union")
            return False
        if rk != wk:
            if (wk, rk) in _PROMOTIONS:
                return True
            self.found.append(f"{path}: writer type {wk} cannot be read as {rk}")
            return False
        if rk in ("record", "error"):
            return self._record(r, w, path)
        if rk == "enum":
            return self._enum(r, w, path)
        if rk == "fixed":
            if not self._same_name(r, w) or r["size"] != w["size"]:
                self.found.append(
                    f"{path}: fixed {w['name']}[{w['size']}] cannot be read as "
                    f"{r['name']}[{r['size']}]"
                )
                return False
            return True
        if rk == "array":
            return self.check(r["items"], w["items"], f"{path}[]")
        if rk == "map":
            return self.check(r["values"], w["values"], f"{path}{{}}")
        return True  # same primitive type

    def _matches(self, r: Any, w: Any) -> bool:
        """Whether reader branch `r` is the one the spec picks for writer type `w`:
        same kind (and name, for named types), or a promotion."""
        r, w = self.reader.resolve(r), self.writer.resolve(w)
        rk, wk = _kind(r), _kind(w)
        if rk == wk:
            return rk not in _NAMED or rk in ("record", "error") or self._same_name(r, w)
        return (wk, rk) in _PROMOTIONS

    def _same_name(self, r: Mapping[str, Any], w: Mapping[str, Any]) -> bool:
        aliases = {_short(a) for a in r.get("aliases", ())}
        return _short(r["name"]) == _short(w["name"]) or _short(w["name"]) in aliases

    def _describe(self, node: Any) -> str:
        kind = _kind(node)
        return f"{kind} {node['name']}" if kind in _NAMED else kind

    def _record(self, r: Mapping[str, Any], w: Mapping[str, Any], path: str) -> bool:
        if not self._same_name(r, w):
            self.found.append(f"{path}: record {w['name']} cannot be read as {r['name']}")
            return False
        key = (r["name"], w["name"])
        if key in self._seen:  # recursive types: already being checked higher up
            return True
        self._seen.add(key)
        written = {f["name"]: f for f in w["fields"]}
        ok = True
        for field in r["fields"]:
            names = [field["name"], *field.get("aliases", ())]
            source = next((written[n] for n in names if n in written), None)
            where = f"{path}.{field['name']}"
            if source is not None:
                ok = self.check(field["type"], source["type"], where) and ok
            elif "default" not in field:
                self.found.append(
                    f"{where}: reader field has no default and the writer does not have it"
                )
                ok = False
        return ok

    def _enum(self, r: Mapping[str, Any], w: Mapping[str, Any], path: str) -> bool:
        if not self._same_name(r, w):
            self.found.append(f"{path}: enum {w['name']} cannot be read as {r['name']}")
            return False
        missing = [s for s in w["symbols"] if s not in r["symbols"]]
        if missing and "default" not in r:
            self.found.append(
                f"{path}: enum {r['name']} lacks writer symbols {missing} and has no default"
            )
            return False
        return True


def problems(reader: Any, writer: Any) -> list[str]:
    """Why data written with `writer` cannot be read with `reader` (empty: it can)."""
    r, w = _Side(reader), _Side(writer)
    checker = _Checker(r, w)
    checker.check(r.schema, w.schema, _root_name(r.schema))
    return checker.found


def _root_name(schema: Any) -> str:
    return _short(schema["name"]) if isinstance(schema, dict) and "name" in schema else "value"


def check(level: str, new: Any, existing: Iterable[Any]) -> list[str]:
    """Problems of registering `new` after the `existing` versions (oldest first) under a
    registry compatibility `level`; empty when the change is allowed."""
    level = level.upper()
    if level not in LEVELS:
        raise ValueError(f"unknown compatibility level {level!r}; one of {', '.join(LEVELS)}")
    versions = list(existing)
    if level == "NONE" or not versions:
        return []
    against = versions if level.endswith("_TRANSITIVE") else versions[-1:]
    base = level.removesuffix("_TRANSITIVE")
    found: list[str] = []
    for old in against:
        if base in ("BACKWARD", "FULL"):
            found += problems(new, old)
        if base in ("FORWARD", "FULL"):
            found += [f"(old schema reading new data) {p}" for p in problems(old, new)]
    return found


def history_names() -> list[str]:
    """Full names of the schemas whose released versions are kept in `avro/history`."""
    folder = resources.files("bridge") / "avro" / "history"
    return sorted(p.name for p in folder.iterdir() if p.is_dir())


def released_versions(name: str) -> list[tuple[int, Any]]:
    """The released versions of schema `name` kept in the repository, oldest first:
    `[(version, schema JSON)]`; empty when none is kept."""
    folder = resources.files("bridge") / "avro" / "history" / name
    if not folder.is_dir():
        return []
    found = []
    for item in folder.iterdir():
        stem = item.name.removesuffix(".avsc")
        if item.name.endswith(".avsc") and stem.startswith("v") and stem[1:].isdigit():
            found.append((int(stem[1:]), json.loads(item.read_text())))
    return sorted(found, key=lambda pair: pair[0])
