"""Property-based fuzzing of the two mappers: whatever arrives, they never raise, every
unusable message becomes a dead letter carrying its raw bytes, and every record they do
produce decodes with the topic's schema.

DropCopy: random bytes parsed as each record type (protobuf accepts many), bit-flipped
serializations of valid messages, unknown fields appended (kept raw), random enum numbers,
extreme integers and timestamps. Predexon: random bytes, random JSON, and valid simulator events
with bits flipped, keys dropped, values replaced by random JSON, or frames truncated.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.mapping.dropcopy import DropCopyMapper
from bridge.mapping.predexon import PredexonMapper
from bridge.records import DeadLetter, Record
from bridge.serde.avro import Serializer, SingleObjectFormat
from bridge.serde.avro_binary import bytes_map_bytes, string_bytes
from bridge.serde.exact_json import dumps, loads
from bridge.sim.predexon.events import EventFactory
from bridge.streams.channels import CHANNELS, CONTROL_TYPES
from bridge.streams.kinds import KINDS, StreamKind
from tests.unit.test_transcode import messages

FUZZ = settings(
    max_examples=60,
    deadline=None,  # the first example compiles encoders; wall time is not the property
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,  # repeatable in CI; a found counterexample is printed in full
)
RECEIVED = 1_767_000_000_000_000
KIND_NAMES = sorted(KINDS)


# -- DropCopy ---------------------------------------------------------------------------

_MAPPERS: dict[str, tuple[DropCopyMapper, Serializer]] = {}


def dropcopy(kind_name: str) -> tuple[DropCopyMapper, Serializer]:
    """One mapper and the topic's decoder per kind (compiling an encoder costs ~ms)."""
    if kind_name not in _MAPPERS:
        kind = KINDS[kind_name]
        prefix = SingleObjectFormat().prefix(kind.schema, kind.topic)
        _MAPPERS[kind_name] = (
            DropCopyMapper(kind, f"dropcopy.{kind_name}", kind.topic, prefix),
            Serializer(kind.schema, prefix),
        )
    return _MAPPERS[kind_name]


def record_class(kind: StreamKind) -> Any:
    """The protobuf class of one element of the response's record list."""
    return kind.response_type.DESCRIPTOR.fields_by_name[
        kind.list_field
    ].message_type._concrete_class


def check_dropcopy(kind_name: str, items: list[Any]) -> tuple[list[Record], list[DeadLetter]]:
    """Map `items` as one response; assert the mapper's contract and return its output."""
    kind = KINDS[kind_name]
    mapper, serializer = dropcopy(kind_name)
    response = kind.response_type(resume_token=b"tok")
    getattr(response, kind.list_field).extend(items)
    records, dead = mapper.map_response(response, RECEIVED)  # must never raise
    assert len(records) + len(dead) == len(items), "every message accounted for, once"
    cls = record_class(kind)
    for letter in dead:
        # Compared as messages: map entries serialize in no fixed order.
        assert cls.FromString(letter.raw) in items, "a dead letter keeps the message's bytes"
        assert letter.error_type and letter.target_topic == kind.topic
    for record in records:
        assert record.event_id
        try:
            value = serializer.decode(record.value)  # valid Avro of the topic's schema
        except (OverflowError, ValueError):
            # Finding (reported): a timestamp before year 1 or after 9999 is a valid Avro
            # timestamp-micros long, so the bridge writes it, but fastavro (any Python
            # reader) cannot turn it into a datetime. Only that is tolerated here.
            assert any(beyond_datetime(m) for m in items), "undecodable record"
            continue
        assert value["event_id"] == record.event_id
    return records, dead


DATETIME_SECONDS = (-62_135_596_800, 253_402_300_799)
"""0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z: what Python's datetime can hold."""


def beyond_datetime(message: Any) -> bool:
    """Whether any Timestamp inside `message` lies outside Python's datetime range."""
    if message.DESCRIPTOR.full_name == "google.protobuf.Timestamp":
        return not DATETIME_SECONDS[0] <= message.seconds <= DATETIME_SECONDS[1]
    for field, value in message.ListFields():
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        if field.message_type.GetOptions().map_entry:
            continue
        items = value if field.is_repeated else [value]
        if any(beyond_datetime(v) for v in items):
            return True
    return False


def parse_or_none(cls: Any, data: bytes) -> Any:
    """Protobuf's parse of `data`, or None when it is not a message of that type at all
    (gRPC fails the whole call then; the mapper never sees it)."""
    try:
        return cls.FromString(data)
    except (DecodeError, RuntimeError, ValueError):
        return None


@pytest.mark.parametrize("kind_name", KIND_NAMES)
@FUZZ
@given(blobs=st.lists(st.binary(max_size=300), min_size=1, max_size=5))
def test_dropcopy_random_bytes_never_raise(kind_name: str, blobs: list[bytes]) -> None:
    cls = record_class(KINDS[kind_name])
    items = [m for m in (parse_or_none(cls, b) for b in blobs) if m is not None]
    check_dropcopy(kind_name, items)


def flip(data: bytes, positions: list[int]) -> bytes:
    out = bytearray(data)
    for p in positions:
        if out:
            out[p % len(out)] ^= 1 << (p % 8)
    return bytes(out)


@pytest.mark.parametrize("kind_name", KIND_NAMES)
@FUZZ
@given(data=st.data())
def test_dropcopy_bit_flipped_messages_never_raise(kind_name: str, data: st.DataObject) -> None:
    cls = record_class(KINDS[kind_name])
    valid = data.draw(messages(cls.DESCRIPTOR), label="valid")
    flips = data.draw(st.lists(st.integers(0, 10**6), min_size=1, max_size=8), label="flips")
    mutated = parse_or_none(cls, flip(valid.SerializeToString(), flips))
    items = [valid] + ([mutated] if mutated is not None else [])
    records, dead = check_dropcopy(kind_name, items)
    # The valid message is unaffected by a bad neighbour in the same response.
    alone, alone_dead = check_dropcopy(kind_name, [valid])
    assert [r.value for r in alone] == [r.value for r in records[: len(alone)]]
    assert len(alone_dead) <= len(dead)


def unknown_field(number: int, payload: bytes) -> bytes:
    """A length-delimited field with a number the schema does not know."""

    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            b, n = n & 0x7F, n >> 7
            out.append(b | (0x80 if n else 0))
            if not n:
                return bytes(out)

    return varint(number << 3 | 2) + varint(len(payload)) + payload


PAYLOADS = {
    "executions": "execution",
    "trade_captures": "trade",
    "instrument_states": "instrument",
    "position_changes": "position_change",
}


@pytest.mark.parametrize("kind_name", KIND_NAMES)
@FUZZ
@given(
    data=st.data(),
    number=st.integers(1000, 2**29 - 1),
    payload=st.binary(max_size=40),
)
def test_dropcopy_unknown_fields_are_kept_and_change_nothing_else(
    kind_name: str, data: st.DataObject, number: int, payload: bytes
) -> None:
    """A newer exchange adding a field: the record keeps it raw in `unknown_fields` and is
    otherwise byte-identical to the record of the message without it, but for the event id
    when that is a content hash (instrument states; position changes without a time)."""
    cls = record_class(KINDS[kind_name])
    valid = data.draw(messages(cls.DESCRIPTOR))
    extra = unknown_field(number, payload)
    extended = cls.FromString(valid.SerializeToString() + extra)
    records_new, dead_new = check_dropcopy(kind_name, [extended])
    records_old, dead_old = check_dropcopy(kind_name, [valid])
    assert len(dead_new) == len(dead_old)
    if not records_old:
        return
    (new,), (old,) = records_new, records_old
    hashed = kind_name == "instrument_states" or (
        kind_name == "position_changes" and not valid.HasField("change_time")
    )
    assert (new.event_id != old.event_id) == hashed
    assert (new.key, new.event_time_us) == (old.key, old.event_time_us)
    prefix = dropcopy(kind_name)[0].prefix
    old_rest = old.value[len(prefix) + len(string_bytes(old.event_id)) :]
    assert old_rest.endswith(b"\x00")  # unknown_fields: null
    kept = b"\x02" + bytes_map_bytes({PAYLOADS[kind_name]: extra})
    assert new.value == prefix + string_bytes(new.event_id) + old_rest[:-1] + kept


def enum_and_int_paths(desc: Any, prefix: str = "", depth: int = 0) -> list[tuple[str, Any]]:
    """(dotted path, field) of every singular enum / integer field, nested messages too."""
    out: list[tuple[str, Any]] = []
    if depth > 3:
        return out
    for f in desc.fields:
        path = prefix + f.name
        if f.is_repeated:
            continue
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            out += enum_and_int_paths(f.message_type, path + ".", depth + 1)
        elif f.type in (
            FieldDescriptor.TYPE_ENUM,
            FieldDescriptor.TYPE_INT32,
            FieldDescriptor.TYPE_INT64,
            FieldDescriptor.TYPE_SINT64,
            FieldDescriptor.TYPE_UINT64,
            FieldDescriptor.TYPE_UINT32,
        ):
            out.append((path, f))
    return out


EXTREMES = {
    FieldDescriptor.TYPE_ENUM: [-(2**31), -1, 999, 2**31 - 1],
    FieldDescriptor.TYPE_INT32: [-(2**31), 2**31 - 1],
    FieldDescriptor.TYPE_INT64: [-(2**63), 2**63 - 1],
    FieldDescriptor.TYPE_SINT64: [-(2**63), 2**63 - 1],
    FieldDescriptor.TYPE_UINT64: [0, 2**64 - 1],
    FieldDescriptor.TYPE_UINT32: [0, 2**32 - 1],
}


def set_path(message: Any, path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for name in parents:
        message = getattr(message, name)
    if leaf == "seconds" and message.DESCRIPTOR.full_name == "google.protobuf.Timestamp":
        message.nanos = 0  # extreme seconds with any nanos
    setattr(message, leaf, value)


@pytest.mark.parametrize("kind_name", KIND_NAMES)
@FUZZ
@given(data=st.data())
def test_dropcopy_unknown_enum_numbers_and_extreme_values_never_raise(
    kind_name: str, data: st.DataObject
) -> None:
    """Open enums carry numbers no schema knows; integers and timestamps can be at their
    limits (a uint64 beyond an Avro long, a timestamp beyond timestamp-micros): the
    message maps or is a dead letter, never an exception."""
    cls = record_class(KINDS[kind_name])
    message = data.draw(messages(cls.DESCRIPTOR))
    paths = enum_and_int_paths(cls.DESCRIPTOR)
    chosen = data.draw(st.lists(st.sampled_from(paths), min_size=1, max_size=4, unique=True))
    for path, field in chosen:
        set_path(message, path, data.draw(st.sampled_from(EXTREMES[field.type]), label=path))
    check_dropcopy(kind_name, [message])


def test_dropcopy_unknown_enum_number_keeps_the_raw_number() -> None:
    """Deterministic companion to the property above: a number the schema lacks is
    written as UNRECOGNIZED with the raw number under its path."""
    cls = record_class(KINDS["executions"])
    m = cls(id="EX1", type=777)
    m.order.id = "OR1"
    (record,), dead = check_dropcopy("executions", [m])
    assert dead == []
    value = dropcopy("executions")[1].decode(record.value)
    assert value["execution"]["type"] == "UNRECOGNIZED"
    assert value["unrecognized_enums"]["execution.type"] == 777


# -- Predexon ---------------------------------------------------------------------------

_PMAPPERS: dict[str, PredexonMapper] = {}


def predexon(channel: str) -> PredexonMapper:
    if channel not in _PMAPPERS:
        topic = CHANNELS[channel].topic
        prefix = SingleObjectFormat().prefix(CHANNELS[channel].schema, topic)
        _PMAPPERS[channel] = PredexonMapper(channel, f"predexon.{channel}", topic, prefix, "{}")
    return _PMAPPERS[channel]


def valid_events(channel: str, seed: int, n: int = 20) -> list[dict[str, Any]]:
    """Events the simulator would send on `channel` (its generator, not hand-written)."""
    factory, now, out = EventFactory(seed, confirm_scale=0.02), 1_767_000_000.0, []
    while len(out) < n:
        out += [data for _, data in factory.make(channel, now)]
        now += 1.0
    return out[:n]


def check_predexon(channel: str, frame: bytes) -> tuple[list[Record], list[DeadLetter]]:
    """Map one frame; assert the mapper's contract; return its output."""
    mapper = predexon(channel)
    records, dead = mapper.map_frame(frame, RECEIVED)  # must never raise
    for letter in dead:
        assert isinstance(letter.raw, bytes)  # exact bytes are checked below
        assert letter.target_topic == mapper.topic and letter.error_type
    for record in records:
        mapper.serializer.decode(record.value)  # valid Avro of the channel's schema
        assert record.event_id
    try:
        message = loads(frame)
    except (ValueError, RecursionError):
        assert (records, [d.raw for d in dead]) == ([], [frame]), "bad JSON: one letter, raw"
        return records, dead
    if isinstance(message, dict) and message.get("type") in CONTROL_TYPES:
        assert (records, dead) == ([], [])
    elif isinstance(message, dict) and message.get("type") == "event":
        assert len(records) + len(dead) == 1
        assert all(d.raw == frame for d in dead), "a bad single event keeps the whole frame"
    elif isinstance(message, dict) and message.get("type") == "event_batch":
        events = message.get("events")
        n = len(events) if isinstance(events, list) else 1
        assert len(records) + len(dead) == n, "each event of a batch accounted for once"
    elif not (isinstance(message, dict) and "event_type" in message and "type" not in message):
        assert (records, [d.raw for d in dead]) == ([], [frame])
    return records, dead


CHANNEL_NAMES = sorted(CHANNELS)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=15,
)


@pytest.mark.parametrize("channel", CHANNEL_NAMES)
@FUZZ
@given(frame=st.binary(max_size=400))
def test_predexon_random_bytes_become_dead_letters(channel: str, frame: bytes) -> None:
    check_predexon(channel, frame)


@pytest.mark.parametrize("channel", CHANNEL_NAMES)
@FUZZ
@given(value=json_values, wrap=st.sampled_from(["bare", "event", "batch"]))
def test_predexon_random_json_never_raises(channel: str, value: Any, wrap: str) -> None:
    frame = {
        "bare": value,
        "event": {"type": "event", "subscription_id": "s1", "data": value},
        "batch": {"type": "event_batch", "subscription_id": "s1", "events": [value, value]},
    }[wrap]
    check_predexon(channel, json.dumps(frame).encode())


@pytest.mark.parametrize("channel", CHANNEL_NAMES)
@FUZZ
@given(
    seed=st.integers(0, 2**16),
    index=st.integers(0, 19),
    mutation=st.sampled_from(["flip", "drop_key", "replace_value", "truncate", "none"]),
    data=st.data(),
)
def test_predexon_mutated_valid_events(
    channel: str, seed: int, index: int, mutation: str, data: st.DataObject
) -> None:
    """A real event, damaged one way; in a batch beside an intact event that must map."""
    events = valid_events(channel, seed)
    intact, event = events[(index + 1) % len(events)], dict(events[index])
    if mutation == "drop_key" and event:
        event.pop(data.draw(st.sampled_from(sorted(event))))
    elif mutation == "replace_value" and event:
        event[data.draw(st.sampled_from(sorted(event)))] = data.draw(json_values)
    frame = dumps(
        {"type": "event", "subscription_id": "s1", "data": event}, sort_keys=False
    ).encode()
    if mutation == "flip":
        frame = flip(frame, data.draw(st.lists(st.integers(0, 10**6), min_size=1, max_size=4)))
    elif mutation == "truncate":
        frame = frame[: data.draw(st.integers(0, max(0, len(frame) - 1)))]
    records, _ = check_predexon(channel, frame)
    if mutation == "none":
        assert len(records) == 1, "an undamaged simulator event maps"
    # Inside a batch, the damaged event never takes the intact one down with it.
    try:
        damaged = loads(frame)["data"]
    except (ValueError, RecursionError, TypeError, KeyError):
        return
    batch = dumps(
        {"type": "event_batch", "subscription_id": "s1", "events": [intact, damaged]},
        sort_keys=False,
    ).encode()
    records, dead = check_predexon(channel, batch)
    assert (
        records
        and records[0].event_id
        == predexon(channel).map_event(loads(dumps(intact)), 0, "s1").event_id
    )
    assert all(d.raw == dumps(damaged).encode() for d in dead), "one event's own bytes"


def test_predexon_oversized_frame_is_one_dead_letter_with_its_bytes() -> None:
    mapper = predexon("crypto")
    frame = b'{"type": "event", "data": "' + b"x" * mapper.max_frame_bytes + b'"}'
    records, dead = mapper.map_frame(frame, RECEIVED)
    assert records == [] and [d.raw for d in dead] == [frame]
    assert dead[0].error_type == "oversized"


def test_predexon_deeply_nested_json_is_a_dead_letter_not_a_crash() -> None:
    """Recursion limits are an attack surface of JSON parsers."""
    frame = b"[" * 100_000 + b"]" * 100_000
    records, dead = check_predexon("orders", frame)
    assert records == [] and len(dead) == 1
