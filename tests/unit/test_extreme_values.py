"""Extreme values in every time and number field, on every Predexon channel and DropCopy
stream: whatever arrives, each message becomes a record that strict readers decode (fastavro
with logical types: timestamp-micros as dates) or a dead letter that decodes, and the
stream's state record after it decodes the same way and is usable on the next start.

Values: 0, negatives, the current time in seconds, milliseconds, microseconds and
nanoseconds, the year-58,000 microseconds of milliseconds read as seconds, 2^63-1, -2^63,
beyond 64 bits, and (Predexon, JSON) strings and fractions where numbers are expected.
`tests/integration/test_extreme_values_in_kafka.py` sends such values through the bridge
into Kafka and reads them back with fastavro and the Java reader.
"""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf.descriptor import FieldDescriptor
from hypothesis import given
from hypothesis import strategies as st

from bridge.eos.state_records import StateRecords
from bridge.kafka.state import STATE_SCHEMA, encode_state
from bridge.records import DeadLetter, Position, Record
from bridge.serde.avro import Serializer, SingleObjectFormat
from bridge.serde.exact_json import dumps
from bridge.streams.channels import CHANNELS
from bridge.streams.kinds import KINDS
from bridge.timeutil import now_us
from tests.unit.test_fuzz_mappers import (
    FUZZ,
    dropcopy,
    enum_and_int_paths,
    predexon,
    record_class,
    set_path,
    valid_events,
)
from tests.unit.test_transcode import messages

NOW_US = now_us()
NOW_S = NOW_US // 1_000_000
TIME_VALUES = [
    0,
    -1,
    -NOW_S,
    NOW_S,
    NOW_S * 1_000,
    NOW_S * 1_000_000,
    NOW_S * 1_000_000_000,
    NOW_S * 1_000 * 1_000_000,
    2**63 - 1,
    -(2**63),
]
"""Integers for any time or number field (every one fits an int64)."""
JSON_ONLY = [2**64, str(NOW_S), "abc", 1.5e300, -0.5]
"""What only JSON can carry where a number is expected."""

STATE = Serializer(STATE_SCHEMA, SingleObjectFormat().prefix(STATE_SCHEMA, "polybridge.state"))
DEAD = Serializer(
    "polybridge.DeadLetter", SingleObjectFormat().prefix("polybridge.DeadLetter", "dlq")
)


def assert_the_dead_letters_decode(stream_id: str, dead: list[DeadLetter]) -> None:
    for letter in dead:
        value = DEAD(
            {
                "stream_id": stream_id,
                "upstream": "test",
                "target_topic": letter.target_topic,
                "error_type": letter.error_type,
                "error": letter.error,
                "raw": letter.raw,
                "received_at": letter.received_at_us,
            }
        )
        assert DEAD.decode(value)["raw"] == letter.raw


def assert_the_state_after_it_is_usable(
    stream_id: str, upstream: str, records: list[Record]
) -> None:
    """The position the sources build after `records` (their newest event time), as the
    pipeline writes it: it decodes with dates and the next start may resume from it."""
    times = [r.event_time_us for r in records if r.event_time_us is not None]
    position = Position(event_time_us=max(times, default=None), live_time_us=NOW_US)
    value = encode_state(stream_id, upstream, position, "me", NOW_US, STATE)
    STATE.decode(value)  # timestamp-micros as dates: raises beyond year 9999
    stored = StateRecords("polybridge.state")
    stored.put(stream_id, 0, value)
    assert stored.entry(stream_id, NOW_US) is not None  # no StateRecordError


# -- Predexon ---------------------------------------------------------------------------

NUMBER_KINDS = ("int", "decimal")


def number_fields(channel: str) -> list[str]:
    return [name for name, kind in CHANNELS[channel].fields if kind in NUMBER_KINDS]


@pytest.mark.parametrize("channel", sorted(CHANNELS))
@FUZZ
@given(data=st.data(), seed=st.integers(0, 2**16))
def test_predexon_extreme_times_and_numbers(channel: str, data: st.DataObject, seed: int) -> None:
    mapper = predexon(channel)
    events = valid_events(channel, seed, n=4)
    for event in events:
        names = data.draw(st.lists(st.sampled_from(number_fields(channel)), min_size=1))
        for name in names:
            event[name] = data.draw(st.sampled_from(TIME_VALUES + JSON_ONLY), label=name)
    frame = dumps({"type": "event_batch", "subscription_id": "s1", "events": events})
    records, dead = mapper.map_frame(frame.encode(), NOW_US)
    assert len(records) + len(dead) == len(events)
    for record in records:
        value = mapper.serializer.decode(record.value)  # dates: raises beyond year 9999
        assert value["event_id"] == record.event_id
        if value["event_time"] is not None:
            assert value["event_time"].year >= 2000 and record.event_time_us is not None
            assert record.event_time_us <= NOW_US + 86_400_000_000
    assert_the_dead_letters_decode(mapper.stream_id, dead)
    assert_the_state_after_it_is_usable(mapper.stream_id, "predexon", records)


def test_predexon_milliseconds_keep_their_instant_and_their_raw_value() -> None:
    mapper = predexon("crypto")
    event = {
        "event_type": "price_feed",
        "feed": "BTC/USD",
        "price": 1,
        "observed_at": NOW_S * 1_000 + 7,
        "timestamp": NOW_S * 1_000 + 7,
    }
    (record,), dead = mapper.map_frame(dumps(event).encode(), NOW_US)
    assert dead == [] and record.event_time_us == (NOW_S * 1_000 + 7) * 1_000
    value = mapper.serializer.decode(record.value)
    assert value["timestamp"] == value["observed_at"] == NOW_S * 1_000 + 7


IMPLAUSIBLE = {
    "zero": 0,
    "negative": -5,
    "1970": 5,
    "nanoseconds": NOW_S * 10**9,
    "int64 max": 2**63 - 1,
    "two days ahead": NOW_S + 2 * 86_400,
}


@pytest.mark.parametrize("name", sorted(IMPLAUSIBLE))  # ids stable across test workers
def test_predexon_implausible_times_are_kept_raw_with_a_null_event_time(name: str) -> None:
    raw = IMPLAUSIBLE[name]
    mapper = predexon("orders")
    event = {"event_type": "fee_refund", "tx_hash": "0xt", "order_hash": "0xo", "timestamp": raw}
    (record,), dead = mapper.map_frame(dumps(event).encode(), NOW_US)
    assert dead == [] and record.event_time_us is None
    value = mapper.serializer.decode(record.value)
    assert value["event_time"] is None and value["timestamp"] == raw


# -- DropCopy ---------------------------------------------------------------------------

_INTEGERS = (
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_UINT32,
)


def _fits(field: Any, value: int) -> bool:
    bits = {FieldDescriptor.TYPE_INT32: 32, FieldDescriptor.TYPE_UINT32: 32}.get(field.type, 64)
    if field.type in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_UINT32):
        return 0 <= value < 2**bits
    return -(2 ** (bits - 1)) <= value < 2 ** (bits - 1)


@pytest.mark.parametrize("kind_name", sorted(KINDS))
@FUZZ
@given(data=st.data())
def test_dropcopy_extreme_times_and_numbers(kind_name: str, data: st.DataObject) -> None:
    """Every integer field, the seconds of every Timestamp among them, set to an extreme
    the protobuf field can hold."""
    mapper, serializer = dropcopy(kind_name)
    cls = record_class(KINDS[kind_name])
    paths = [(p, f) for p, f in enum_and_int_paths(cls.DESCRIPTOR) if f.type in _INTEGERS]
    items = []
    for _ in range(3):
        message = data.draw(messages(cls.DESCRIPTOR))
        for path, field in data.draw(st.lists(st.sampled_from(paths), min_size=1, max_size=6)):
            fitting = [v for v in TIME_VALUES if _fits(field, v)]
            set_path(message, path, data.draw(st.sampled_from(fitting), label=path))
        items.append(message)
    response = KINDS[kind_name].response_type(resume_token=b"tok")
    getattr(response, KINDS[kind_name].list_field).extend(items)
    records, dead = mapper.map_response(response, NOW_US)
    assert len(records) + len(dead) == len(items)
    for record in records:
        value = serializer.decode(record.value)  # dates: raises beyond year 9999
        assert value["event_id"] == record.event_id
        if record.event_time_us is not None:
            assert value["event_time"].year >= 2000
            assert record.event_time_us <= NOW_US + 86_400_000_000
    assert_the_dead_letters_decode(mapper.stream_id, dead)
    assert_the_state_after_it_is_usable(mapper.stream_id, "dropcopy", records)
