"""PredexonMapper: every channel and event type maps losslessly; bad frames dead-letter."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import pytest

from bridge.mapping.predexon import PredexonMapper
from bridge.serde.avro import Serializer, SingleObjectFormat, load_schema, schema_text
from bridge.serde.exact_json import RawNumber, dumps, loads
from bridge.sim.predexon.events import EventFactory
from bridge.streams.channels import CHANNELS

RECEIVED = 1_700_000_000_123_456


def mapper_for(channel: str) -> PredexonMapper:
    spec = CHANNELS[channel]
    prefix = SingleObjectFormat().prefix(spec.schema, spec.topic)
    return PredexonMapper(channel, f"s-{channel}", spec.topic, prefix, '{"x":["*"]}')


def events_by_type(seed: int = 7) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Frames (JSON text as the simulator sends) for every event type of every channel."""
    factory = EventFactory(seed)
    out: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    for channel in CHANNELS:
        for i in range(200):
            for _, data in factory.make(channel, 1_700_000_000 + i):
                out[channel].append((data["event_type"], data))
    token = factory.universe.markets[0].tokens[0][0]
    out["orderbook"].append(("book_snapshot", factory.book_snapshot(token, 1_700_000_000.5)))
    out["orderbook"].append(("snapshots_done", {"event_type": "snapshots_done", "count": 2}))
    out["orderbook"].append(("resync", {"event_type": "resync", "timestamp": 1_700_000_000_500}))
    return out


def expected(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "decimal":
        return value.text if isinstance(value, RawNumber) else str(value)
    if kind == "json":
        return dumps(value)
    if kind in ("tokens", "levels"):
        names = ("token_id", "label", "won") if kind == "tokens" else ("price", "size")
        return [{**{n: item.get(n) for n in names}, "extra": None} for item in value]
    return value


@pytest.mark.parametrize("channel", list(CHANNELS))
def test_every_event_type_maps_losslessly(channel: str) -> None:
    mapper = mapper_for(channel)
    serializer = Serializer(CHANNELS[channel].schema, mapper.serializer.prefix)
    seen: set[str] = set()
    for event_type, data in events_by_type()[channel]:
        frame = dumps({"type": "event", "subscription_id": "sub_1", "data": data}, sort_keys=False)
        records, dead = mapper.map_frame(frame, RECEIVED)
        assert dead == [] and len(records) == 1
        record = records[0]
        decoded = serializer.decode(record.value)
        sent = loads(frame)["data"]  # what a reader of the JSON sees, numbers as exact text
        for name, kind in CHANNELS[channel].fields:
            assert decoded[name] == expected(kind, sent.get(name)), (event_type, name)
        assert decoded["extra"] is None
        assert decoded["event_type"] == event_type
        assert decoded["subscription_id"] == "sub_1"
        assert decoded["receive_time"] == datetime.fromtimestamp(RECEIVED / 1e6, UTC)
        assert decoded["stream_id"] == f"s-{channel}"
        assert record.event_id == decoded["event_id"]
        # Seconds, and milliseconds on the orderbook: told apart by magnitude.
        ts = sent.get("timestamp")
        unit = 1_000 if channel == "orderbook" else 1_000_000
        assert record.event_time_us == (None if ts is None else ts * unit)
        assert decoded["timestamp"] == ts  # kept as sent
        key_field = next((f for f in CHANNELS[channel].key_fields if sent.get(f)), None)
        if key_field is not None:
            assert record.key == sent[key_field].encode()
        seen.add(event_type)
    assert seen == set(CHANNELS[channel].event_types)


def test_decimal_text_is_kept_exactly_never_through_float() -> None:
    mapper = mapper_for("crypto")
    text = (
        '{"event_type":"price_feed","feed":"BTC/USD","price":97000.100000000000000001,'
        '"bid":1E-7,"ask":0.30,"observed_at":1,"timestamp":2}'
    )
    (record,), _ = mapper.map_frame(text, RECEIVED)
    decoded = mapper.serializer.decode(record.value)
    assert (decoded["price"], decoded["bid"], decoded["ask"]) == (
        "97000.100000000000000001",
        "1E-7",
        "0.30",
    )
    assert record.key == b"BTC/USD"


def test_unknown_fields_are_kept_in_extra() -> None:
    mapper = mapper_for("collateral")
    data = {
        "event_type": "polyusd_wrapped",
        "user": "0xa",
        "tx_hash": "0x1",
        "log_index": "0x2",
        "timestamp": 5,
        "new_field": {"n": 1.10},
    }
    (record,), _ = mapper.map_frame(json.dumps(data).replace("1.1", "1.10"), RECEIVED)
    assert mapper.serializer.decode(record.value)["extra"] == '{"new_field":{"n":1.10}}'
    assert mapper.unknown_field_records == 1


def test_records_with_unknown_keys_are_counted_at_the_top_and_in_tokens() -> None:
    """polybridge_unknown_fields_total: a record counts once if it or any of its tokens
    keeps keys in an `extra`; known-only and dead-lettered events do not count."""
    factory = EventFactory(5)
    events = [data for _ in range(40) for _, data in factory.make("lifecycle", 1_700_000_000)]
    with_tokens = next(e for e in events if e.get("tokens"))
    mapper = mapper_for("lifecycle")
    mapper.map_frame(dumps(with_tokens), RECEIVED)
    assert mapper.unknown_field_records == 0
    nested = {**with_tokens, "tokens": [{**with_tokens["tokens"][0], "icon": "i.png"}]}
    (record,), _ = mapper.map_frame(dumps(nested), RECEIVED)
    assert mapper.serializer.decode(record.value)["tokens"][0]["extra"] == '{"icon":"i.png"}'
    assert mapper.unknown_field_records == 1
    mapper.map_frame(dumps({**nested, "venue_sequence": 3}), RECEIVED)
    assert mapper.unknown_field_records == 2  # top level and token: one record, one count
    records, dead = mapper.map_frame(dumps({**nested, "timestamp": "soon"}), RECEIVED)
    assert not records and len(dead) == 1
    assert mapper.unknown_field_records == 2


def test_event_ids_follow_natural_identity() -> None:
    m = mapper_for("orders")
    base = {
        "event_type": "order_filled",
        "tx_hash": "0xt",
        "order_hash": "0xo",
        "role": "maker",
        "condition_id": "0xc",
        "timestamp": 1,
    }
    pending = m.map_event(base | {"status": "pending", "log_index": None}, RECEIVED, None)
    confirmed = m.map_event(base | {"status": "confirmed", "log_index": "0x21e"}, RECEIVED, None)
    taker = m.map_event(
        base | {"status": "confirmed", "log_index": "0x21f", "role": "taker"}, RECEIVED, None
    )
    refund = m.map_event(
        {"event_type": "fee_refund", "tx_hash": "0xt", "order_hash": "0xo", "token_id": "9"},
        RECEIVED,
        None,
    )
    assert pending.event_id == "order_filled:pending:0xt:0xo:maker"
    assert confirmed.event_id == "order_filled:confirmed:0xt:0x21e:maker"
    assert taker.event_id != confirmed.event_id
    assert refund.event_id == "fee_refund:0xt:0xo" and refund.event_time_us is None
    assert refund.key == b"9"  # no condition_id: token_id
    a = mapper_for("activity").map_event(
        {"event_type": "split", "tx_hash": "0xt", "log_index": "0x1", "condition_id": "0xc"},
        RECEIVED,
        None,
    )
    assert a.event_id == "split:0xt:0x1" and a.key == b"0xc"


def test_orderbook_ids_are_content_derived_and_markers_are_keyed_by_stream() -> None:
    m = mapper_for("orderbook")
    change = {
        "event_type": "price_change",
        "token_id": "7",
        "timestamp": 1_700_000_000_001,
        "side": "BUY",
        "price": "0.5",
        "size": "10",
    }
    one = m.map_event(change, RECEIVED, "sub_a")
    again = m.map_event(dict(change), RECEIVED + 5, "sub_b")
    other = m.map_event(change | {"size": "11"}, RECEIVED, "sub_a")
    assert one.event_id == again.event_id != other.event_id
    assert one.key == b"7" and one.event_time_us == 1_700_000_000_001_000
    done_a = m.map_event({"event_type": "snapshots_done", "count": 2}, RECEIVED, "sub_a")
    done_b = m.map_event({"event_type": "snapshots_done", "count": 2}, RECEIVED, "sub_b")
    assert done_a.event_id != done_b.event_id
    assert done_a.key == b"s-orderbook"


def test_event_batch_maps_each_event_and_dead_letters_bad_ones() -> None:
    m = mapper_for("orderbook")
    good = {
        "event_type": "last_trade",
        "token_id": "1",
        "timestamp": 5,
        "price": "0.5",
        "size": "1",
    }
    frame = dumps(
        {
            "type": "event_batch",
            "subscription_id": "sub_w",
            "count": 3,
            "events": [good, {"event_type": "nope"}, good | {"token_id": "2"}],
            "gap": False,
        }
    )
    records, dead = m.map_frame(frame, RECEIVED)
    assert [r.key for r in records] == [b"1", b"2"]
    assert len(dead) == 1 and b"nope" in dead[0].raw


def test_bare_events_and_control_frames() -> None:
    m = mapper_for("crypto")
    bare = '{"event_type":"price_feed","feed":"ETH/USD","price":1.5,"timestamp":3}'
    (record,), dead = m.map_frame(bare, RECEIVED)
    assert not dead and m.serializer.decode(record.value)["subscription_id"] is None
    for control in ('{"type":"connected","message":"hi"}', '{"type":"ack","subscription_id":"s"}'):
        assert m.map_frame(control, RECEIVED) == ([], [])


BAD_FRAMES = [
    b'{"type": "event", "subscription_id": "sub_1", data: ]',
    b'{"type":"event","subscription_id":"sub_1","data":{"event_type":"price_feed","feed":"BTC',
    b"\xff\xfe not utf-8",
    b"[1, 2, 3]",
    b'"just a string"',
    b'{"type":"event","data":{"event_type":"price_feed","feed":7}}',
    b'{"type":"event","data":{"event_type":"price_feed","feed":"X","price":"abc"}}',
    b'{"type":"event","data":{"event_type":"price_feed","feed":"X","timestamp":1.5}}',
    b'{"type":"event","data":{"event_type":"price_feed","feed":"X","price":NaN}}',
    b'{"type":"event","data":{"event_type":"surprise"}}',
    b'{"type":"event","data":[]}',
    b'{"type":"mystery"}',
    b'{"type":"event_batch","events":7}',
    b'{"type":"event","data":{"event_type":"price_feed","feed":"X","timestamp":99999999999999999999}}',
]


def test_ten_thousand_bad_frames_each_dead_letter_and_valid_ones_are_unaffected() -> None:
    rng = random.Random(1)
    m = mapper_for("crypto")
    m.max_frame_bytes = 64 * 1024  # keep the oversized frames small enough to be quick
    factory = EventFactory(3)
    valid_frames: list[str] = []
    sent_valid = 0
    bad = 0
    records_out = []
    dead_out = []
    for i in range(20_000):
        if i % 2:
            kind = rng.randrange(len(BAD_FRAMES) + 1)
            frame = (
                b'{"pad":"' + b"x" * 70_000 + b'"}' if kind == len(BAD_FRAMES) else BAD_FRAMES[kind]
            )
            bad += 1
        else:
            ((_, data),) = factory.make("crypto", 1_700_000_000 + i)
            frame = dumps({"type": "event", "subscription_id": "s", "data": data}).encode()
            valid_frames.append(frame.decode())
            sent_valid += 1
        records, dead = m.map_frame(frame, RECEIVED + i)
        if i % 2:
            assert records == [] and len(dead) == 1 and dead[0].raw == frame
        else:
            assert dead == [] and len(records) == 1
        records_out += records
        dead_out += dead
    assert bad == 10_000 and len(dead_out) == 10_000 and len(records_out) == sent_valid
    for record, frame in zip(records_out, valid_frames, strict=True):
        decoded = m.serializer.decode(record.value)
        assert decoded["price"] == loads(frame)["data"]["price"].text


def test_schemas_on_disk_match_the_mapper_fields() -> None:
    from bridge.mapping.predexon_schema import avro_schema

    for channel in CHANNELS.values():
        on_disk = json.loads(schema_text(channel.schema))
        assert on_disk == avro_schema(channel), channel.schema
        load_schema(channel.schema)
