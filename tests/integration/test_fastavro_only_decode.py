"""A consumer with nothing but confluent-kafka, fastavro and the `.avsc` files reads what the
bridge wrote in single-object format (no polybridge code in the decode path).

The bridge runs as a process (`tests/bridge_harness.py`) against the DropCopy simulator;
the schemas are the exported self-contained `.avsc` files (`polybridge schemas export`,
the same as the newest `avro/history/<name>/v<N>.avsc`), read as plain JSON files.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import fastavro
from confluent_kafka import Consumer, TopicPartition
from fastavro.schema import fingerprint, to_parsing_canonical_form

from bridge.sim.dropcopy import SimConfig, SimulatorThread
from tests.bridge_harness import ALL_KINDS, BridgeProcess, write_setup

HISTORY = Path(__file__).resolve().parents[2] / "avro" / "history"
SCHEMAS = {
    "executions": "polymarket.v1.dropcopy.ExecutionRecord",
    "trade_captures": "polymarket.v1.dropcopy.TradeCaptureRecord",
    "instrument_states": "polymarket.v1.dropcopy.InstrumentStateRecord",
    "position_changes": "polymarket.v1.dropcopy.PositionChangeRecord",
}


def read_values(bootstrap: str, topic: str) -> list[bytes]:
    """Every committed value of `topic`, by plain confluent-kafka (assign, read_committed)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "fastavro-only",
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    try:
        parts = consumer.list_topics(timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        values, ended = [], set()
        while len(ended) < len(parts):
            for msg in consumer.consume(1000, 1.0):
                if msg.error() is None:
                    values.append(msg.value())
                elif msg.error().code() == -191:  # _PARTITION_EOF
                    ended.add(msg.partition())
        return values
    finally:
        consumer.close()


def test_bridge_output_decodes_with_fastavro_and_the_avsc_files_alone(
    kafka_bootstrap: str, tmp_path: Path, unique_name
) -> None:
    config = SimConfig(seed=5, prefill=600, heartbeat_s=0.1, batch=100, rate=0)
    with SimulatorThread(config) as sim:
        setup = write_setup(tmp_path, kafka_bootstrap, sim, unique_name("fa") + ".")
        bridge = BridgeProcess(setup, tmp_path / "bridge.log")
        try:
            setup.wait_equal(sim, log=bridge.log_path)
        finally:
            assert bridge.terminate() == 0, bridge.log()
    for kind in ALL_KINDS:
        newest = max((HISTORY / SCHEMAS[kind]).glob("v*.avsc"), key=lambda p: int(p.stem[1:]))
        text = newest.read_text()
        schema = fastavro.parse_schema(json.loads(text))
        expected = bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))
        values = read_values(kafka_bootstrap, setup.topic(kind))
        assert values, kind
        for value in values:
            assert value[:2] == b"\xc3\x01"
            assert value[2:10] == expected, kind
            datum = fastavro.schemaless_reader(io.BytesIO(value[10:]), schema, schema)
            assert datum["stream_id"] == f"dropcopy.{kind}"
            assert datum["event_id"]
