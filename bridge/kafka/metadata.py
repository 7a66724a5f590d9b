"""Cluster metadata, asked for in the one way that is safe on every broker."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaException as LibKafkaException

from bridge.errors import KafkaError


def cluster_metadata(client: Any, config: Mapping[str, Any], timeout: float) -> Any:
    """Metadata of all topics, or a retriable `KafkaError` naming the broker within `timeout`.

    All topics, never `list_topics(name)`: a metadata request naming a topic makes some
    brokers (Kafka with auto.create.topics.enable) create it with default settings.
    """
    try:
        return client.list_topics(timeout=timeout)
    except LibKafkaException as exc:
        raise KafkaError(
            f"cannot reach Kafka at {config.get('bootstrap.servers', '?')} within "
            f"{timeout:.0f} s: {exc.args[0]}",
            retriable=True,
        ) from exc
