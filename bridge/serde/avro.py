"""Avro schemas and serializers.

Schemas live in the repository's top-level `avro/<full name>.avsc` (installed inside the
package as `bridge/avro`), one per topic value; a schema may refer to
named types defined in other files of that folder. A `Serializer` turns one datum into
the bytes of one Kafka value: the wire format's prefix followed by the Avro body.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from importlib import resources
from io import BytesIO
from typing import Any, Protocol

import fastavro
from fastavro.schema import to_parsing_canonical_form

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
"""Avro single-object encoding marker (Avro spec, 'Single-object encoding')."""
CONFLUENT_MAGIC = b"\x00"
"""Confluent wire format: magic byte 0, 4-byte big-endian schema id, Avro body."""

_CRC64_EMPTY = 0xC15D213AA4D7A795
_CRC64_TABLE: list[int] = []
for _i in range(256):
    _fp = _i
    for _ in range(8):
        _fp = (_fp >> 1) ^ (_CRC64_EMPTY & -(_fp & 1))
    _CRC64_TABLE.append(_fp)


def crc64_avro(data: bytes) -> int:
    """The Rabin CRC-64 fingerprint the Avro spec defines for schema fingerprints."""
    fp = _CRC64_EMPTY
    for byte in data:
        fp = (fp >> 8) ^ _CRC64_TABLE[(fp ^ byte) & 0xFF]
    return fp


def schema_text(name: str) -> str:
    """The `.avsc` text of a schema by its full name, e.g. `polybridge.State`."""
    return (resources.files("bridge") / "avro" / f"{name}.avsc").read_text()


@cache
def named_schemas() -> dict[str, Any]:
    """Every schema in `avro/`, parsed, so files can refer to each other's types."""
    named: dict[str, Any] = {}
    folder = resources.files("bridge") / "avro"
    pending = sorted(p.name[: -len(".avsc")] for p in folder.iterdir() if p.name.endswith(".avsc"))
    # Parse in dependency order: retry those whose referenced types are not parsed yet.
    while pending:
        progressed = False
        for name in list(pending):
            try:
                fastavro.parse_schema(json.loads(schema_text(name)), named_schemas=named)
            except fastavro.schema.UnknownType:
                continue
            pending.remove(name)
            progressed = True
        if not progressed:
            raise ValueError(f"unresolvable Avro type references in: {', '.join(pending)}")
    return named


@cache
def load_schema(name: str) -> Any:
    """The parsed schema `name`, with references to other files' types resolved."""
    named = dict(named_schemas())
    return fastavro.parse_schema(json.loads(schema_text(name)), named_schemas=named)


def expanded_schema(name: str) -> Any:
    """Schema `name` as one self-contained JSON value: every named type from other files
    inlined where it first appears (as Avro requires), later uses left as references."""
    named = named_schemas()
    defined: set[str] = set()

    def expand(node: Any) -> Any:
        if isinstance(node, str):
            if node in named and node not in defined:
                return expand(named[node])
            return node
        if isinstance(node, list):
            return [expand(item) for item in node]
        if isinstance(node, dict):
            if node.get("type") in ("record", "enum", "fixed") and "name" in node:
                defined.add(node["name"])
            return {k: expand(v) for k, v in node.items() if not k.startswith("__")}
        return node

    return expand(load_schema(name))


def canonical_form(name: str) -> str:
    """Avro Parsing Canonical Form of schema `name`, with other files' types inlined."""
    return str(to_parsing_canonical_form(expanded_schema(name)))


def fingerprint(name: str) -> bytes:
    """CRC-64-AVRO fingerprint of the schema's canonical form, little-endian (as the
    single-object encoding writes it)."""
    return crc64_avro(canonical_form(name).encode()).to_bytes(8, "little")


class WireFormat(Protocol):
    """How a value is framed on the wire: the bytes that precede the Avro body."""

    def prefix(self, schema_name: str, topic: str) -> bytes: ...


class SingleObjectFormat:
    """Avro single-object encoding: `C3 01` + 8-byte CRC-64-AVRO fingerprint + body."""

    def prefix(self, schema_name: str, topic: str) -> bytes:
        return SINGLE_OBJECT_MAGIC + fingerprint(schema_name)


class Serializer:
    """One call: datum -> Kafka value bytes (prefix + Avro binary body)."""

    def __init__(self, schema_name: str, prefix: bytes) -> None:
        self.schema_name = schema_name
        self.prefix = prefix
        self._schema = load_schema(schema_name)

    def __call__(self, datum: Mapping[str, Any]) -> bytes:
        out = BytesIO()
        out.write(self.prefix)
        fastavro.schemaless_writer(out, self._schema, datum)
        return out.getvalue()

    def decode(self, value: bytes) -> Any:
        """The datum back from bytes this serializer wrote (the prefix must match)."""
        if not value.startswith(self.prefix):
            raise ValueError(f"value does not start with the {self.schema_name} prefix")
        return fastavro.schemaless_reader(
            BytesIO(value[len(self.prefix) :]), self._schema, self._schema
        )
