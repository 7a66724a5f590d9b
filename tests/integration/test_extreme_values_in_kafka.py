"""Extreme values through the bridge into Kafka, every Predexon channel and DropCopy stream.

A real WebSocket server (the Predexon simulator's `send_event`) sends events whose time and
number fields hold 0, negatives, the time in seconds, milliseconds, microseconds and
nanoseconds, 2^63-1, numbers beyond 64 bits and strings; the DropCopy gRPC simulator (its
`inject`) serves messages with every integer field, Timestamp seconds included, at such
values. Each is in Kafka as a record fastavro decodes (with its logical types:
timestamp-micros as dates), or in the dead-letter topic; every stream's state record decodes
the same way and is usable; and the Java reader (`java/topic-reader`) decodes every data
topic, the dead letters and the state topic.

The mapping of the same values on every channel and DropCopy stream is the property test
`tests/unit/test_extreme_values.py`.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from google.protobuf.descriptor import FieldDescriptor

from bridge.eos.state_records import StateRecords
from bridge.kafka.state import STATE_SCHEMA
from bridge.mapping.dropcopy import DropCopyMapper
from bridge.serde.avro import Serializer, SingleObjectFormat
from bridge.serde.exact_json import dumps, loads
from bridge.sim import dropcopy as dsim
from bridge.sim.market import DEFAULT_FIRMS
from bridge.sim.predexon import SimConfig, SimulatorThread
from bridge.sim.predexon.events import EventFactory
from bridge.streams.channels import CHANNELS
from bridge.streams.kinds import KINDS
from bridge.timeutil import now_us
from bridge.verify import kafka_rows
from tests import kafka_fixture
from tests.bridge_harness import ALL_KINDS, ALONE
from tests.bridge_harness import write_setup as dc_setup
from tests.integration.test_crypto_times_in_milliseconds import one_per_channel
from tests.integration.test_java_consumer import build_topic_reader
from tests.predexon_harness import BridgeProcess, PredexonSetup, Sub, wait_until, write_setup

NOW_S = now_us() // 1_000_000
EXTREMES: list[Any] = [
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
    2**64,
    str(NOW_S),
    "abc",
]
"""Each goes into every time and number field of one event per channel."""


def _events(channel: str, factory: EventFactory) -> list[dict[str, Any]]:
    """One generated event per extreme value, every number field set to it (each from a
    fresh event: its own identity), then an untouched one that marks the end."""
    numbers = [name for name, kind in CHANNELS[channel].fields if kind in ("int", "decimal")]
    made: list[dict[str, Any]] = []
    at = float(NOW_S)
    while len(made) < len(EXTREMES) + 1:
        made += [dict(data) for _, data in factory.make(channel, at)]
        at += 1.0
    events = []
    for value, event in zip(EXTREMES, made, strict=False):
        events.append({**event, **{name: copy.copy(value) for name in numbers}})
    return [*events, made[len(EXTREMES)]]


def _as_received(event: dict[str, Any]) -> Any:
    """The event as the bridge parses it off the wire (numbers as exact text)."""
    return loads(dumps(event))


def _dead_letters(setup: PredexonSetup) -> list[tuple[str, dict[str, Any]]]:
    dlq = setup.prefix + "polybridge.dlq"
    serializer = Serializer(
        "polybridge.DeadLetter", SingleObjectFormat().prefix("polybridge.DeadLetter", dlq)
    )
    return [
        (key.decode(), serializer.decode(value))
        for key, value, _, _, _ in kafka_fixture.read_all(setup.bootstrap, dlq)
        if key is not None and value is not None
    ]


def test_extreme_values_are_records_or_dead_letters_that_decode(
    kafka_bootstrap: str, tmp_path: Path, unique_name: Callable[[str], str]
) -> None:
    reader = build_topic_reader()  # first: a failing build needs no bridge
    config = SimConfig(seed=29, rate=0.0)  # nothing but what the test sends
    with SimulatorThread(config) as sim:
        subs = one_per_channel(sim.sim.factory.universe)
        setup = write_setup(tmp_path, kafka_bootstrap, sim, unique_name("extreme") + ".", subs)
        setup.config_path.write_text(setup.config_path.read_text() + "\n" + ALONE)
        bridge = BridgeProcess(setup, tmp_path / "bridge.log")
        try:

            def subscribed() -> bool:
                assert bridge.process.poll() is None, bridge.log()  # it did not end
                return len(sim.call(sim.sim.subscriptions)) >= len(subs)

            wait_until(subscribed, 60, "every channel subscribed")
            factory = EventFactory(31)
            sent: dict[str, list[dict[str, Any]]] = {}
            for sub in subs:
                sent[sub.stream_id] = _events(sub.channel, factory)
                for event in sent[sub.stream_id]:
                    assert sim.call(sim.sim.send_event, sub.channel, event) == 1
            for sub in subs:
                # The last event, untouched, is in Kafka: so is every event before it.
                last = setup.mapper(sub).map_event(_as_received(sent[sub.stream_id][-1]), 0, None)
                wait_until(
                    lambda sub=sub, last=last: last.event_id in {e for _, e in setup.rows(sub)},
                    60,
                    f"{sub.stream_id}: the events sent",
                    poll=0.3,
                )
        finally:
            code = bridge.terminate()
        assert code == 0, bridge.log()

    letters = _dead_letters(setup)
    for sub in subs:
        mapper = setup.mapper(sub)
        expected_ids, expected_dead = set(), 0
        for event in sent[sub.stream_id]:
            raw = dumps(event).encode()
            records, dead = mapper.map_message(_as_received(event), raw, now_us(), "s")
            expected_ids |= {r.event_id for r in records}
            expected_dead += len(dead)
        values = setup.decoded(sub)  # fastavro, timestamp-micros as dates
        assert expected_ids <= {v["event_id"] for v in values}, sub.stream_id
        assert all(v["event_time"] is None or v["event_time"].year >= 2000 for v in values)
        assert sum(1 for key, _ in letters if key == sub.stream_id) == expected_dead
        assert expected_dead > 0, sub.stream_id  # strings and >64-bit numbers: dead letters

    _assert_the_state_records_decode(setup, subs)
    topics = [setup.topic(s) for s in subs] + [
        setup.prefix + "polybridge.dlq",
        setup.prefix + "polybridge.state",
    ]
    lines = reader.read(kafka_bootstrap, _exported_schemas(tmp_path), topics)
    for topic in topics:  # every record of every topic, decoded by Java too
        written = kafka_fixture.read_all(kafka_bootstrap, topic)
        assert len([line for line in lines if line["topic"] == topic]) == len(written) > 0


def _assert_the_state_records_decode(setup: PredexonSetup, subs: list[Sub]) -> None:
    _assert_state_records_decode(setup.bootstrap, setup.prefix, [s.stream_id for s in subs])


def _assert_state_records_decode(bootstrap: str, prefix: str, stream_ids: list[str]) -> None:
    state_topic = prefix + "polybridge.state"
    serializer = Serializer(STATE_SCHEMA, SingleObjectFormat().prefix(STATE_SCHEMA, ""))
    stored = StateRecords(state_topic)
    for key, value, _, _, offset in kafka_fixture.read_all(bootstrap, state_topic):
        assert key is not None and value is not None
        serializer.decode(value)  # timestamp-micros as dates
        stored.put(key.decode(), offset, value)
    for stream_id in stream_ids:
        entry = stored.entry(stream_id, now_us())  # no StateRecordError
        assert entry is not None and entry.position.live_time_us is not None, stream_id


# -- DropCopy ---------------------------------------------------------------------------

_INTEGERS = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31),
    FieldDescriptor.TYPE_UINT32: (0, 2**32),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63),
    FieldDescriptor.TYPE_UINT64: (0, 2**64),
}
"""Integer field types: the values each can hold, [low, high)."""


def _set_integers(message: Any, value: int) -> None:
    """Every integer field of `message` and of the messages it holds (Timestamp seconds
    included) to `value`, where the field can hold it."""
    for field in message.DESCRIPTOR.fields:
        if field.is_repeated:
            continue
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if message.HasField(field.name):
                _set_integers(getattr(message, field.name), value)
            continue
        bounds = _INTEGERS.get(field.type)
        if bounds is not None and bounds[0] <= value < bounds[1]:
            if field.name == "nanos":
                continue  # a Timestamp's nanos: seconds carry the extreme
            setattr(message, field.name, value)


def _dropcopy_extremes(kind: str, base: Any) -> list[Any]:
    """One message per extreme integer value, each with its own identity."""
    out = []
    for i, value in enumerate(v for v in EXTREMES if isinstance(v, int)):
        message = type(base).FromString(base.SerializeToString())
        _set_integers(message, value)
        if kind in ("executions", "trade_captures"):
            message.id = f"extreme-{i}"
        out.append(message)
    return out


def test_dropcopy_extreme_values_are_records_or_dead_letters_that_decode(
    kafka_bootstrap: str, tmp_path: Path, unique_name: Callable[[str], str]
) -> None:
    """The same through the DropCopy gRPC simulator (its `inject`), every stream: every
    integer field, Timestamp seconds included, at each extreme."""
    reader = build_topic_reader()
    config = dsim.SimConfig(seed=37, prefill=200, heartbeat_s=0.1, batch=100, rate=0)
    with dsim.SimulatorThread(config) as sim:
        setup = dc_setup(tmp_path, kafka_bootstrap, sim, unique_name("dc-extreme") + ".")
        setup.config_path.write_text(setup.config_path.read_text() + "\n" + ALONE)
        bridge = BridgeProcess(setup, tmp_path / "bridge.log")
        expected: dict[str, tuple[set[str], int]] = {}
        try:
            setup.wait_equal(sim, log=bridge.log_path)
            for kind in ALL_KINDS:
                firms = DEFAULT_FIRMS if KINDS[kind].account_scoped else ()
                base = sim.ground_truth(kind, firms=firms)[-1]
                messages = _dropcopy_extremes(kind, base)
                for message in messages:
                    sim.inject(kind, message)
                mapper = DropCopyMapper(KINDS[kind], f"dropcopy.{kind}", "t", b"")
                response = KINDS[kind].response_type()
                getattr(response, KINDS[kind].list_field).extend(messages)
                records, dead = mapper.map_response(response, now_us())
                expected[kind] = ({r.event_id for r in records}, len(dead))
            for kind in ALL_KINDS:
                ids, dead_count = expected[kind]
                stream_id = f"dropcopy.{kind}"
                wait_until(
                    lambda kind=kind, ids=ids, stream_id=stream_id, dead_count=dead_count: (
                        ids <= {e for _, e in kafka_rows(setup.kafka, setup.topic(kind), stream_id)}
                        and _dead_count(kafka_bootstrap, setup.prefix, stream_id) == dead_count
                    ),
                    60,
                    f"{stream_id}: the messages injected",
                    poll=0.3,
                )
        finally:
            code = bridge.terminate()
        assert code == 0, bridge.log()

    for kind in ALL_KINDS:
        schema = KINDS[kind].schema
        serializer = Serializer(schema, SingleObjectFormat().prefix(schema, ""))
        for _, value, _, _, _ in kafka_fixture.read_all(kafka_bootstrap, setup.topic(kind)):
            datum = serializer.decode(value or b"")  # timestamp-micros as dates
            assert datum["event_time"] is None or datum["event_time"].year >= 2000
    assert all(ids for ids, _ in expected.values())  # records with extreme values, each kind
    assert sum(dead for _, dead in expected.values()) > 0  # beyond years 1-9999: dead letters
    _assert_state_records_decode(
        kafka_bootstrap, setup.prefix, [f"dropcopy.{kind}" for kind in ALL_KINDS]
    )
    topics = [setup.topic(kind) for kind in ALL_KINDS] + [
        setup.prefix + "polybridge.dlq",
        setup.prefix + "polybridge.state",
    ]
    lines = reader.read(kafka_bootstrap, _exported_schemas(tmp_path), topics)
    for topic in topics:
        written = kafka_fixture.read_all(kafka_bootstrap, topic)
        assert len([line for line in lines if line["topic"] == topic]) == len(written) > 0


def _dead_count(bootstrap: str, prefix: str, stream_id: str) -> int:
    rows = kafka_fixture.read_all(bootstrap, prefix + "polybridge.dlq")
    return sum(1 for key, _, _, _, _ in rows if key == stream_id.encode())


def _exported_schemas(tmp_path: Path) -> Path:
    folder = tmp_path / "schemas"
    done = subprocess.run(
        [sys.executable, "-m", "bridge", "schemas", "export", str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return folder
