"""End to end in registry mode: simulator -> bridge -> Kafka with Confluent framing.

The bridge runs in this process (`Bridge(settings).run(stop)` on a thread's event loop), not
as a subprocess: confluent-kafka's `mock://` registry exists only inside one process, and
the test must read the same registry the bridge registered its schemas in. The subprocess
path (`polybridge run`) is the same code after `load_settings`.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from pathlib import Path

from bridge.app import Bridge
from bridge.commands.state import RESET_OWNER, reset
from bridge.config import load_settings
from bridge.kafka.readback import ReadRecord, read_topic
from bridge.kafka.state import decode_state
from bridge.serde.decode import Decoder
from bridge.serde.registry import configured_topic_schemas, registry_client
from bridge.sim.dropcopy import SimConfig, SimulatorThread
from tests.bridge_harness import ALL_KINDS, wait_until, write_setup


def test_bridge_in_registry_mode_writes_confluent_framed_records_exactly_once(
    kafka_bootstrap: str, tmp_path: Path, unique_name
) -> None:
    url = f"mock://{uuid.uuid4().hex}"
    config = SimConfig(seed=13, prefill=1_500, heartbeat_s=0.1, batch=200, rate=0)
    with SimulatorThread(config) as sim:
        setup = write_setup(
            tmp_path,
            kafka_bootstrap,
            sim,
            unique_name("sr") + ".",
            extra=f'[schema_registry]\nurl = "{url}"\n',
        )
        settings = load_settings(setup.config_path, environ={})
        bridge = Bridge(settings)
        loop = asyncio.new_event_loop()
        stop = asyncio.Event()
        result: list[int] = []
        thread = threading.Thread(
            target=lambda: result.append(loop.run_until_complete(bridge.run(stop)))
        )
        thread.start()
        try:
            setup.wait_equal(sim)
        finally:
            loop.call_soon_threadsafe(stop.set)
            thread.join(60)
            loop.close()
        assert result == [0]
    client = registry_client(settings.schema_registry)
    subjects = set(client.get_subjects())
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
