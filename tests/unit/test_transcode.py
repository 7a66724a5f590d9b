"""The generated proto -> Avro encoders write exactly what fastavro writes for the same data.

The oracle is deliberately plain: `reference_datum` walks the descriptor into the dict an Avro
user would write by hand, and `fastavro.schemaless_writer` encodes it. Random messages of
every record type (every field, extreme integers, unicode, unset and empty submessages,
enum numbers the schema does not know) must give identical bytes, and decode back to the
same values.
"""

from __future__ import annotations

import io
import math
from typing import Any

import fastavro
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.serde.avro import load_schema
from bridge.serde.avro_binary import int_map_bytes, long_bytes, string_bytes, uvarint
from bridge.serde.transcode import SchemaMismatch, compile_encoder
from polymarket.v1 import dropcopy_pb2, orders_pb2, refdata_pb2, trading_pb2

PROPERTY = settings(
    derandomize=True,
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# (wrapper schema, payload field, message class)
RECORD_TYPES: list[tuple[str, str, Any]] = [
    ("polymarket.v1.dropcopy.ExecutionRecord", "execution", trading_pb2.Execution),
    ("polymarket.v1.dropcopy.TradeCaptureRecord", "trade", orders_pb2.Trade),
    ("polymarket.v1.dropcopy.InstrumentStateRecord", "instrument", refdata_pb2.Instrument),
    ("polymarket.v1.dropcopy.PositionChangeRecord", "position_change", dropcopy_pb2.PositionChange),
]

INT64 = st.integers(-(2**63), 2**63 - 1)
INT32 = st.integers(-(2**31), 2**31 - 1)
TIMESTAMP_SECONDS = st.integers(-62_135_596_800, 253_402_300_799)
"""Years 1-9999: what a record may carry (beyond it the mapper makes a dead letter)."""


def _is_map(field: FieldDescriptor) -> bool:
    mt = field.message_type
    return mt is not None and bool(mt.GetOptions().map_entry)


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    t = field.type
    if t == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), INT32)  # INT32 mostly hits unknown numbers
    return {
        FieldDescriptor.TYPE_INT64: INT64,
        FieldDescriptor.TYPE_INT32: INT32,
        FieldDescriptor.TYPE_BOOL: st.booleans(),
        FieldDescriptor.TYPE_STRING: st.text(max_size=12),
        FieldDescriptor.TYPE_BYTES: st.binary(max_size=12),
        FieldDescriptor.TYPE_DOUBLE: st.floats(),
    }[t]


def messages(desc: Descriptor) -> st.SearchStrategy[Any]:
    """Random, fully general messages of type `desc` (any field may be set or not)."""
    cls = message_factory.GetMessageClass(desc)
    if desc.full_name == "google.protobuf.Timestamp":
        return st.builds(cls, seconds=TIMESTAMP_SECONDS, nanos=st.integers(0, 999_999_999))
    parts: dict[str, st.SearchStrategy[Any]] = {}
    for f in desc.fields:
        if _is_map(f):
            entry = f.message_type
            parts[f.name] = st.dictionaries(
                _scalar(entry.fields_by_name["key"]),
                _scalar(entry.fields_by_name["value"]),
                max_size=3,
            )
        elif f.type == FieldDescriptor.TYPE_MESSAGE:
            sub = messages(f.message_type)
            parts[f.name] = st.lists(sub, max_size=2) if f.is_repeated else st.none() | sub
        else:
            sub = _scalar(f)
            parts[f.name] = st.lists(sub, max_size=3) if f.is_repeated else sub

    def build(values: dict[str, Any]) -> Any:
        m = cls()
        for f in desc.fields:
            v = values[f.name]
            if _is_map(f):
                getattr(m, f.name).update(v)
            elif f.is_repeated and f.type == FieldDescriptor.TYPE_MESSAGE:
                for item in v:
                    getattr(m, f.name).add().CopyFrom(item)
            elif f.is_repeated:
                getattr(m, f.name).extend(v)
            elif f.type == FieldDescriptor.TYPE_MESSAGE:
                if v is not None:
                    getattr(m, f.name).CopyFrom(v)  # an all-default v still sets presence
            else:
                setattr(m, f.name, v)
        return m

    return st.fixed_dictionaries(parts).map(build)


def reference_datum(m: Any, path: str, unrecognized: dict[str, int]) -> dict[str, Any]:
    """The Avro datum of message `m`, built field by field, the obvious way."""
    out: dict[str, Any] = {}
    for f in m.DESCRIPTOR.fields:
        p = f"{path}.{f.name}"
        v = getattr(m, f.name)
        if _is_map(f):
            vf = f.message_type.fields_by_name["value"]
            if f.message_type.fields_by_name["key"].type == FieldDescriptor.TYPE_STRING:
                out[f.name] = {
                    k: _ref_value(vf, v[k], f"{p}[{k}]", unrecognized) for k in sorted(v)
                }
            else:
                out[f.name] = [{"key": k, "value": v[k]} for k in sorted(v)]
        elif f.is_repeated:
            out[f.name] = [_ref_value(f, x, f"{p}[{i}]", unrecognized) for i, x in enumerate(v)]
        elif f.type == FieldDescriptor.TYPE_MESSAGE and not m.HasField(f.name):
            out[f.name] = None
        else:
            out[f.name] = _ref_value(f, v, p, unrecognized)
    return out


def _ref_value(f: FieldDescriptor, v: Any, path: str, unrecognized: dict[str, int]) -> Any:
    if f.type == FieldDescriptor.TYPE_MESSAGE:
        if f.message_type.full_name == "google.protobuf.Timestamp":
            return v.seconds * 1_000_000 + v.nanos // 1000
        return reference_datum(v, path, unrecognized)
    if f.type == FieldDescriptor.TYPE_ENUM:
        known = f.enum_type.values_by_number.get(v)
        if known is None:
            unrecognized[path] = v
            return "UNRECOGNIZED"
        return known.name
    return v


def expanded(schema: Any, named: dict[str, Any], seen: set[str] | None = None) -> Any:
    """`schema` with every named reference inlined once and logical types dropped.

    Standalone (no named types needed to parse it) and decoding timestamps as plain longs,
    so values far outside datetime's range compare as integers.
    """
    seen = set() if seen is None else seen
    if isinstance(schema, str):
        if schema in named and schema not in seen:
            return expanded(named[schema], named, seen)
        return schema
    if isinstance(schema, list):
        return [expanded(s, named, seen) for s in schema]
    out = {k: v for k, v in schema.items() if not k.startswith("__") and k != "logicalType"}
    if out["type"] in ("record", "enum", "fixed"):
        seen.add(out["name"])
    if out["type"] == "record":
        out["fields"] = [{**f, "type": expanded(f["type"], named, seen)} for f in out["fields"]]
    elif out["type"] == "array":
        out["items"] = expanded(out["items"], named, seen)
    elif out["type"] == "map":
        out["values"] = expanded(out["values"], named, seen)
    return out


def nan_safe(value: Any) -> Any:
    """NaN != NaN: replace it by a marker so decoded values compare."""
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, dict):
        return {k: nan_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [nan_safe(v) for v in value]
    return value


class Payload:
    """The generated encoder, fastavro writer and plain reader of one payload type."""

    def __init__(self, wrapper: str, field: str, cls: Any) -> None:
        schema = load_schema(wrapper)
        self.named = schema["__named_schemas"]
        self.type_name = schema["fields"][4]["type"]
        self.field = field
        self.encoder = compile_encoder(cls.DESCRIPTOR, self.type_name, self.named, field)
        self.writer = fastavro.parse_schema(
            self.named[self.type_name], named_schemas=dict(self.named)
        )
        self.reader = fastavro.parse_schema(expanded(self.type_name, self.named))

    def fastavro_bytes(self, datum: Any) -> bytes:
        out = io.BytesIO()
        fastavro.schemaless_writer(out, self.writer, datum)
        return out.getvalue()

    def decode(self, body: bytes) -> Any:
        return fastavro.schemaless_reader(io.BytesIO(body), self.reader, self.reader)


PAYLOADS = {field: Payload(wrapper, field, cls) for wrapper, field, cls in RECORD_TYPES}


def _check(payload: Payload, m: Any) -> None:
    body, unrecognized = payload.encoder.encode(m)
    expected_unrecognized: dict[str, int] = {}
    datum = reference_datum(m, payload.field, expected_unrecognized)
    assert body == payload.fastavro_bytes(datum)
    assert unrecognized == expected_unrecognized
    assert nan_safe(payload.decode(body)) == nan_safe(datum)


@PROPERTY
@given(messages(trading_pb2.Execution.DESCRIPTOR))
def test_execution_bytes_equal_fastavro(m: Any) -> None:
    _check(PAYLOADS["execution"], m)


@PROPERTY
@given(messages(orders_pb2.Trade.DESCRIPTOR))
def test_trade_bytes_equal_fastavro(m: Any) -> None:
    _check(PAYLOADS["trade"], m)


@PROPERTY
@given(messages(refdata_pb2.Instrument.DESCRIPTOR))
def test_instrument_bytes_equal_fastavro(m: Any) -> None:
    _check(PAYLOADS["instrument"], m)


@PROPERTY
@given(messages(dropcopy_pb2.PositionChange.DESCRIPTOR))
def test_position_change_bytes_equal_fastavro(m: Any) -> None:
    _check(PAYLOADS["position_change"], m)


def test_unknown_enum_numbers_become_unrecognized_with_their_path() -> None:
    i = refdata_pb2.Instrument(symbol="s", state=99)
    i.trading_schedule.add(state=1)
    i.trading_schedule.add(state=-5)
    _, unrecognized = PAYLOADS["instrument"].encoder.encode(i)
    assert unrecognized == {"instrument.state": 99, "instrument.trading_schedule[1].state": -5}
    t = orders_pb2.Trade(id="t")
    t.passive.order.side = 7
    _, unrecognized = PAYLOADS["trade"].encoder.encode(t)
    assert unrecognized == {"trade.passive.order.side": 7}


def test_timestamp_nanos_are_truncated_to_micros() -> None:
    c = dropcopy_pb2.PositionChange()
    c.change_time.seconds, c.change_time.nanos = 1, 999_999_999
    decoded = PAYLOADS["position_change"].decode(PAYLOADS["position_change"].encoder.encode(c)[0])
    assert decoded["change_time"] == 1_999_999


def test_timestamp_beyond_a_long_raises() -> None:
    c = dropcopy_pb2.PositionChange()
    c.change_time.seconds = 2**62
    with pytest.raises(OverflowError):
        PAYLOADS["position_change"].encoder.encode(c)


def test_int64_map_is_written_sorted_by_key() -> None:
    e = trading_pb2.Execution(id="x")
    for k in (5, -3, 2**62, 0):
        e.order.price_to_quantity_filled[k] = k + 1
    decoded = PAYLOADS["execution"].decode(PAYLOADS["execution"].encoder.encode(e)[0])
    assert [p["key"] for p in decoded["order"]["price_to_quantity_filled"]] == [-3, 0, 5, 2**62]


@pytest.mark.parametrize(
    "z", [0, 1, 127, 128, 16383, 16384, 2**28 - 1, 2**28, 2**42, 2**56, 2**64 - 1]
)
def test_uvarint_matches_the_shift_loop(z: int) -> None:
    expected = bytearray()
    rest = z
    while rest > 0x7F:
        expected.append((rest & 0x7F) | 0x80)
        rest >>= 7
    expected.append(rest)
    assert uvarint(z) == bytes(expected)


def test_primitive_helpers_match_fastavro() -> None:
    def fa(schema: Any, datum: Any) -> bytes:
        out = io.BytesIO()
        fastavro.schemaless_writer(out, fastavro.parse_schema(schema), datum)
        return out.getvalue()

    for v in (0, -1, 1, -(2**63), 2**63 - 1, 1_767_000_000_123_456):
        assert long_bytes(v) == fa("long", v)
    assert string_bytes("héllo €") == fa("string", "héllo €")
    assert int_map_bytes({"b": 2, "a": -1}) == fa(
        {"type": "map", "values": "int"}, {"a": -1, "b": 2}
    )
    assert int_map_bytes({}) == b"\x00"
    with pytest.raises(OverflowError):
        long_bytes(2**63)


def test_compiling_against_an_incompatible_schema_fails() -> None:
    named = PAYLOADS["execution"].named
    bad = {
        "type": "record",
        "name": "BadDate",
        "fields": [{"name": "year", "type": "string"}],
    }
    with pytest.raises(SchemaMismatch):
        compile_encoder(
            trading_pb2.Execution.DESCRIPTOR.fields_by_name["transact_trade_date"].message_type,
            bad,
            named,
            "d",
        )
    missing = {"type": "record", "name": "Extra", "fields": [{"name": "nope", "type": "int"}]}
    with pytest.raises(SchemaMismatch):
        compile_encoder(trading_pb2.Execution.DESCRIPTOR, missing, named, "e")


def test_timestamp_outside_years_1_to_9999_is_refused() -> None:
    """Avro could hold it, but readers cannot represent it: refused (a dead letter)."""
    from bridge.serde.transcode import TS_MAX_US, TS_MIN_US

    for seconds in (TS_MIN_US // 1_000_000 - 1, TS_MAX_US // 1_000_000 + 1):
        c = dropcopy_pb2.PositionChange()
        c.change_time.seconds = seconds
        with pytest.raises(OverflowError, match="years 1-9999"):
            PAYLOADS["position_change"].encoder.encode(c)
