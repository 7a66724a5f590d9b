"""Kafka for tests: which broker to use, and small helpers to create and read topics.

The broker is chosen in this order: `KAFKA_BOOTSTRAP_SERVERS` if set, else a local Apache
Kafka started by the project (`bridge.embedded`), else testcontainers when a Docker engine
answers.
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
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

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
    futures = admin.create_topics(
        [NewTopic(name, partitions, 1, config=dict(config or {}))], request_timeout=timeout
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
