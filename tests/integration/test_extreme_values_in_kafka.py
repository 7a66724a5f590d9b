"""Extreme values through the bridge into Kafka, every Predexon channel: a real WebSocket
server (the simulator's `send_event`) sends events whose time and number fields hold 0,
negatives, the time in seconds, milliseconds, microseconds and nanoseconds, 2^63-1, numbers
beyond 64 bits and strings. Each event is in Kafka as a record fastavro decodes (with its
logical types: timestamp-micros as dates), or in the dead-letter topic; every stream's state
record decodes the same way and is usable; and the Java reader (`java/topic-reader`) decodes
every data topic, the dead letters and the state topic.

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

from bridge.eos.state_records import StateRecords
from bridge.kafka.state import STATE_SCHEMA
from bridge.mapping.predexon_channels import CHANNELS
from bridge.mapping.predexon_json import dumps, loads
from bridge.serde.avro import Serializer, SingleObjectFormat
from bridge.sim.predexon import SimConfig, SimulatorThread
from bridge.sim.predexon.events import EventFactory
from bridge.timeutil import now_us
from tests import kafka_fixture
from tests.bridge_harness import ALONE
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
    state_topic = setup.prefix + "polybridge.state"
    serializer = Serializer(STATE_SCHEMA, SingleObjectFormat().prefix(STATE_SCHEMA, ""))
    stored = StateRecords(state_topic)
    for key, value, _, _, offset in kafka_fixture.read_all(setup.bootstrap, state_topic):
        assert key is not None and value is not None
        serializer.decode(value)  # timestamp-micros as dates
        stored.put(key.decode(), offset, value)
    for sub in subs:
        entry = stored.entry(sub.stream_id, now_us())  # no StateRecordError
        assert entry is not None and entry.position.live_time_us is not None, sub.stream_id


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
