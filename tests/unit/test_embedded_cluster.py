"""The three-node local cluster's configuration, the bridge's replication default, the
topology arithmetic the failover tests rely on, and `polybridge check`'s replication
warnings (no Kafka: the cluster itself runs in tests/fault/test_cluster_failover.py)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from bridge.commands import check
from bridge.config import KafkaSettings, Settings
from bridge.embedded import EmbeddedCluster, Quorum, server_properties
from bridge.errors import BridgeError
from tests.kafka_fixture import java_string_hash, kafka_abs


def _props(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines())


def test_a_cluster_node_lists_every_voter_and_replicates_everything_three_times() -> None:
    quorum = Quorum(((1, 9101), (2, 9102), (3, 9103)), "EBAQEBAQEBAQEBAQEBAQEA")
    props = _props(server_properties(9092, 9102, Path("/data"), None, 2, quorum))
    assert props["node.id"] == "2"
    assert props["controller.quorum.voters"] == (
        "1@127.0.0.1:9101,2@127.0.0.1:9102,3@127.0.0.1:9103"
    )
    assert "controller.quorum.bootstrap.servers" not in props
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9102"
    for key in (
        "default.replication.factor",
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
    ):
        assert props[key] == "3", key
    assert props["min.insync.replicas"] == "2"
    assert props["transaction.state.log.min.isr"] == "2"
    assert props["unclean.leader.election.enable"] == "false"


def test_a_single_node_keeps_one_replica_and_its_own_quorum() -> None:
    props = _props(server_properties(9092, 9093, Path("/data"), None))
    assert props["node.id"] == "1"
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:9093"
    assert "controller.quorum.voters" not in props
    assert props["default.replication.factor"] == "1"
    assert props["min.insync.replicas"] == "1"
    assert props["transaction.state.log.min.isr"] == "1"


def test_cluster_nodes_get_distinct_ports_one_cluster_id_and_their_own_directories(
    tmp_path: Path,
) -> None:
    cluster = EmbeddedCluster(3, data_dir=tmp_path, ports=[19092, 19093, 19094])
    nodes = cluster.nodes
    assert sorted(nodes) == [1, 2, 3]
    ports = [n.port for n in nodes.values()] + [n.controller_port for n in nodes.values()]
    assert len(set(ports)) == 6
    assert cluster.bootstrap_servers == "127.0.0.1:19092,127.0.0.1:19093,127.0.0.1:19094"
    assert {n.quorum for n in nodes.values()} == {cluster.quorum}
    assert [n.data_dir for n in nodes.values()] == [tmp_path / f"node-{i}" for i in (1, 2, 3)]
    assert all(n.nodes == 3 for n in nodes.values())
    with pytest.raises(BridgeError, match="3 nodes need 3 broker ports"):
        EmbeddedCluster(3, data_dir=tmp_path, ports=[19092])


def test_java_string_hash_and_kafka_abs_match_java() -> None:
    # Values of String.hashCode() computed by Java.
    assert java_string_hash("") == 0
    assert java_string_hash("abc") == 96354
    assert java_string_hash("polybridge.dropcopy.executions") == _java_reference(
        "polybridge.dropcopy.executions"
    )
    assert java_string_hash("polygenelubricants") == -(1 << 31)
    assert kafka_abs(-(1 << 31)) == 0
    assert kafka_abs(-5) == 5


def _java_reference(text: str) -> int:
    """The definition: s[0]*31^(n-1) + ... + s[n-1], in 32-bit two's complement."""
    total = sum(ord(c) * 31 ** (len(text) - 1 - i) for i, c in enumerate(text)) % (1 << 32)
    return total - (1 << 32) if total >= 1 << 31 else total


def test_replication_defaults_to_the_clusters_own_and_rejects_zero() -> None:
    assert Settings().kafka.replication_factor == -1
    assert KafkaSettings(replication_factor=3).replication_factor == 3
    with pytest.raises(ValueError, match=r"default\.replication\.factor"):
        KafkaSettings(replication_factor=0)


def test_check_warns_only_on_a_multi_broker_cluster() -> None:
    one_broker = SimpleNamespace(brokers={1: None}, topics={})
    assert check._replication_warnings(Settings(), {}, one_broker) == ()
    warnings = check._warnings("topic t has", 1, 1, 3)
    assert len(warnings) == 2
    assert warnings[0].startswith("warning: topic t has 1 replica(s) on a 3-broker cluster")
    assert "min.insync.replicas=1, below 2" in warnings[1]
    assert check._warnings("topic t has", 3, 2, 3) == []
