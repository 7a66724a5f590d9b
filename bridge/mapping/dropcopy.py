"""DropCopy messages -> Kafka records: key, event id, event time and Avro value.

One `DropCopyMapper` per stream turns each gRPC response into records. Values are the
topic's wrapper schema (`polymarket.v1.dropcopy.*Record`): `event_id`, `stream_id`,
`event_time`, `receive_time`, the upstream message with every field,
`unrecognized_enums` (raw numbers of enum values the schema does not know yet, by field
path) and `unknown_fields` (null, or the wire bytes of the protobuf fields the compiled
contract does not know, per message path: see `bridge.serde.transcode`). They are written
by the generated encoders of `bridge.serde.transcode`, straight from the protobuf message,
prefixed by the wire format's prefix.

Keys, event ids and event times per stream (keys are UTF-8):

- executions: key `order.id`; event_id `Execution.id`; event_time `transact_time`.
- trade captures: key trade `id`; event_id `"{id}|{TradeState name}"` (the number when the
  state is unknown); event_time the later of the two executions' `transact_time`.
- instruments: key `symbol`; event_id `"{symbol}|{first 16 hex of sha256 of the
  deterministic serialization}"` (unknown fields included); event_time null.
- positions: key `"{account}|{symbol}"`; event_id `"{account}|{symbol}|{change_time in
  micros}"`; event_time `change_time`.

Why these event ids: the exchange re-sends records (at-least-once) and the pipeline drops an
event id it has written recently. An execution is identified by its id; a trade is re-sent on
every state change, so its state is part of its identity; an instrument change carries no time
or id, so its content is (the pipeline drops an instrument identical to the last one written
for that symbol); a position change is identified by when it changed. A position change
without `change_time` falls back to the content hash in place of the time.

The content hash covers unknown fields too: two instrument states that differ only in a field
the compiled contract does not know are different states, and the second is written (with
its unknown fields), not dropped as a repeat. The price: when the exchange starts sending a
new field, or the bridge is upgraded to a contract that knows it (known fields serialize
before unknown ones), each symbol's next state is written once more.

A missing timestamp gives a null event time, and so does an implausible one (before 2000, or
more than a day past the bridge's clock: `bridge.event_times`), which the payload keeps as
sent; a timestamp no reader can hold as a date (outside years 1-9999) makes the message a
dead letter (`bridge.serde.transcode`). A record whose identity field (execution id,
trade id, instrument symbol, position symbol) is empty cannot be keyed or deduplicated: it
becomes a dead letter rather than a record that every later empty-id record would "repeat".
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from google.protobuf.descriptor import Descriptor

from bridge.errors import MappingError
from bridge.event_times import plausible_or_none
from bridge.records import DeadLetter, Record
from bridge.serde.avro import load_schema
from bridge.serde.avro_binary import bytes_map_bytes, int_map_bytes, long_bytes, string_bytes
from bridge.serde.transcode import SchemaMismatch, compile_encoder, timestamp_micros
from bridge.streams.kinds import StreamKind
from polymarket.v1 import dropcopy_pb2, enums_pb2, orders_pb2, refdata_pb2, trading_pb2

_HASH_HEX = 16
"""Hex digits of sha256 kept in instrument event ids: 64 bits, collisions negligible."""

_WRAPPER_FIELDS = ("event_id", "stream_id", "event_time", "receive_time")
"""The wrapper fields written before the payload; `unrecognized_enums` and `unknown_fields`
follow it."""

# Identity of one upstream message: (key, event_id, event_time_us).
Identity = tuple[bytes, str, int | None]


def _time(message: Any, field: str) -> int | None:
    return timestamp_micros(getattr(message, field)) if message.HasField(field) else None


def _content_hash(message: Any) -> str:
    # Unknown fields included (protobuf serializes them after the known ones): content the
    # compiled contract cannot name is still content, and a state differing only there is new.
    digest = hashlib.sha256(message.SerializeToString(deterministic=True)).hexdigest()
    return digest[:_HASH_HEX]


def _require(value: str, what: str) -> str:
    if not value:
        raise MappingError(f"{what} is empty: the record cannot be keyed or deduplicated")
    return value


def _execution_identity(e: trading_pb2.Execution) -> Identity:
    event_id = _require(e.id, "Execution.id")
    return e.order.id.encode(), event_id, _time(e, "transact_time")


_TRADE_STATES = enums_pb2.TradeState.DESCRIPTOR.values_by_number


def _trade_identity(t: orders_pb2.Trade) -> Identity:
    trade_id = _require(t.id, "Trade.id")
    state = _TRADE_STATES.get(t.state)
    times = [
        timestamp_micros(e.transact_time)
        for e in (t.aggressor, t.passive)
        if e.HasField("transact_time")
    ]
    event_time = max(times) if times else None
    return trade_id.encode(), f"{trade_id}|{state.name if state else t.state}", event_time


def _instrument_identity(i: refdata_pb2.Instrument) -> Identity:
    symbol = _require(i.symbol, "Instrument.symbol")
    return symbol.encode(), f"{symbol}|{_content_hash(i)}", None


def _position_identity(c: dropcopy_pb2.PositionChange) -> Identity:
    p = c.position
    symbol = _require(p.symbol, "Position.symbol")
    key = f"{p.account}|{symbol}"
    change_time = _time(c, "change_time")
    when = str(change_time) if change_time is not None else _content_hash(c)
    return key.encode(), f"{key}|{when}", change_time


# Per record type: (payload field in the wrapper schema, identity function).
_PAYLOADS: dict[str, tuple[str, Callable[[Any], Identity]]] = {
    "polymarket.v1.Execution": ("execution", _execution_identity),
    "polymarket.v1.Trade": ("trade", _trade_identity),
    "polymarket.v1.Instrument": ("instrument", _instrument_identity),
    "polymarket.v1.PositionChange": ("position_change", _position_identity),
}


def _record_descriptor(kind: StreamKind) -> Descriptor:
    """The message type of the response's record list, e.g. Execution for executions."""
    field = kind.response_type.DESCRIPTOR.fields_by_name[kind.list_field]
    desc: Descriptor = field.message_type
    return desc


class DropCopyMapper:
    """Maps the responses of one DropCopy stream to records of one topic.

    `prefix` is the wire format's prefix for the topic's schema (e.g.
    `SingleObjectFormat().prefix(kind.schema, topic)`); every value is prefix + Avro body.
    `unknown_field_records` counts the records mapped that carry unknown fields (the metric
    `polybridge_unknown_fields_total`).
    """

    def __init__(self, kind: StreamKind, stream_id: str, topic: str, prefix: bytes) -> None:
        self.kind = kind
        self.stream_id = stream_id
        self.topic = topic
        self.prefix = prefix
        self.unknown_field_records = 0
        desc = _record_descriptor(kind)
        payload, self._identity = _PAYLOADS[desc.full_name]
        schema = load_schema(kind.schema)
        names = [f["name"] for f in schema["fields"]]
        expected = [*_WRAPPER_FIELDS, payload, "unrecognized_enums", "unknown_fields"]
        if names != expected:
            raise SchemaMismatch(f"{kind.schema}: fields {names}, the mapper writes {expected}")
        self._encode = compile_encoder(
            desc, schema["fields"][4]["type"], schema["__named_schemas"], payload
        )
        self._stream_id = string_bytes(stream_id)

    def map_response(
        self, response: Any, receive_time_us: int
    ) -> tuple[list[Record], list[DeadLetter]]:
        """Records of every message in the response; those that fail become dead letters."""
        records: list[Record] = []
        dead: list[DeadLetter] = []
        # Written once per response: every record of it shares stream id and receive time.
        shared = self._stream_id
        receive = long_bytes(receive_time_us)
        prefix, topic, encode, identity = self.prefix, self.topic, self._encode.fn, self._identity
        for message in getattr(response, self.kind.list_field):
            try:
                key, event_id, event_time = identity(message)
                event_time = plausible_or_none(event_time, receive_time_us)
                out = bytearray(prefix)
                out += string_bytes(event_id)
                out += shared
                if event_time is None:
                    out += b"\x00"
                else:
                    out += b"\x02"  # union branch 1 (the long), zig-zagged
                    out += long_bytes(event_time)
                out += receive
                unrecognized: dict[str, int] = {}
                unknown: dict[str, bytes] = {}
                encode(message, out, unrecognized, unknown)
                out += int_map_bytes(unrecognized) if unrecognized else b"\x00"
                if unknown:  # ["null", map<bytes>]: branch 1, zig-zagged
                    out += b"\x02"
                    out += bytes_map_bytes(unknown)
                    self.unknown_field_records += 1
                else:
                    out += b"\x00"
                records.append(Record(topic, key, bytes(out), event_id, event_time))
            except Exception as exc:  # any failure is this message's, not the stream's
                dead.append(
                    DeadLetter(
                        raw=message.SerializeToString(),
                        error=str(exc),
                        error_type=type(exc).__name__,
                        received_at_us=receive_time_us,
                        target_topic=topic,
                    )
                )
        return records, dead
