"""Every proto field, at any depth, has a field of a compatible type in its topic's schema.

Walks the proto descriptors from each stream's record type and the Avro schema side by side,
independently of the transcoder, so a field added to the `.proto` files but not to the
`.avsc` files (or typed differently) fails here with its path.
"""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from bridge.serde.avro import load_schema
from bridge.streams.kinds import KINDS, StreamKind

SCALARS = {
    FieldDescriptor.TYPE_INT64: "long",
    FieldDescriptor.TYPE_INT32: "int",
    FieldDescriptor.TYPE_BOOL: "boolean",
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_DOUBLE: "double",
}
PAYLOAD = {
    "executions": "execution",
    "trade_captures": "trade",
    "instrument_states": "instrument",
    "position_changes": "position_change",
}


def resolve(avro: Any, named: dict[str, Any]) -> Any:
    return named.get(avro, avro) if isinstance(avro, str) else avro


def problems_of_message(desc: Descriptor, avro: Any, named: dict[str, Any], path: str) -> list[str]:
    avro = resolve(avro, named)
    if not isinstance(avro, dict) or avro.get("type") != "record":
        return [f"{path}: {desc.full_name} needs an Avro record, got {avro!r}"]
    fields = {f["name"]: f["type"] for f in avro["fields"]}
    found: list[str] = []
    for f in desc.fields:
        if f.name not in fields:
            found.append(f"{path}.{f.name}: missing from Avro {avro['name']}")
        else:
            found += problems_of_field(f, fields[f.name], named, f"{path}.{f.name}")
    return found


def problems_of_field(f: FieldDescriptor, avro: Any, named: dict[str, Any], path: str) -> list[str]:
    avro = resolve(avro, named)
    mt = f.message_type
    if mt is not None and mt.GetOptions().map_entry:
        key, value = mt.fields_by_name["key"], mt.fields_by_name["value"]
        if key.type == FieldDescriptor.TYPE_STRING:
            if not (isinstance(avro, dict) and avro["type"] == "map"):
                return [f"{path}: map<string, _> needs an Avro map"]
            return problems_of_value(value, avro["values"], named, f"{path}[]")
        if not (isinstance(avro, dict) and avro["type"] == "array"):
            return [f"{path}: map with non-string keys needs an array of entries"]
        return problems_of_message(mt, avro["items"], named, f"{path}[]")
    if f.is_repeated:
        if not (isinstance(avro, dict) and avro["type"] == "array"):
            return [f"{path}: repeated needs an Avro array"]
        return problems_of_value(f, avro["items"], named, f"{path}[]")
    if f.type == FieldDescriptor.TYPE_MESSAGE:
        if not (isinstance(avro, list) and avro[0] == "null" and len(avro) == 2):
            return [f"{path}: message field needs ['null', T] (proto3 presence)"]
        return problems_of_value(f, avro[1], named, path)
    return problems_of_value(f, avro, named, path)


def problems_of_value(f: FieldDescriptor, avro: Any, named: dict[str, Any], path: str) -> list[str]:
    avro = resolve(avro, named)
    if f.type == FieldDescriptor.TYPE_MESSAGE:
        assert f.message_type is not None
        if f.message_type.full_name == "google.protobuf.Timestamp":
            ok = isinstance(avro, dict) and avro.get("logicalType") == "timestamp-micros"
            return [] if ok else [f"{path}: Timestamp needs timestamp-micros"]
        return problems_of_message(f.message_type, avro, named, path)
    if f.type == FieldDescriptor.TYPE_ENUM:
        assert f.enum_type is not None
        if not (isinstance(avro, dict) and avro["type"] == "enum"):
            return [f"{path}: enum needs an Avro enum"]
        symbols = avro["symbols"]
        wanted = [v.name for v in f.enum_type.values] + ["UNRECOGNIZED"]
        missing = [s for s in wanted if s not in symbols]
        bad_default = avro.get("default") != "UNRECOGNIZED"
        return [f"{path}: enum lacks {missing}"] * bool(missing) + [
            f"{path}: enum default must be UNRECOGNIZED"
        ] * bad_default
    want = SCALARS[f.type]
    got = avro if isinstance(avro, str) else avro.get("type")
    return [] if got == want else [f"{path}: {want} expected, Avro has {got}"]


def _record_type(kind: StreamKind) -> Descriptor:
    desc: Descriptor = kind.response_type.DESCRIPTOR.fields_by_name[kind.list_field].message_type
    return desc


@pytest.mark.parametrize("name", sorted(KINDS))
def test_every_proto_field_is_in_the_topic_schema(name: str) -> None:
    kind = KINDS[name]
    schema = load_schema(kind.schema)
    named = schema["__named_schemas"]
    payload = {f["name"]: f["type"] for f in schema["fields"]}[PAYLOAD[name]]
    assert problems_of_message(_record_type(kind), payload, named, PAYLOAD[name]) == []


@pytest.mark.parametrize("name", sorted(KINDS))
def test_wrapper_has_identity_times_unrecognized_enums_and_unknown_fields(name: str) -> None:
    schema = load_schema(KINDS[name].schema)
    fields = {f["name"]: f for f in schema["fields"]}
    assert fields["event_id"]["type"] == "string"
    assert fields["event_time"]["type"][0] == "null"
    assert fields["unrecognized_enums"]["default"] == {}
    assert fields["unknown_fields"]["type"] == ["null", {"type": "map", "values": "bytes"}]
    assert fields["unknown_fields"]["default"] is None
    assert all(f.get("doc") for f in schema["fields"])


def test_the_walk_finds_a_missing_field() -> None:
    kind = KINDS["executions"]
    named = dict(load_schema(kind.schema)["__named_schemas"])
    order = dict(named["polymarket.v1.Order"])
    order["fields"] = [f for f in order["fields"] if f["name"] != "manual_order_indicator"]
    named["polymarket.v1.Order"] = order
    found = problems_of_message(_record_type(kind), "polymarket.v1.Execution", named, "execution")
    assert found == [
        "execution.order.manual_order_indicator: missing from Avro polymarket.v1.Order"
    ]
