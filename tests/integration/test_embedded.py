"""The local Apache Kafka: start, answer, keep data across a SIGKILL, stop; clear errors
without Java or Maven; and the `polybridge broker` command."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from bridge.embedded import EmbeddedBroker, broker_classpath
from bridge.errors import BridgeError


def test_starts_answers_metadata_and_stops(tmp_path: Path) -> None:
    broker = EmbeddedBroker(log_path=tmp_path / "kafka.log")
    with broker:
        assert broker.running
        md = AdminClient({"bootstrap.servers": broker.bootstrap_servers}).list_topics(timeout=5)
        assert md.brokers
    assert not broker.running


def test_broker_command_prints_bootstrap_and_stops_on_sigterm(tmp_path: Path) -> None:
    from bridge.embedded import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "broker", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=open(tmp_path / "stderr", "wb"),  # noqa: SIM115
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # printed only once the broker answers
        assert line.strip() == f"bootstrap.servers=127.0.0.1:{port}"
        md = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"}).list_topics(timeout=5)
        assert md.brokers
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_start_fails_clearly_when_the_port_is_taken() -> None:
    with EmbeddedBroker() as first:
        started = time.monotonic()
        with pytest.raises(BridgeError, match="embedded broker"):
            EmbeddedBroker(port=first.port).start(timeout=10)
        assert time.monotonic() - started < 12


def test_a_sigkilled_broker_restarted_on_its_data_dir_keeps_committed_records(
    tmp_path: Path,
) -> None:
    from tests.kafka_fixture import create_topic, read_all

    broker = EmbeddedBroker(data_dir=tmp_path / "data", log_path=tmp_path / "kafka.log")
    with broker:
        topic = create_topic(broker.bootstrap_servers, "kept")
        producer = Producer({"bootstrap.servers": broker.bootstrap_servers, "acks": "all"})
        for i in range(1_000):
            producer.produce(topic, f"v{i}".encode())
        assert producer.flush(30) == 0
        broker.kill()
        assert not broker.running
        broker.start()
        rows = read_all(broker.bootstrap_servers, topic)
    assert [r[1] for r in rows] == [f"v{i}".encode() for i in range(1_000)]


def test_missing_java_is_one_clear_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-jdk"))
    with pytest.raises(BridgeError, match=r"needs Java 17\+ .*--bootstrap-servers"):
        EmbeddedBroker().start()


def test_missing_maven_is_one_clear_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A pom whose classpath is not cached yet, and no `mvn` on PATH."""
    pom = tmp_path / "kafka" / "pom.xml"
    pom.parent.mkdir()
    pom.write_text(Path("kafka/pom.xml").read_text() + "<!-- not cached -->")
    java = shutil.which("java")
    assert java is not None
    monkeypatch.setenv("POLYBRIDGE_KAFKA_POM", str(pom))
    monkeypatch.setenv("PATH", str(Path(java).resolve().parent))
    with pytest.raises(BridgeError, match=r"needs Maven \(mvn\) .*--bootstrap-servers"):
        broker_classpath()
