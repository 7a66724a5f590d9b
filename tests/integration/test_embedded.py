"""The embedded broker: start, answer, stop; and the `polybridge broker` command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from bridge.embedded import EmbeddedBroker


def test_starts_answers_metadata_and_stops(tmp_path: Path) -> None:
    broker = EmbeddedBroker(log_path=tmp_path / "tansu.log")
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
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_start_fails_clearly_when_the_port_is_taken() -> None:
    with EmbeddedBroker() as first:
        started = time.monotonic()
        from bridge.errors import BridgeError

        with pytest.raises(BridgeError, match="embedded broker"):
            EmbeddedBroker(port=first.port).start(timeout=10)
        assert time.monotonic() - started < 12
