"""Kafka for tests: which broker to use, and small helpers to create and read topics.

The broker is chosen in this order: `KAFKA_BOOTSTRAP_SERVERS` if set, else a local Apache
Kafka started by the project (`bridge.embedded`), else testcontainers when a Docker engine
answers. `kafka_cluster()` starts a local three-node cluster for the failover tests, and
the topology helpers below say which node leads a partition, coordinates a transactional
id or a consumer group, and when every replica is back in sync.
The read helper here is deliberately independent of `bridge.kafka.readback` (it is the
oracle those tests compare against): read_committed, `assign()`, and the end taken from the
end that fetch responses report (librdkafka's partition-EOF event, backed by the cached
high watermark `get_watermark_offsets(cached=True)`), never from ListOffsets alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

if TYPE_CHECKING:
    from bridge.embedded import EmbeddedCluster

log = logging.getLogger(__name__)

DOCKER_PING_TIMEOUT_S = 2
"""A Docker engine that does not answer within this is treated as absent."""

READ_TIMEOUT_S = 20.0

Row = tuple[bytes | None, bytes | None, list[tuple[str, bytes]], int, int]
"""(key, value, headers, partition, offset)."""


@dataclass(frozen=True)
class KafkaTarget:
    bootstrap_servers: str
    kind: str
    """"external" (KAFKA_BOOTSTRAP_SERVERS), "local" (Apache Kafka started by the project)
    or "container" (testcontainers)."""


def _docker_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env(timeout=DOCKER_PING_TIMEOUT_S)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


@contextlib.contextmanager
def kafka_target(log_dir: str | None = None) -> Iterator[KafkaTarget]:
    """The Kafka the tests run against, for as long as the context lasts."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield KafkaTarget(external, "external")
        return
    from bridge.embedded import EmbeddedBroker
    from bridge.errors import BridgeError

    log_path = os.path.join(log_dir, "kafka.log") if log_dir else None
    try:
        broker = EmbeddedBroker(log_path=log_path).start()
    except BridgeError as exc:
        if not _docker_answers():
            raise
        log.warning("local Apache Kafka unavailable (%s); using testcontainers", exc)
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer() as container:
            yield KafkaTarget(container.get_bootstrap_server(), "container")
        return
    try:
        yield KafkaTarget(broker.bootstrap_servers, "local")
    finally:
        broker.stop()


@contextlib.contextmanager
def kafka_cluster(log_dir: str | os.PathLike[str], nodes: int = 3) -> Iterator[EmbeddedCluster]:
    """A local KRaft cluster of `nodes` nodes (replication factor 3, min.insync.replicas 2),
    each node's log in `log_dir/kafka-<node>.log`; stopped and deleted afterwards. Always
    the project's own Apache Kafka: the tests that use it kill its nodes."""
    from bridge.embedded import EmbeddedCluster

    cluster = EmbeddedCluster(nodes, log_dir=Path(log_dir)).start()
    try:
        yield cluster
    finally:
        cluster.stop()


def unique(prefix: str = "t") -> str:
    """A name no other test (or test run against a shared cluster) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def create_topic(
    bootstrap: str,
    name: str,
    partitions: int = 1,
    config: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> str:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    # Replication factor -1: the broker's default (1 on one node, 3 on a cluster).
    futures = admin.create_topics(
        [NewTopic(name, partitions, -1, config=dict(config or {}))], request_timeout=timeout
    )
    for future in futures.values():
        future.result(timeout=timeout)
    # Wait until metadata shows every partition with a leader, so producers do not race it.
    deadline = time.monotonic() + timeout
    while True:
        md = admin.list_topics(name, timeout=timeout).topics.get(name)
        if (
            md is not None
            and md.error is None
            and len(md.partitions) == partitions
            and all(p.leader >= 0 for p in md.partitions.values())
        ):
            return name
        if time.monotonic() > deadline:
            raise TimeoutError(f"topic {name} not ready within {timeout} s")
        time.sleep(0.05)


def read_all(
    bootstrap: str,
    topic: str,
    timeout: float = READ_TIMEOUT_S,
    isolation: str = "read_committed",
) -> list[Row]:
    """Every committed record of `topic` (every record with `read_uncommitted`), in
    partition then offset order."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": unique("reader"),
            "enable.auto.commit": False,
            "isolation.level": isolation,
            # EOF is raised when the fetch position reaches the end a fetch response
            # reported (the LSO for read_committed: the cached watermark is the HW).
            "enable.partition.eof": True,
            "log_level": 3,
        }
    )
    try:
        md = consumer.list_topics(topic, timeout=timeout).topics[topic]
        parts = sorted(md.partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        rows: dict[int, list[Row]] = {p: [] for p in parts}
        done: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(done) < len(parts):
            if time.monotonic() > deadline:
                stuck = [TopicPartition(topic, p) for p in parts if p not in done]
                where = [
                    f"[{tp.partition}] at {tp.offset} of "
                    f"{consumer.get_watermark_offsets(tp, cached=True)[1]}"
                    for tp in consumer.position(stuck)
                ]
                raise TimeoutError(f"reading {topic}: unfinished {', '.join(where)}")
            for msg in consumer.consume(1000, 0.2):
                part, offset = msg.partition(), msg.offset()
                assert part is not None and offset is not None
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        done.add(part)
                    continue
                headers: Any = msg.headers() or []
                rows[part].append((msg.key(), msg.value(), list(headers), part, offset))
                done.discard(part)
            # Backstop: the fetch position at the fetch-reported high watermark is the end.
            for tp in consumer.position([TopicPartition(topic, p) for p in parts]):
                _, high = consumer.get_watermark_offsets(tp, cached=True)
                if high >= 0 and tp.offset >= high:
                    done.add(tp.partition)
        return [r for p in parts for r in rows[p]]
    except KafkaException as exc:
        raise RuntimeError(f"reading {topic}: {exc}") from exc
    finally:
        consumer.close()


# -- cluster topology ------------------------------------------------------------------


def _topology_admin(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})


def java_string_hash(text: str) -> int:
    """Java's `String.hashCode()`: 31-polynomial over the UTF-16 code units, 32-bit signed."""
    code = 0
    data = text.encode("utf-16-be")
    for i in range(0, len(data), 2):
        code = (31 * code + int.from_bytes(data[i : i + 2], "big")) & 0xFFFFFFFF
    return code - (1 << 32) if code >= 1 << 31 else code


def kafka_abs(value: int) -> int:
    """Kafka's `Utils.abs`: `Math.abs`, except that Integer.MIN_VALUE maps to 0."""
    return 0 if value == -(1 << 31) else abs(value)


def partition_leader(bootstrap: str, topic: str, partition: int, timeout: float = 10.0) -> int:
    """The node id leading `topic`[`partition`] (-1 while it has none)."""
    md = _topology_admin(bootstrap).list_topics(topic, timeout=timeout).topics[topic]
    return int(md.partitions[partition].leader)


def transaction_coordinator(bootstrap: str, transactional_id: str, timeout: float = 10.0) -> int:
    """The node coordinating `transactional_id`: the leader of its `__transaction_state`
    partition, `Utils.abs(transactionalId.hashCode) % partitions` (Kafka's
    TransactionStateManager.partitionFor)."""
    topic = "__transaction_state"
    md = _topology_admin(bootstrap).list_topics(topic, timeout=timeout).topics[topic]
    if md.error is not None or not md.partitions:
        raise RuntimeError(f"{topic} not found: {md.error}")
    partition = kafka_abs(java_string_hash(transactional_id)) % len(md.partitions)
    return int(md.partitions[partition].leader)


def group_coordinator(bootstrap: str, group_id: str, timeout: float = 30.0) -> int:
    """The node coordinating consumer group `group_id` (DescribeGroups names it). Asked
    again until `timeout` while the group's coordinator is moving or loading."""
    admin = _topology_admin(bootstrap)
    deadline = time.monotonic() + timeout
    while True:
        try:
            futures = admin.describe_consumer_groups([group_id], request_timeout=5)
            return int(futures[group_id].result(timeout=10).coordinator.id)
        except (KafkaException, TimeoutError) as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no coordinator for group {group_id}: {exc!r}") from exc
        time.sleep(0.2)


def wait_in_sync(bootstrap: str, brokers: int, timeout: float = 60.0) -> None:
    """Wait until the metadata shows `brokers` brokers and every partition of every topic
    (internal ones included) has a leader and all its replicas in sync: after a node
    restarts, the point from which another node can be killed without a partition falling
    below min.insync.replicas."""
    admin = _topology_admin(bootstrap)
    deadline = time.monotonic() + timeout
    behind: list[str] = []
    while True:
        try:
            md = admin.list_topics(timeout=5)
            behind = [
                f"{t.topic}[{p.id}] leader {p.leader} isr {sorted(p.isrs)} of {sorted(p.replicas)}"
                for t in md.topics.values()
                for p in t.partitions.values()
                if p.leader < 0 or set(p.isrs) != set(p.replicas)
            ]
            if len(md.brokers) == brokers and not behind:
                return
            if len(md.brokers) != brokers:
                behind.insert(0, f"{len(md.brokers)} of {brokers} brokers")
        except KafkaException as exc:
            behind = [str(exc)]
        if time.monotonic() > deadline:
            raise TimeoutError(f"cluster not in sync within {timeout} s: {behind[:5]}")
        time.sleep(0.2)
