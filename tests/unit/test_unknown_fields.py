"""Unknown protobuf fields (added by the exchange after the compiled contract) are never lost:
kept byte-exact per message path in `unknown_fields`, counted, and part of an instrument
state's identity. Also the contract drift comparison (`bridge.drift`)."""

from __future__ import annotations

import asyncio
import copy
import struct
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.message_factory import GetMessageClass
from hypothesis import given
from hypothesis import strategies as st

from bridge.drift import compare, compiled_files, served_files
from bridge.eos.repeats import LatestPerKey
from bridge.mapping.dropcopy import DropCopyMapper
from bridge.serde.avro import Serializer, SingleObjectFormat
from bridge.serde.proto_unknown import unknown_field_bytes
from bridge.sim.contract import Contract, block_trade, newer_files
from bridge.streams.kinds import KINDS
from polymarket.v1 import orders_pb2, refdata_pb2, trading_pb2, types_pb2
from tests.unit.test_transcode import PROPERTY

RECEIVED = 1_767_000_000_123_456


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def tag(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


# One field of every wire type, with numbers no compiled message uses.
EVERY_WIRE_TYPE = (
    tag(1000, 0)
    + varint(2**64 - 1)  # int64 -1: ten bytes
    + tag(1001, 1)
    + struct.pack("<d", 0.25)
    + tag(1002, 2)
    + varint(3)
    + b"abc"
    + tag(1003, 3)  # a group holding a varint and a nested group
    + tag(1, 0)
    + varint(5)
    + tag(2, 3)
    + tag(1, 5)
    + struct.pack("<I", 7)
    + tag(2, 4)
    + tag(1003, 4)
    + tag(1004, 5)
    + struct.pack("<f", 1.5)
)


def with_unknown(message: Any, extra: bytes) -> Any:
    """`message` as a client parses it when the exchange appended `extra` to it."""
    return type(message).FromString(message.SerializeToString() + extra)


def mapper(name: str) -> tuple[DropCopyMapper, Serializer]:
    kind = KINDS[name]
    prefix = SingleObjectFormat().prefix(kind.schema, kind.topic)
    return DropCopyMapper(kind, f"dropcopy.{name}", kind.topic, prefix), Serializer(
        kind.schema, prefix
    )


def response(name: str, *items: Any) -> Any:
    kind = KINDS[name]
    r = kind.response_type(resume_token=b"tok")
    getattr(r, kind.list_field).extend(items)
    return r


def test_unknown_field_bytes_are_the_received_bytes_for_every_wire_type() -> None:
    known = trading_pb2.Execution(id="EX1", last_px=5)
    assert unknown_field_bytes(known) == b""
    assert unknown_field_bytes(with_unknown(known, EVERY_WIRE_TYPE)) == EVERY_WIRE_TYPE


@PROPERTY
@given(
    st.lists(
        st.tuples(
            st.integers(17, 2**29 - 1),
            st.one_of(
                st.tuples(st.just(0), st.integers(0, 2**64 - 1).map(varint)),
                st.tuples(st.just(1), st.binary(min_size=8, max_size=8)),
                st.tuples(st.just(2), st.binary(max_size=40).map(lambda b: varint(len(b)) + b)),
                st.tuples(st.just(5), st.binary(min_size=4, max_size=4)),
            ),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_unknown_field_bytes_round_trip_any_fields(fields: list[tuple[int, Any]]) -> None:
    extra = b"".join(tag(number, wire) + body for number, (wire, body) in fields)
    message = with_unknown(trading_pb2.Execution(id="EX1"), extra)
    assert unknown_field_bytes(message) == extra


def test_unknown_fields_are_kept_per_message_path_and_counted() -> None:
    m, ser = mapper("executions")
    plain = trading_pb2.Execution(id="EX0", last_px=7)
    plain.order.id = "OR0"
    e = trading_pb2.Execution(id="EX1", last_px=7)
    e.order.MergeFromString(trading_pb2.Order(id="OR1").SerializeToString() + b"\xc8\x03\x01")
    e.leg_prices.add(symbol="a")
    e.leg_prices.add().MergeFromString(
        types_pb2.LegPrice(symbol="b").SerializeToString() + EVERY_WIRE_TYPE
    )
    e = with_unknown(e, b"\x88\x01\x01")  # Execution field 17 (bool true)
    (rec_plain, rec), dead = m.map_response(response("executions", plain, e), RECEIVED)
    assert dead == []
    assert ser.decode(rec_plain.value)["unknown_fields"] is None
    value = ser.decode(rec.value)
    assert value["unknown_fields"] == {
        "execution": b"\x88\x01\x01",
        "execution.order": b"\xc8\x03\x01",
        "execution.leg_prices[1]": EVERY_WIRE_TYPE,
    }
    # The known fields are written as if the unknown ones were not there.
    known = copy.deepcopy(e)
    known.DiscardUnknownFields()
    (rec_known,), _ = m.map_response(response("executions", known), RECEIVED)
    assert {**value, "unknown_fields": None} == ser.decode(rec_known.value)
    assert m.unknown_field_records == 1


def test_newer_contract_fields_decode_from_the_kept_bytes() -> None:
    contract = Contract("newer")
    block = next(i for i in (f"EX{n}" for n in range(100)) if block_trade(i))
    regular = next(i for i in (f"EX{n}" for n in range(100)) if not block_trade(i))
    trade = orders_pb2.Trade(id="TR1", state=1)
    trade.aggressor.id, trade.passive.id = block, regular
    wire = contract.serialize("trade_captures", trade, RECEIVED)
    m, ser = mapper("trade_captures")
    (rec,), dead = m.map_response(response("trade_captures", orders_pb2.Trade.FromString(wire)), 0)
    assert dead == []
    kept = ser.decode(rec.value)["unknown_fields"]
    assert kept == {"trade.aggressor": b"\x88\x01\x01"}  # field 17, varint 1
    newer_execution: Any = newer_class(contract, "polymarket.v1.Execution")
    assert newer_execution.FromString(kept["trade.aggressor"]).block_trade_indicator is True

    instrument = refdata_pb2.Instrument(symbol="tec-nfl-sbw-2026-02-08-kc", state=1)
    wire = contract.serialize("instrument_states", instrument, RECEIVED)
    m, ser = mapper("instrument_states")
    (rec,), _ = m.map_response(
        response("instrument_states", refdata_pb2.Instrument.FromString(wire)), 0
    )
    kept = ser.decode(rec.value)["unknown_fields"]
    assert set(kept) == {"instrument"}
    parsed: Any = newer_class(contract, "polymarket.v1.Instrument").FromString(kept["instrument"])
    assert parsed.event_attributes.league == "nfl"
    assert parsed.update_time.ToMicroseconds() == RECEIVED
    assert parsed.symbol == ""  # only the unknown fields were kept there


def newer_class(contract: Contract, name: str) -> Any:
    return GetMessageClass(contract.pool.FindMessageTypeByName(name))


def test_instrument_states_differing_only_in_unknown_fields_are_not_repeats() -> None:
    m, ser = mapper("instrument_states")
    base = refdata_pb2.Instrument(symbol="S", state=1, price_scale=1000)
    v1 = with_unknown(base, b"\xc2\x02\x02nf")  # field 40: "nf"
    v2 = with_unknown(base, b"\xc2\x02\x02mb")  # field 40: "mb"
    records, dead = m.map_response(response("instrument_states", base, v1, v1, v2, v2, v1), 0)
    assert dead == []
    ids = [r.event_id for r in records]
    assert len(set(ids)) == 3  # base, v1 and v2 are three states
    latest = LatestPerKey()
    written = [r for r in records if not latest.is_repeat(r)]
    latest.commit()
    assert [r.event_id for r in written] == [ids[0], ids[1], ids[3], ids[5]]
    assert [ser.decode(r.value)["unknown_fields"] for r in written] == [
        None,
        {"instrument": b"\xc2\x02\x02nf"},
        {"instrument": b"\xc2\x02\x02mb"},
        {"instrument": b"\xc2\x02\x02nf"},
    ]
    # The same state again (the snapshot sent on reconnect) is a repeat.
    (again,), _ = m.map_response(response("instrument_states", v1), 0)
    assert latest.is_repeat(again)


# -- contract drift ------------------------------------------------------------------------


def _file(files: list[descriptor_pb2.FileDescriptorProto], name: str) -> Any:
    return next(f for f in files if f.name == name)


def _field(files: list[Any], file: str, message: str, name: str) -> Any:
    (msg,) = [m for m in _file(files, file).message_type if m.name == message]
    return next(f for f in msg.field if f.name == name)


def test_no_drift_against_the_compiled_contract() -> None:
    assert compare(compiled_files()) == []


def test_drift_lists_every_field_the_compiled_contract_lacks() -> None:
    lines = [d.line() for d in compare(newer_files())]
    assert lines == [
        "polymarket.v1.EventAttributes field 1 sport (string): the compiled contract lacks it",
        "polymarket.v1.EventAttributes field 2 league (string): the compiled contract lacks it",
        "polymarket.v1.EventAttributes field 3 event_id (string): the compiled contract lacks it",
        "polymarket.v1.EventAttributes field 4 provider (polymarket.v1.SportsDataProvider): "
        "the compiled contract lacks it",
        "polymarket.v1.Execution field 17 block_trade_indicator (bool): "
        "the compiled contract lacks it",
        "polymarket.v1.Instrument field 40 event_attributes (polymarket.v1.EventAttributes): "
        "the compiled contract lacks it",
        "polymarket.v1.Instrument field 41 create_time (google.protobuf.Timestamp): "
        "the compiled contract lacks it",
        "polymarket.v1.Instrument field 42 update_time (google.protobuf.Timestamp): "
        "the compiled contract lacks it",
    ]
    assert not any(d.conflict for d in compare(newer_files()))


@pytest.mark.parametrize(
    ("change", "expected", "conflict"),
    [
        (
            lambda f: setattr(f, "type", descriptor_pb2.FieldDescriptorProto.TYPE_STRING),
            "polymarket.v1.Order field 14: the exchange has price (string), "
            "the compiled contract price (int64)",
            True,
        ),
        (
            lambda f: setattr(f, "name", "limit_price"),
            "polymarket.v1.Order field 14: the exchange has limit_price (int64), "
            "the compiled contract price (int64)",
            False,
        ),
        (
            lambda f: setattr(f, "number", 52),
            None,
            False,
        ),
    ],
)
def test_drift_reports_disagreements_renames_and_moves(
    change: Any, expected: str | None, conflict: bool
) -> None:
    files = compiled_files()
    change(_field(files, "polymarket/v1/trading.proto", "Order", "price"))
    drifts = compare(files)
    if expected is not None:
        assert [d.line() for d in drifts] == [expected]
        assert [d.conflict for d in drifts] == [conflict]
    else:  # moved: the exchange lacks 14, the compiled contract lacks 52
        assert [d.line() for d in drifts] == [
            "polymarket.v1.Order field 14 price (int64): in the compiled contract, "
            "not on the exchange",
            "polymarket.v1.Order field 52 price (int64): the compiled contract lacks it",
        ]


def test_drift_compares_repeated_and_map_fields_by_their_whole_type() -> None:
    files = compiled_files()
    field = _field(files, "polymarket/v1/refdata.proto", "Instrument", "trading_schedule")
    field.label = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    assert [d.line() for d in compare(files)] == [
        "polymarket.v1.Instrument field 9: the exchange has trading_schedule "
        "(polymarket.v1.TradingHours), the compiled contract trading_schedule "
        "(repeated polymarket.v1.TradingHours)"
    ]
    # A compiled contract without Trade.metadata: the exchange's map field is reported.
    older = compiled_files()
    (trade,) = _file(older, "polymarket/v1/orders.proto").message_type
    kept = [f for f in trade.field if f.name != "metadata"]
    del trade.field[:]
    trade.field.extend(kept)
    assert [d.line() for d in compare(compiled_files(), older)] == [
        "polymarket.v1.Trade field 9 metadata (map<string, string>): the compiled contract lacks it"
    ]


class _Reflection:
    """A fake channel: reflection answered from `files` one file per request (or refused)."""

    def __init__(self, files: list[Any] | None) -> None:
        self.files = {f.name: f for f in files or []}
        self.asked: list[tuple[str, str]] = []

    def unary_unary(self, path: str, **_: Any) -> Any:
        from grpc_reflection.v1alpha import reflection_pb2 as pb

        async def call(request: Any, **__: Any) -> Any:
            what = request.file_containing_symbol or request.file_by_filename
            self.asked.append((path.split("/")[1], what))
            if not self.files:
                raise grpc.aio.AioRpcError(
                    grpc.StatusCode.UNIMPLEMENTED, grpc.aio.Metadata(), grpc.aio.Metadata()
                )
            name = "polymarket/v1/dropcopy.proto" if what == "polymarket.v1.DropCopyAPI" else what
            answer = pb.ServerReflectionResponse()
            answer.file_descriptor_response.file_descriptor_proto.append(
                self.files[name].SerializeToString()
            )
            return answer

        return call


def test_reflection_not_offered_after_trying_v1_and_v1alpha() -> None:
    channel = _Reflection(None)
    assert asyncio.run(served_files(channel, [], 1.0)) is None  # type: ignore[arg-type]
    assert channel.asked == [
        ("grpc.reflection.v1.ServerReflection", "polymarket.v1.DropCopyAPI"),
        ("grpc.reflection.v1alpha.ServerReflection", "polymarket.v1.DropCopyAPI"),
    ]


def test_reflection_asks_for_every_import_the_server_did_not_send() -> None:
    channel = _Reflection(newer_files())
    files = asyncio.run(served_files(channel, [], 1.0))  # type: ignore[arg-type]
    assert files is not None
    assert sorted(f.name for f in files) == sorted(f.name for f in newer_files())
    assert len(channel.asked) == len(newer_files())  # one file per answer
    assert len(compare(files)) == 8
