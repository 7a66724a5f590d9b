"""DropCopyMapper: keys, event ids, event times, wrapper values and dead letters per stream."""

from __future__ import annotations

import hashlib
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from bridge.mapping.dropcopy import DropCopyMapper
from bridge.serde.avro import Serializer, SingleObjectFormat
from bridge.streams.kinds import KINDS, StreamKind
from polymarket.v1 import dropcopy_pb2, orders_pb2, refdata_pb2, trading_pb2
from tests.unit.test_transcode import PROPERTY, messages, reference_datum

RECEIVED = 1_767_000_000_123_456
T1 = (1_767_000_000, 123_456_789)  # (seconds, nanos)
T1_US = 1_767_000_000_123_456


def mapper(kind: StreamKind) -> tuple[DropCopyMapper, Serializer]:
    prefix = SingleObjectFormat().prefix(kind.schema, kind.topic)
    return DropCopyMapper(kind, "conn-a.executions", kind.topic, prefix), Serializer(
        kind.schema, prefix
    )


def response(kind: StreamKind, *items: Any) -> Any:
    r = kind.response_type(resume_token=b"tok")
    getattr(r, kind.list_field).extend(items)
    return r


def stamp(ts: Any, when: tuple[int, int] = T1) -> None:
    ts.seconds, ts.nanos = when


def test_execution_is_keyed_by_order_id_and_identified_by_its_id() -> None:
    kind = KINDS["executions"]
    m, ser = mapper(kind)
    e = trading_pb2.Execution(id="EX1", last_px=525, last_shares=100, type=2)
    e.order.id, e.order.state = "OR1", 42
    stamp(e.transact_time)
    (rec,), dead = m.map_response(response(kind, e), RECEIVED)
    assert dead == []
    assert (rec.topic, rec.key, rec.event_id, rec.event_time_us) == (
        kind.topic,
        b"OR1",
        "EX1",
        T1_US,
    )
    value = ser.decode(rec.value)
    assert value["event_id"] == "EX1"
    assert value["stream_id"] == "conn-a.executions"
    assert value["execution"]["last_px"] == 525
    assert value["execution"]["order"]["state"] == "UNRECOGNIZED"
    assert value["unrecognized_enums"] == {"execution.order.state": 42}
    assert int(value["receive_time"].timestamp() * 1_000_000) == RECEIVED


def test_trade_event_id_carries_its_state_and_time_is_the_later_execution() -> None:
    kind = KINDS["trade_captures"]
    m, ser = mapper(kind)
    t = orders_pb2.Trade(id="TR1", state=2)
    stamp(t.aggressor.transact_time, (T1[0], 0))
    stamp(t.passive.transact_time, (T1[0] + 1, 0))
    unknown = orders_pb2.Trade(id="TR2", state=77)
    (a, b), dead = m.map_response(response(kind, t, unknown), RECEIVED)
    assert dead == []
    assert (a.key, a.event_id, a.event_time_us) == (
        b"TR1",
        "TR1|TRADE_STATE_CLEARED",
        (T1[0] + 1) * 10**6,
    )
    assert (b.event_id, b.event_time_us) == ("TR2|77", None)
    assert ser.decode(b.value)["unrecognized_enums"] == {"trade.state": 77}


def test_instrument_event_id_is_symbol_and_content_hash_with_no_event_time() -> None:
    kind = KINDS["instrument_states"]
    m, ser = mapper(kind)
    i = refdata_pb2.Instrument(symbol="tec-nfl-sbw", state=1, price_scale=1000)
    i.metadata["b"], i.metadata["a"] = "2", "1"
    digest = hashlib.sha256(i.SerializeToString(deterministic=True)).hexdigest()[:16]
    (rec,), _ = m.map_response(response(kind, i), RECEIVED)
    assert (rec.key, rec.event_id, rec.event_time_us) == (
        b"tec-nfl-sbw",
        f"tec-nfl-sbw|{digest}",
        None,
    )
    assert ser.decode(rec.value)["event_time"] is None
    changed = refdata_pb2.Instrument(symbol="tec-nfl-sbw", state=6, price_scale=1000)
    (again,), _ = m.map_response(response(kind, i), RECEIVED + 1)
    (other,), _ = m.map_response(response(kind, changed), RECEIVED)
    assert again.event_id == rec.event_id
    assert other.event_id != rec.event_id


def test_position_change_is_keyed_by_account_and_symbol() -> None:
    kind = KINDS["position_changes"]
    m, ser = mapper(kind)
    c = dropcopy_pb2.PositionChange()
    c.position.account, c.position.symbol, c.position.net_position = "firms/f/accounts/a", "sym", -5
    stamp(c.change_time)
    no_time = dropcopy_pb2.PositionChange()
    no_time.position.CopyFrom(c.position)
    (rec, untimed), dead = m.map_response(response(kind, c, no_time), RECEIVED)
    assert dead == []
    assert rec.key == b"firms/f/accounts/a|sym"
    assert (rec.event_id, rec.event_time_us) == (f"firms/f/accounts/a|sym|{T1_US}", T1_US)
    assert untimed.event_time_us is None
    assert (
        untimed.event_id.startswith("firms/f/accounts/a|sym|") and untimed.event_id != rec.event_id
    )
    assert ser.decode(rec.value)["position_change"]["position"]["net_position"] == -5


def test_bad_messages_become_dead_letters_and_the_rest_still_map() -> None:
    kind = KINDS["executions"]
    m, _ = mapper(kind)
    good = trading_pb2.Execution(id="EX1")
    no_id = trading_pb2.Execution(text="who am I")
    overflow = trading_pb2.Execution(id="EX2")
    overflow.transact_time.seconds = 2**62
    records, dead = m.map_response(response(kind, no_id, good, overflow), RECEIVED)
    assert [r.event_id for r in records] == ["EX1"]
    assert [d.error_type for d in dead] == ["MappingError", "OverflowError"]
    assert dead[0].raw == no_id.SerializeToString()
    assert dead[0].received_at_us == RECEIVED
    assert dead[0].target_topic == kind.topic


def test_empty_response_maps_to_nothing() -> None:
    kind = KINDS["position_changes"]
    assert mapper(kind)[0].map_response(response(kind), RECEIVED) == ([], [])


MAPPERS = {name: mapper(kind) for name, kind in KINDS.items()}
PAYLOAD = {
    "executions": "execution",
    "trade_captures": "trade",
    "instrument_states": "instrument",
    "position_changes": "position_change",
}


def _record_type(kind: StreamKind) -> Any:
    return kind.response_type.DESCRIPTOR.fields_by_name[kind.list_field].message_type


@PROPERTY
@given(st.data())
def test_values_equal_fastavro_on_the_reference_record(data: st.DataObject) -> None:
    """Whole wrapper values, every stream: identical to fastavro writing the reference datum."""
    name = data.draw(st.sampled_from(sorted(KINDS)))
    kind = KINDS[name]
    m, ser = MAPPERS[name]
    msg = data.draw(messages(_record_type(kind)))
    identity = msg.position if name == "position_changes" else msg
    field = "symbol" if name in ("instrument_states", "position_changes") else "id"
    setattr(identity, field, getattr(identity, field) or "x")  # empty ones are dead letters
    records, dead = m.map_response(response(kind, msg), RECEIVED)
    assert dead == []
    (rec,) = records
    unrecognized: dict[str, int] = {}
    payload = reference_datum(msg, PAYLOAD[name], unrecognized)
    datum = {
        "event_id": rec.event_id,
        "stream_id": "conn-a.executions",
        "event_time": rec.event_time_us,
        "receive_time": RECEIVED,
        PAYLOAD[name]: payload,
        "unrecognized_enums": dict(sorted(unrecognized.items())),
        "unknown_fields": None,
    }
    assert rec.value == ser(datum)
