"""The state record codec: round trips, framing checks, Confluent framing accepted."""

from __future__ import annotations

import pytest

from bridge.errors import KafkaError
from bridge.kafka.state import STATE_SCHEMA, decode_state, encode_state
from bridge.records import Position
from bridge.serde.avro import Serializer, SingleObjectFormat


def _serializer() -> Serializer:
    return Serializer(STATE_SCHEMA, SingleObjectFormat().prefix(STATE_SCHEMA, "polybridge.state"))


def test_round_trips_every_position_field() -> None:
    position = Position(
        resume_token=b"\x00tok\xff",
        event_time_us=1_700_000_000_123_456,
        live_time_us=1_700_000_001_000_001,
        detail={"filters": '{"symbols":["A"]}'},
    )
    value = encode_state(
        "dc.exec", "dropcopy", position, "inst-1", 1_700_000_002_000_000, _serializer()
    )
    entry = decode_state(value)
    assert entry.stream_id == "dc.exec"
    assert entry.upstream == "dropcopy"
    assert entry.owner == "inst-1"
    assert entry.committed_at_us == 1_700_000_002_000_000
    assert entry.position == position


def test_round_trips_an_empty_position() -> None:
    entry = decode_state(encode_state("s", "predexon", Position(), "", 0, _serializer()))
    assert entry.position == Position()
    assert entry.owner == ""


def test_single_object_value_starts_with_magic_and_fingerprint() -> None:
    value = encode_state("s", "dropcopy", Position(), "o", 1, _serializer())
    assert value[:2] == b"\xc3\x01"


def test_accepts_confluent_framing() -> None:
    serializer = Serializer(STATE_SCHEMA, b"\x00\x00\x00\x00\x07")
    value = encode_state("s", "dropcopy", Position(resume_token=b"t"), "o", 5, serializer)
    assert decode_state(value).position.resume_token == b"t"


def test_refuses_unknown_framing_clearly() -> None:
    with pytest.raises(KafkaError, match="unknown framing"):
        decode_state(b"\x7b\x22json\x22")


def test_refuses_unknown_schema_fingerprint() -> None:
    value = bytearray(encode_state("s", "dropcopy", Position(), "o", 1, _serializer()))
    value[2:10] = b"\x01" * 8
    with pytest.raises(KafkaError, match="unknown State schema"):
        decode_state(bytes(value))


def test_refuses_a_truncated_body() -> None:
    value = encode_state("stream", "dropcopy", Position(), "owner", 1, _serializer())
    with pytest.raises(KafkaError, match="does not decode"):
        decode_state(value[:14])
