"""Predexon JSON text <-> Python values, with every number kept exact.

`loads()` keeps each JSON *number* with a fraction or exponent as its exact text
(`RawNumber`), so `0.1` never becomes a binary float; integers stay `int`. `dumps()` writes
canonical JSON (sorted keys, no spaces) and gives a `RawNumber` back as the text it was
read from, so parse-then-write is lossless. Every Predexon path of the bridge (WebSocket
frames, REST history pages) reads and writes JSON through these two functions; the
simulator writes its own (`bridge.sim.predexon.protocol`).
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any


class RawNumber:
    """A JSON number kept as its exact text."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RawNumber) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return f"RawNumber({self.text!r})"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite JSON number {name} is not valid JSON")


def loads(text: str | bytes) -> Any:
    """Parse JSON keeping numbers exact: floats as `RawNumber`, integers as `int`."""
    return json.loads(text, parse_float=RawNumber, parse_constant=_reject_constant)


def dumps(value: Any, *, sort_keys: bool = True) -> str:
    """Canonical JSON (sorted keys, no spaces) writing `RawNumber`s (and `Decimal`s) as
    their exact text. `sort_keys=False` keeps the object's own key order."""
    parts: list[str] = []
    _dump(value, parts, sort_keys)
    return "".join(parts)


def _dump(value: Any, out: list[str], sort_keys: bool) -> None:
    if isinstance(value, RawNumber):
        out.append(value.text)
    elif isinstance(value, Decimal):
        out.append(str(value))
    elif isinstance(value, dict):
        out.append("{")
        for i, key in enumerate(sorted(value) if sort_keys else value):
            if i:
                out.append(",")
            out.append(json.dumps(str(key)))
            out.append(":")
            _dump(value[key], out, sort_keys)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _dump(item, out, sort_keys)
        out.append("]")
    else:
        # str, int, bool, None: the stdlib's output is already canonical.
        out.append(json.dumps(value))


# --- describing a parsed value in an error message -------------------------------------


def json_type_name(value: Any) -> str:
    """The JSON name of a parsed value's type ("number", "object", ...), for errors."""
    if isinstance(value, RawNumber):
        return "number"
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


def json_excerpt(value: Any) -> str:
    """A parsed value as JSON text cut to 40 characters, for errors."""
    text = dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."
