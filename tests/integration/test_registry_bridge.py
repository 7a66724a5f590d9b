"""End to end in registry mode: simulator -> bridge -> Kafka with Confluent framing.

The bridge runs as its own process (`polybridge run`) against the session's Schema
Registry (`schema_registry_url`), and the test reads the registry the bridge registered its
schemas in: every record carries the id of its topic's subject. With the registry gone
mid-run the bridge keeps writing with the ids it resolved at start (nothing lost, no other
id); with no registry at start it refuses to start, one line, nothing written.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

from confluent_kafka.admin import AdminClient

from bridge.commands.state import RESET_OWNER, reset
from bridge.config import load_settings
from bridge.embedded import free_port
from bridge.embedded_registry import EmbeddedRegistry
from bridge.kafka.readback import ReadRecord, read_topic
from bridge.kafka.state import decode_state
from bridge.serde.decode import Decoder
from bridge.serde.registry import configured_topic_schemas, registry_client
from bridge.sim.dropcopy import SimConfig, SimulatorThread
from tests import kafka_fixture
from tests.bridge_harness import ALL_KINDS, BridgeProcess, wait_until, write_setup


def _registry_section(url: str) -> str:
    return f'[schema_registry]\nurl = "{url}"\n'


def test_bridge_in_registry_mode_writes_confluent_framed_records_exactly_once(
    kafka_bootstrap: str, tmp_path: Path, unique_name, schema_registry_url: str
) -> None:
    url = schema_registry_url
    config = SimConfig(seed=13, prefill=1_500, heartbeat_s=0.1, batch=200, rate=0)
    with SimulatorThread(config) as sim:
        setup = write_setup(
            tmp_path,
            kafka_bootstrap,
            sim,
            unique_name("sr") + ".",
            extra=_registry_section(url),
        )
        settings = load_settings(setup.config_path, environ={})
        bridge = BridgeProcess(setup, tmp_path / "bridge.log")
        try:
            setup.wait_equal(sim, log=bridge.log_path)
        finally:
            code = bridge.terminate()
        assert code == 0, bridge.log()
    client = registry_client(settings.schema_registry)
    subjects = {s for s in client.get_subjects() if s.startswith(setup.prefix)}
    assert subjects == {f"{t}-value" for _, t in configured_topic_schemas(settings)}
    decoder = Decoder(client)
    for kind in ALL_KINDS:
        topic = setup.topic(kind)
        schema_id = client.get_latest_version(f"{topic}-value").schema_id
        values = [r.value for r in read_topic(setup.kafka, topic) if r.value is not None]
        assert values
        for value in values:
            assert value[:5] == b"\x00" + schema_id.to_bytes(4, "big")
            assert decoder.decode(value).datum["stream_id"] == f"dropcopy.{kind}"
    state_topic = setup.prefix + "polybridge.state"
    state = read_topic(setup.kafka, state_topic)
    assert state and all(r.value is None or r.value[:1] == b"\x00" for r in state)
    # `state reset` writes the position in the same framing, with the State schema's id.
    asyncio.run(reset(settings, "dropcopy.executions", "2026-01-01T00:00:00Z"))
    after: list[ReadRecord] = []

    def reset_visible() -> bool:  # once the broker wrote the commit marker
        after[:] = [r for r in read_topic(setup.kafka, state_topic) if r.offset > state[-1].offset]
        return bool(after)

    wait_until(reset_visible, 10, "the reset position")
    (rewound,) = after
    state_id = client.get_latest_version(f"{state_topic}-value").schema_id
    assert rewound.value is not None and rewound.value[:5] == b"\x00" + state_id.to_bytes(4, "big")
    entry = decode_state(rewound.value)
    assert entry.owner == RESET_OWNER and entry.position.event_time_us == 1_767_225_600_000_000


def test_registry_gone_mid_run_changes_nothing_written(
    kafka_bootstrap: str, tmp_path: Path, unique_name
) -> None:
    """Ids are resolved once, at start: a registry that goes away mid-run stops nothing,
    loses nothing and puts no other id on any record."""
    config = SimConfig(seed=17, prefill=500, heartbeat_s=0.1, batch=200, rate=0)
    with EmbeddedRegistry() as registry, SimulatorThread(config) as sim:
        setup = write_setup(
            tmp_path,
            kafka_bootstrap,
            sim,
            unique_name("srgone") + ".",
            extra=_registry_section(registry.url),
        )
        bridge = BridgeProcess(setup, tmp_path / "bridge.log")
        try:
            setup.wait_equal(sim, log=bridge.log_path)
            client = registry_client(load_settings(setup.config_path).schema_registry)
            ids = {
                kind: client.get_latest_version(f"{setup.topic(kind)}-value").schema_id
                for kind in ALL_KINDS
            }
            registry.stop()
            sim.generate(2_000)
            setup.wait_equal(sim, log=bridge.log_path)
        finally:
            code = bridge.terminate()
        assert code == 0, bridge.log()
    for kind in ALL_KINDS:
        rows = kafka_fixture.read_all(kafka_bootstrap, setup.topic(kind))
        assert {row[1][:5] for row in rows} == {b"\x00" + ids[kind].to_bytes(4, "big")}


def test_no_registry_at_start_is_one_line_and_nothing_written(
    kafka_bootstrap: str, tmp_path: Path, unique_name
) -> None:
    config = SimConfig(seed=19, prefill=100, heartbeat_s=0.1, batch=200, rate=0)
    nowhere = f"http://127.0.0.1:{free_port()}/apis/ccompat/v7"  # nothing listens
    with SimulatorThread(config) as sim:
        setup = write_setup(
            tmp_path,
            kafka_bootstrap,
            sim,
            unique_name("srnone") + ".",
            extra=_registry_section(nowhere),
        )
        began = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "bridge", "run", "--config", str(setup.config_path)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        took = time.monotonic() - began
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"polybridge: error: schema registry {nowhere}: subject "), last
    assert "cannot look up the schema" in last and "Traceback" not in done.stderr
    assert took < 60, f"gave up after {took:.0f} s"
    topics = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10).topics
    assert not [t for t in topics if t.startswith(setup.prefix)], "created topics"
