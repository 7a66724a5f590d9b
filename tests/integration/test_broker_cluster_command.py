"""`polybridge broker --nodes 3`: a three-node KRaft cluster on consecutive ports, topics
created without a replication factor get 3 replicas and min.insync.replicas 2, and
SIGTERM stops every node."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from bridge.embedded import free_port, port_free
from bridge.kafka.admin import broker_config
from tests.kafka_fixture import wait_in_sync


def _three_free_ports() -> int:
    while True:
        port = free_port()
        if port + 2 < 65536 and port_free(port + 1) and port_free(port + 2):
            return port


def test_broker_command_starts_three_replicating_nodes_and_stops_them(tmp_path: Path) -> None:
    port = _three_free_ports()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bridge",
            "broker",
            "--nodes",
            "3",
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path / "data"),
            "--log-file",
            str(tmp_path / "logs" / "kafka.log"),
        ],
        stdout=subprocess.PIPE,
        stderr=open(tmp_path / "stderr", "wb"),  # noqa: SIM115
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()  # printed once every node is in the metadata
        bootstrap = ",".join(f"127.0.0.1:{port + i}" for i in range(3))
        assert line == f"bootstrap.servers={bootstrap}", (tmp_path / "stderr").read_text()
        admin = AdminClient({"bootstrap.servers": bootstrap})
        assert sorted(admin.list_topics(timeout=10).brokers) == [1, 2, 3]
        admin.create_topics([NewTopic("t", 2, -1)])["t"].result(timeout=30)
        wait_in_sync(bootstrap, 3, 60)
        partitions = admin.list_topics("t", timeout=10).topics["t"].partitions.values()
        assert [len(p.replicas) for p in partitions] == [3, 3]
        defaults = broker_config({"bootstrap.servers": bootstrap}, 1)
        assert defaults["default.replication.factor"] == "3"
        assert defaults["min.insync.replicas"] == "2"
        assert defaults["unclean.leader.election.enable"] == "false"
        assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == [
            "kafka-1.log",
            "kafka-2.log",
            "kafka-3.log",
        ]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
