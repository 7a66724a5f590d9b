"""`polybridge tail`: either wire format to JSON lines, read_committed, stops at the end."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka import Producer

from bridge import cli
from bridge.config import SchemaRegistrySettings
from bridge.serde.avro import Serializer, SingleObjectFormat, WireFormat
from bridge.serde.registry import RegistryFormat

T0_US = 1_767_000_000_123_456


def produce_dead_letters(bootstrap: str, topic: str, fmt: WireFormat, n: int) -> None:
    serializer = Serializer("polybridge.DeadLetter", fmt.prefix("polybridge.DeadLetter", topic))
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(n):
        datum = {
            "stream_id": "predexon.x",
            "upstream": "predexon",
            "target_topic": None,
            "error_type": "parse_error",
            "error": f"bad {i}",
            "raw": b"\x00\xff" + bytes([i]),
            "received_at": T0_US + i,
        }
        producer.produce(topic, key=f"k{i % 2}".encode(), value=serializer(datum))
    assert producer.flush(30) == 0


def test_tail_prints_single_object_records_as_json_lines(
    kafka_bootstrap: str, make_topic, tmp_path: Path
) -> None:
    topic = make_topic(partitions=2)
    produce_dead_letters(kafka_bootstrap, topic, SingleObjectFormat(), 6)
    base = [sys.executable, "-m", "bridge", "--log-level", "WARNING", "tail", topic]
    args = [*base, "--bootstrap-servers", kafka_bootstrap, "--from-beginning"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True).stdout
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 6
    first = min(lines, key=lambda line: line["value"]["received_at"])
    assert first["schema"] == "polybridge.DeadLetter"
    assert first["value"]["received_at"] == "2025-12-29T09:20:00.123456Z"
    assert base64.b64decode(first["value"]["raw"]) == b"\x00\xff\x00"
    assert first["key"] == "k0" and first["timestamp"].endswith("Z")
    # --key, --max and --bytes hex
    out = subprocess.run(
        [*args, "--key", "k1", "--max", "2", "--bytes", "hex"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 2 and {line["key"] for line in lines} == {"k1"}
    assert all(line["value"]["raw"].startswith("00ff") for line in lines)


def test_tail_decodes_registry_framed_records_by_schema_id(
    kafka_bootstrap: str, make_topic, tmp_path: Path, schema_registry_url: str
) -> None:
    topic = make_topic()
    fmt = RegistryFormat(SchemaRegistrySettings(url=schema_registry_url))
    produce_dead_letters(kafka_bootstrap, topic, fmt, 3)
    config = tmp_path / "tail.toml"
    config.write_text(
        f'[kafka]\nbootstrap_servers = "{kafka_bootstrap}"\n'
        f'[schema_registry]\nurl = "{schema_registry_url}"\n'
    )
    base = [sys.executable, "-m", "bridge", "--log-level", "WARNING", "tail", topic]
    for how in (
        ["--config", str(config)],
        ["--bootstrap-servers", kafka_bootstrap, "--schema-registry-url", schema_registry_url],
    ):
        done = subprocess.run(
            [*base, *how, "--from-beginning"], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        lines = [json.loads(line) for line in done.stdout.splitlines()]
        assert [line["value"]["error"] for line in lines] == ["bad 0", "bad 1", "bad 2"]
        assert all(line["schema"] == "polybridge.DeadLetter" for line in lines)


def test_tail_without_registry_reports_registry_framed_values_per_line(
    kafka_bootstrap: str, make_topic, capsys: pytest.CaptureFixture[str], schema_registry_url: str
) -> None:
    topic = make_topic()
    fmt = RegistryFormat(SchemaRegistrySettings(url=schema_registry_url))
    produce_dead_letters(kafka_bootstrap, topic, fmt, 1)
    code = cli.main(["tail", topic, "--bootstrap-servers", kafka_bootstrap, "--from-beginning"])
    assert code == 0
    (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert line["value"] is None and "no schema registry is configured" in line["error"]
