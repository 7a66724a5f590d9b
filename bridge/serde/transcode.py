"""Protobuf message -> Avro binary, directly, by code generated per message type.

A generic path (walk the descriptor into a dict, then `fastavro.schemaless_writer`) costs two
full traversals and a dict per nested message: about 8k executions/s per core when first
measured (`bench.mapping_throughput` compares both paths). Here, at startup, the proto
descriptor and the Avro schema of a message type are walked once together and turned into
the Python source of one straight-line function that reads each field by attribute and
appends its Avro encoding to a `bytearray`. Nested messages are inlined (these schemas have
no recursion), so encoding one Execution with its Order is one function call. The source is
compiled with `compile()` and cached per (type, schema, path).

The Avro schema drives the field order (the Avro binary encoding is the schema's field order);
every Avro field must name a proto field of a compatible type, or compilation fails, so a
mismatch between `.proto` and `.avsc` is found at startup, not in production bytes. The
single-value encodings the generated code inlines (varint tables) are in `avro_binary`.

Mapping rules (the schemas in `avro/polymarket.v1.*.avsc` follow them):

- int64/int32 -> long/int (zig-zag varint), bool -> boolean, double -> double (little-endian),
  string -> string (UTF-8), bytes -> bytes.
- enum -> Avro enum whose symbols are the proto symbols in number order plus `UNRECOGNIZED`;
  a number the schema does not know is written as `UNRECOGNIZED` and recorded in the caller's
  `unrecognized` dict as `{field path: number}` so the wrapper record can keep it.
- message -> `["null", record]` (proto3 message presence, `HasField`); repeated -> array.
- `google.protobuf.Timestamp` -> `["null", timestamp-micros]`: `seconds * 10**6 + nanos // 1000`
  (sub-microsecond nanos are truncated; a value outside a signed 64-bit long raises).
- `map<string, string>` -> Avro map, entries sorted by key so equal messages give equal bytes.
- `map<int64, int64>` -> array of `{key, value}` records sorted by key.

Unknown fields (fields the exchange added after the compiled `.proto`, seen by protobuf as
unknown field numbers) are never dropped: for every message the encoder visits, at any depth,
it asks protobuf whether the message holds unknown fields (`UnknownFieldSet`: one C call of
about the cost of a `HasField`, which finds none in the common case) and, only when it does,
records their wire bytes in the caller's `unknown` dict as `{message path: bytes}`, e.g.
`execution`, `execution.order`, `trade.aggressor`, `instrument.trading_schedule[1]`
(the bytes of `proto_unknown.unknown_field_bytes`: the message's own unknown fields, not its
children's, as they were on the wire). Not looked at: protobuf's well-known types (Timestamp,
Duration: frozen by protobuf, no exchange can add fields to them) and map entries (not
messages in Python's protobuf API).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.unknown_fields import UnknownFieldSet

from bridge.serde.avro_binary import VARINT, VARINT_TABLE_SIZE, long_bytes, uvarint
from bridge.serde.proto_unknown import unknown_set_bytes

EncodeFn = Callable[[Any, bytearray, dict[str, int], dict[str, bytes]], None]
"""`fn(message, out, unrecognized, unknown)`: append the Avro encoding of `message` to `out`;
unrecognized enum numbers go to `unrecognized`, unknown fields' bytes to `unknown` (by path)."""


# Timestamps a record may carry: years 1 to 9999. Avro's timestamp-micros long holds more,
# but readers (Python datetime, java.time with most libraries) cannot represent it, so a
# record beyond this range would poison consumers: it becomes a dead letter instead.
TS_MIN_US = -62_135_596_800_000_000  # 0001-01-01T00:00:00Z
TS_MAX_US = 253_402_300_799_999_999  # 9999-12-31T23:59:59.999999Z


def timestamp_micros(ts: Any) -> int:
    """Microseconds since the epoch of a `google.protobuf.Timestamp` (nanos truncated)."""
    return int(ts.seconds) * 1_000_000 + int(ts.nanos) // 1000


_PACK_DOUBLE = struct.Struct("<d").pack

_SCALARS: dict[int, str] = {
    FieldDescriptor.TYPE_INT64: "long",
    FieldDescriptor.TYPE_SINT64: "long",
    FieldDescriptor.TYPE_SFIXED64: "long",
    FieldDescriptor.TYPE_INT32: "int",
    FieldDescriptor.TYPE_SINT32: "int",
    FieldDescriptor.TYPE_SFIXED32: "int",
    FieldDescriptor.TYPE_UINT32: "long",
    FieldDescriptor.TYPE_FIXED32: "long",
    FieldDescriptor.TYPE_BOOL: "boolean",
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_DOUBLE: "double",
    FieldDescriptor.TYPE_FLOAT: "double",
}
"""Proto scalar type -> the Avro type that holds every value losslessly.

uint64/fixed64 are absent on purpose: values >= 2**63 fit no Avro long.
"""

TIMESTAMP = "google.protobuf.Timestamp"
WELL_KNOWN = "google.protobuf."
"""Protobuf's well-known types (Timestamp, Duration): frozen by protobuf itself, so they cannot
carry fields an exchange added; the encoder does not look for unknown fields in them."""


class SchemaMismatch(TypeError):
    """The Avro schema cannot hold the proto field it names (found when compiling)."""


@dataclass(frozen=True)
class CompiledEncoder:
    """A generated encoder and the source it was compiled from (for debugging)."""

    fn: EncodeFn
    source: str

    def __call__(
        self,
        message: Any,
        out: bytearray,
        unrecognized: dict[str, int],
        unknown: dict[str, bytes],
    ) -> None:
        self.fn(message, out, unrecognized, unknown)

    def encode(self, message: Any) -> tuple[bytes, dict[str, int]]:
        """The Avro body of `message` alone, and the unrecognized enum numbers it held."""
        body, unrecognized, _ = self.encode_all(message)
        return body, unrecognized

    def encode_all(self, message: Any) -> tuple[bytes, dict[str, int], dict[str, bytes]]:
        """The Avro body, the unrecognized enum numbers and the unknown fields' bytes."""
        out = bytearray()
        unrecognized: dict[str, int] = {}
        unknown: dict[str, bytes] = {}
        self.fn(message, out, unrecognized, unknown)
        return bytes(out), unrecognized, unknown


def avro_type_name(avro: Any) -> str:
    """The type tag of an Avro schema node (`"record"`, `"long"`, a named type's full name...)."""
    if isinstance(avro, str):
        return avro
    if isinstance(avro, list):
        return "union"
    return str(avro["type"])


def is_map_field(field: FieldDescriptor) -> bool:
    mt = field.message_type
    return mt is not None and bool(mt.GetOptions().map_entry)


def message_type(field: FieldDescriptor) -> Descriptor:
    """The message type of a message-typed field."""
    if field.message_type is None:
        raise SchemaMismatch(f"{field.full_name} is not a message field")
    return field.message_type


def enum_type(field: FieldDescriptor) -> EnumDescriptor:
    """The enum type of an enum-typed field."""
    if field.enum_type is None:
        raise SchemaMismatch(f"{field.full_name} is not an enum field")
    return field.enum_type


class _Generator:
    """Emits the body of one encoder function; every helper appends source lines."""

    def __init__(self, named: Mapping[str, Any]) -> None:
        self.named = named
        self.lines: list[str] = []
        self.consts: dict[str, Any] = {
            "V": VARINT,
            "uvarint": uvarint,
            "pack_double": _PACK_DOUBLE,
            "SchemaOverflow": OverflowError,
            "TS_MIN_US": TS_MIN_US,
            "TS_MAX_US": TS_MAX_US,
            "UFS": UnknownFieldSet,
            "unknown_set_bytes": unknown_set_bytes,
        }
        self._n = 0

    # -- plumbing ------------------------------------------------------------------------
    def var(self, stem: str) -> str:
        self._n += 1
        return f"{stem}{self._n}"

    def const(self, stem: str, value: Any) -> str:
        name = self.var(stem.upper())
        self.consts[name] = value
        return name

    def emit(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)

    def resolve(self, avro: Any) -> Any:
        """Follow a named-type reference to its definition."""
        if isinstance(avro, str) and avro in self.named:
            return self.named[avro]
        return avro

    # -- primitives: each appends the encoding of expression `x` --------------------------
    def uvarint(self, ind: int, z: str) -> None:
        self.emit(ind, f"buf += V[{z}] if {z} < {VARINT_TABLE_SIZE} else uvarint({z})")

    def long(self, ind: int, x: str) -> None:
        z = self.var("z")
        self.emit(ind, f"{z} = {x}")
        self.emit(ind, f"{z} = ({z} << 1) ^ ({z} >> 63)")
        self.uvarint(ind, z)

    def field_long(self, ind: int, x: str) -> None:
        """A long read from a proto field: zero (proto3's default, most fields of most
        messages) costs one test and one append."""
        z = self.var("z")
        self.emit(ind, f"{z} = {x}")
        self.emit(ind, f"if {z}:")
        self.emit(ind + 1, f"{z} = ({z} << 1) ^ ({z} >> 63)")
        self.uvarint(ind + 1, z)
        self.emit(ind, "else:")
        self.emit(ind + 1, "buf += b'\\x00'")

    def string(self, ind: int, x: str, *, encode: bool = True) -> None:
        """A string or bytes value; the empty one (proto3's default) is one append."""
        s, b = self.var("s"), self.var("b")
        self.emit(ind, f"{s} = {x}")
        self.emit(ind, f"if {s}:")
        self.emit(ind + 1, f"{b} = {s}.encode()" if encode else f"{b} = {s}")
        n = self.var("n")
        self.emit(ind + 1, f"{n} = len({b}) << 1")  # a length is an Avro long: zig-zag
        self.uvarint(ind + 1, n)
        self.emit(ind + 1, f"buf += {b}")
        self.emit(ind, "else:")
        self.emit(ind + 1, "buf += b'\\x00'")

    def scalar(self, ind: int, field: FieldDescriptor, avro: Any, x: str, path: str) -> None:
        avro = self.resolve(avro)
        if field.type == FieldDescriptor.TYPE_ENUM:
            self.enum(ind, field, avro, x, path)
            return
        want = _SCALARS.get(field.type)
        got = avro_type_name(avro)
        if want is None or got != want:
            raise SchemaMismatch(f"{path}: proto type {field.type} needs Avro {want}, got {got}")
        if want in ("long", "int"):
            self.field_long(ind, x)
        elif want == "boolean":
            self.emit(ind, f"buf += b'\\x01' if {x} else b'\\x00'")
        elif want == "string":
            self.string(ind, x)
        elif want == "bytes":
            self.string(ind, x, encode=False)
        else:
            self.emit(ind, f"buf += pack_double({x})")

    def enum(self, ind: int, field: FieldDescriptor, avro: Any, x: str, path: str) -> None:
        if avro_type_name(avro) != "enum":
            raise SchemaMismatch(f"{path}: proto enum needs an Avro enum, got {avro!r}")
        symbols: list[str] = list(avro["symbols"])
        if "UNRECOGNIZED" not in symbols:
            raise SchemaMismatch(f"{path}: Avro enum {avro['name']} lacks UNRECOGNIZED")
        table: dict[int, bytes] = {}
        for value in enum_type(field).values:
            if value.name not in symbols:
                raise SchemaMismatch(f"{path}: Avro enum lacks proto symbol {value.name}")
            table[value.number] = long_bytes(symbols.index(value.name))
        tname = self.const("enum", table)
        unknown = self.const("unrecognized", long_bytes(symbols.index("UNRECOGNIZED")))
        # try/except is free in CPython 3.11+ when nothing is raised: cheaper than dict.get.
        v = self.var("v")
        self.emit(ind, f"{v} = {x}")
        self.emit(ind, "try:")
        self.emit(ind + 1, f"buf += {tname}[{v}]")
        self.emit(ind, "except KeyError:")
        self.emit(ind + 1, f"buf += {unknown}")
        self.emit(ind + 1, f"unk[{path}] = {v}")

    # -- structure -----------------------------------------------------------------------
    def message(self, ind: int, desc: Descriptor, avro: Any, m: str, path: str) -> None:
        """Encode message variable `m` as Avro record `avro`. `path` is a str expression."""
        avro = self.resolve(avro)
        if avro_type_name(avro) != "record":
            raise SchemaMismatch(f"{desc.full_name}: needs an Avro record, got {avro!r}")
        for af in avro["fields"]:
            name = af["name"]
            field = desc.fields_by_name.get(name)
            if field is None:
                raise SchemaMismatch(f"{desc.full_name} has no field {name} (Avro {avro['name']})")
            self.field(ind, field, af["type"], m, _join(path, name))
        if not desc.full_name.startswith(WELL_KNOWN):
            self.unknown(ind, m, path)

    def unknown(self, ind: int, m: str, path: str) -> None:
        """Keep the unknown fields of message variable `m`: one C call when it has none."""
        u = self.var("u")
        self.emit(ind, f"{u} = UFS({m})")
        self.emit(ind, f"if {u}:")
        self.emit(ind + 1, f"ukf[{path}] = unknown_set_bytes({u})")

    def field(self, ind: int, field: FieldDescriptor, avro: Any, m: str, path: str) -> None:
        x = f"{m}.{field.name}"
        avro = self.resolve(avro)
        if is_map_field(field):
            self.map(ind, field, avro, x, path)
        elif field.is_repeated:
            if avro_type_name(avro) != "array":
                raise SchemaMismatch(f"{path}: repeated field needs an Avro array, got {avro!r}")
            seq = self.var("seq")
            self.emit(ind, f"{seq} = {x}")
            self.emit(ind, f"if {seq}:")
            self.long(ind + 1, f"len({seq})")
            item, i = self.var("item"), self.var("i")
            self.emit(ind + 1, f"for {i}, {item} in enumerate({seq}):")
            item_path = f"{path} + '[' + str({i}) + ']'"
            self.value(ind + 2, field, avro["items"], item, item_path)
            self.emit(ind, "buf += b'\\x00'")
        else:
            self.value(ind, field, avro, x, path, has=f"{m}.HasField({field.name!r})")

    def value(
        self, ind: int, field: FieldDescriptor, avro: Any, x: str, path: str, has: str = ""
    ) -> None:
        """One value of `field` (a singular field, or one element of a repeated one)."""
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            self.scalar(ind, field, avro, x, path)
            return
        avro = self.resolve(avro)
        if has:  # singular message field: ["null", T], present iff HasField
            if not (isinstance(avro, list) and len(avro) == 2 and avro[0] == "null"):
                raise SchemaMismatch(f"{path}: message field needs ['null', T], got {avro!r}")
            self.emit(ind, f"if {has}:")
            self.emit(ind + 1, "buf += b'\\x02'")  # union branch 1, zig-zagged
            self.present(ind + 1, field, avro[1], x, path)
            self.emit(ind, "else:")
            self.emit(ind + 1, "buf += b'\\x00'")  # union branch 0: null
        else:
            self.present(ind, field, avro, x, path)

    def present(self, ind: int, field: FieldDescriptor, avro: Any, x: str, path: str) -> None:
        desc = message_type(field)
        avro = self.resolve(avro)
        if desc.full_name == TIMESTAMP:
            if not (isinstance(avro, dict) and avro.get("logicalType") == "timestamp-micros"):
                raise SchemaMismatch(f"{path}: Timestamp needs timestamp-micros, got {avro!r}")
            t, us = self.var("t"), self.var("us")
            self.emit(ind, f"{t} = {x}")
            self.emit(ind, f"{us} = {t}.seconds * 1000000 + {t}.nanos // 1000")
            self.emit(ind, f"if not TS_MIN_US <= {us} <= TS_MAX_US:")
            self.emit(
                ind + 1,
                f"raise SchemaOverflow({path} + ': timestamp outside years 1-9999')",
            )
            self.long(ind, us)
            return
        m = self.var("m")
        self.emit(ind, f"{m} = {x}")
        self.message(ind, desc, avro, m, path)

    def map(self, ind: int, field: FieldDescriptor, avro: Any, x: str, path: str) -> None:
        entry = message_type(field)
        kf, vf = entry.fields_by_name["key"], entry.fields_by_name["value"]
        d, k = self.var("d"), self.var("k")
        if kf.type == FieldDescriptor.TYPE_STRING:
            if avro_type_name(avro) != "map":
                raise SchemaMismatch(f"{path}: map<string, _> needs an Avro map, got {avro!r}")
            self.emit(ind, f"{d} = {x}")
            self.emit(ind, f"if {d}:")
            self.long(ind + 1, f"len({d})")
            self.emit(ind + 1, f"for {k} in sorted({d}):")
            self.string(ind + 2, k)
            self.value(ind + 2, vf, avro["values"], f"{d}[{k}]", f"{path} + '[' + {k} + ']'")
            self.emit(ind, "buf += b'\\x00'")
            return
        # Non-string keys: an array of {key, value} records, sorted by key.
        if avro_type_name(avro) != "array":
            raise SchemaMismatch(f"{path}: map with non-string keys needs an array, got {avro!r}")
        rec = self.resolve(avro["items"])
        if [f["name"] for f in rec["fields"]] != ["key", "value"]:
            raise SchemaMismatch(f"{path}: map entries need a {{key, value}} record")
        self.emit(ind, f"{d} = {x}")
        self.emit(ind, f"if {d}:")
        self.long(ind + 1, f"len({d})")
        self.emit(ind + 1, f"for {k} in sorted({d}):")
        self.value(ind + 2, kf, rec["fields"][0]["type"], k, f"{path} + '.key'")
        self.value(ind + 2, vf, rec["fields"][1]["type"], f"{d}[{k}]", f"{path} + '.value'")
        self.emit(ind, "buf += b'\\x00'")


def _join(path: str, name: str) -> str:
    """Path expression of child `name`: constant-folded when `path` is a plain literal."""
    if path.startswith("'") and path.endswith("'") and "+" not in path:
        return repr(path[1:-1] + "." + name)
    return f"{path} + {'.' + name!r}"


def compile_encoder(
    descriptor: Descriptor, avro: Any, named: Mapping[str, Any], path: str
) -> CompiledEncoder:
    """Generate and compile the encoder of `descriptor` messages as Avro type `avro`.

    `named` resolves named-type references (fastavro's `__named_schemas` of a parsed schema);
    `path` prefixes the field paths recorded for unrecognized enum numbers and unknown fields
    (e.g. "execution").
    """
    gen = _Generator(named)
    gen.message(1, descriptor, avro, "m0", repr(path))
    body = "\n".join(gen.lines)
    source = f"def encode(m0, buf, unk, ukf):\n{body}\n"
    namespace: dict[str, Any] = dict(gen.consts)
    exec(compile(source, f"<avro encoder {descriptor.full_name} as {path}>", "exec"), namespace)
    return CompiledEncoder(namespace["encode"], source)
