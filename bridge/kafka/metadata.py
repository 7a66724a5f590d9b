"""Cluster metadata, asked for in the one way that is safe on every broker."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError as LibKafkaError
from confluent_kafka import KafkaException as LibKafkaException
from confluent_kafka.admin import AdminClient

from bridge.errors import KafkaError
from bridge.kafka.acls import REFUSALS, refusal_line


def cluster_metadata(client: Any, config: Mapping[str, Any], timeout: float) -> Any:
    """Metadata of all topics, or a retriable `KafkaError` naming the broker within `timeout`.

    All topics, never `list_topics(name)`: a metadata request naming a topic makes some
    brokers (Kafka with auto.create.topics.enable) create it with default settings.
    """
    try:
        return client.list_topics(timeout=timeout)
    except LibKafkaException as exc:
        refusal = _refusal(client)
        if refusal is not None:  # wrong credentials: retrying cannot help
            raise KafkaError(refusal_line(config, refusal), retriable=False) from exc
        raise KafkaError(
            f"cannot reach Kafka at {config.get('bootstrap.servers', '?')} within "
            f"{timeout:.0f} s: {exc.args[0]}",
            retriable=True,
        ) from exc


def _refusal(client: Any) -> LibKafkaError | None:
    """Why the cluster did not answer, if it refused the bridge's login (an AdminClient's
    `error_cb` is served by its poll(); other clients serve theirs as they go)."""
    if isinstance(client, AdminClient):
        client.poll(0)
    return REFUSALS.latest()
