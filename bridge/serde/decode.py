"""Decoding any polybridge value, in either wire format, without knowing its schema first.

- Avro single-object (`C3 01` + 8-byte CRC-64-AVRO fingerprint, little-endian): the writer
  schema is found by fingerprint among the schemas polybridge knows: every `.avsc` in
  `avro/` (self-contained, other files' types inlined) and every released version
  kept in `avro/history`, so records written by an older release still decode.
- Confluent (`00` + 4-byte big-endian schema id): the writer schema is fetched from the
  Schema Registry by id, once per id.

Values decode with their writer schema (what was written, field for field). `to_json`
turns a decoded datum into JSON-ready values for `polybridge tail`.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from io import BytesIO
from typing import Any

import fastavro
from fastavro.schema import to_parsing_canonical_form

from bridge.errors import KafkaError
from bridge.serde import compat
from bridge.serde.avro import CONFLUENT_MAGIC, SINGLE_OBJECT_MAGIC, crc64_avro, expanded_schema


@dataclass(frozen=True, slots=True)
class Decoded:
    """One decoded value: the writer schema's name and the datum."""

    schema: str
    """Full name of the writer schema (`name@vN` for an older released version)."""
    datum: Any
    framing: str
    """`single-object` or `confluent:<schema id>`."""


def _fp(schema: Any) -> bytes:
    canonical = to_parsing_canonical_form(schema)
    return crc64_avro(str(canonical).encode()).to_bytes(8, "little")


@cache
def known_fingerprints() -> dict[bytes, tuple[str, Any]]:
    """Fingerprint -> (schema label, parsed schema) for every schema polybridge knows.

    Current schemas win over an identical released version (same fingerprint)."""
    found: dict[bytes, tuple[str, Any]] = {}
    for name in compat.history_names():
        for version, schema in compat.released_versions(name):
            found[_fp(schema)] = (f"{name}@v{version}", fastavro.parse_schema(schema))
    folder = resources.files("bridge") / "avro"
    for item in folder.iterdir():
        if item.name.endswith(".avsc"):
            name = item.name.removesuffix(".avsc")
            schema = expanded_schema(name)
            found[_fp(schema)] = (name, fastavro.parse_schema(schema))
    return found


class Decoder:
    """Decodes values of either wire format; `registry` is a SchemaRegistryClient or None."""

    def __init__(self, registry: Any | None = None) -> None:
        self.registry = registry
        self._by_id: dict[int, tuple[str, Any]] = {}

    def decode(self, value: bytes) -> Decoded:
        """The writer schema's name and the datum; `KafkaError` when it cannot be read."""
        if value.startswith(SINGLE_OBJECT_MAGIC) and len(value) >= 10:
            fp = value[2:10]
            known = known_fingerprints().get(fp)
            if known is None:
                raise KafkaError(
                    f"single-object value with unknown schema fingerprint {fp.hex()}: written "
                    "by a newer polybridge? decode it with that release's .avsc files"
                )
            name, schema = known
            return Decoded(name, _read(value[10:], schema, name), "single-object")
        if value.startswith(CONFLUENT_MAGIC) and len(value) >= 5:
            schema_id = int.from_bytes(value[1:5], "big")
            name, schema = self._registry_schema(schema_id)
            return Decoded(name, _read(value[5:], schema, name), f"confluent:{schema_id}")
        raise KafkaError(
            f"value has unknown framing (first bytes {value[:4].hex()}); expected Avro "
            "single-object (c301...) or Confluent (00...) framing"
        )

    def _registry_schema(self, schema_id: int) -> tuple[str, Any]:
        found = self._by_id.get(schema_id)
        if found is not None:
            return found
        if self.registry is None:
            raise KafkaError(
                f"value is Confluent-framed (schema id {schema_id}) but no schema registry is "
                "configured: set schema_registry.url in the --config file"
            )
        try:
            text = self.registry.get_schema(schema_id).schema_str
        except Exception as exc:
            raise KafkaError(
                f"schema id {schema_id}: cannot fetch it from the schema registry: {exc}"
            ) from exc
        parsed = fastavro.parse_schema(json.loads(text))
        name = parsed.get("name", "?") if isinstance(parsed, dict) else "?"
        self._by_id[schema_id] = (str(name), parsed)
        return self._by_id[schema_id]


def _read(body: bytes, schema: Any, name: str) -> Any:
    try:
        return fastavro.schemaless_reader(BytesIO(body), schema, schema)
    except Exception as exc:
        raise KafkaError(f"value does not decode as {name}: {exc}") from exc


def _iso(moment: dt.datetime | dt.date | dt.time) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def to_json(datum: Any, bytes_format: str = "base64") -> Any:
    """A decoded datum as JSON-ready values: timestamps and dates as ISO-8601 strings (UTC,
    `Z`), bytes as base64 (or hex), decimals and UUIDs as strings."""
    encode_bytes: Callable[[bytes], str] = (
        (lambda b: b.hex()) if bytes_format == "hex" else (lambda b: base64.b64encode(b).decode())
    )

    def convert(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {str(k): convert(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [convert(v) for v in value]
        if isinstance(value, bytes | bytearray):
            return encode_bytes(bytes(value))
        if isinstance(value, dt.datetime | dt.date | dt.time):
            return _iso(value)
        if isinstance(value, decimal.Decimal | uuid.UUID):
            return str(value)
        return value

    return convert(datum)
