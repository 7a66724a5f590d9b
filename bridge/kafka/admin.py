"""Topics: create what is missing with the right config, refuse a non-compacted state topic."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError as LibKafkaError
from confluent_kafka import KafkaException as LibKafkaException
from confluent_kafka import TopicCollection

# Public API, re-exported without __all__ in confluent-kafka's stubs.
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ConfigResource,
    NewPartitions,
    NewTopic,
    ResourceType,
)

from bridge.errors import ConfigError, KafkaError
from bridge.kafka.acls import REFUSALS, denied, is_denied
from bridge.kafka.client_log import client_log_config
from bridge.kafka.metadata import cluster_metadata

log = logging.getLogger(__name__)

ADMIN_TIMEOUT_S = 10.0
"""Bound for each admin request; also how long an unreachable cluster takes to report."""

_RETRY_S = 0.1


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic the bridge needs, with the config it creates it with."""

    name: str
    partitions: int = 1
    replication_factor: int = -1
    """-1: the cluster's `default.replication.factor`."""
    config: Mapping[str, str] = field(default_factory=dict)


def _admin(config: Mapping[str, Any]) -> AdminClient:
    conf: dict[str, Any] = {
        k: v
        for k, v in config.items()
        if not k.startswith(("transactional.", "linger.", "isolation.", "group."))
    }
    # Refused credentials reach only error_cb: noted for the error line (`cluster_metadata`).
    conf["error_cb"] = REFUSALS.note
    return AdminClient({**conf, **client_log_config(conf)})


def _existing(admin: AdminClient, config: Mapping[str, Any]) -> set[str]:
    return set(cluster_metadata(admin, config, ADMIN_TIMEOUT_S).topics)


def ensure_topics(config: Mapping[str, Any], specs: Iterable[TopicSpec]) -> list[str]:
    """Create the topics of `specs` that do not exist yet; the names created.

    A topic created concurrently by someone else (TOPIC_ALREADY_EXISTS) counts as existing.
    Existing topics are left as they are (see `check_state_topic` for the state topic).
    """
    admin = _admin(config)
    existing = _existing(admin, config)
    wanted = [s for s in specs if s.name not in existing]
    if not wanted:
        return []
    futures = admin.create_topics(
        [
            NewTopic(s.name, s.partitions, s.replication_factor, config=dict(s.config))
            for s in wanted
        ],
        request_timeout=ADMIN_TIMEOUT_S,
    )
    created: list[str] = []
    for name, future in futures.items():
        try:
            future.result(timeout=ADMIN_TIMEOUT_S)
        except LibKafkaException as exc:
            err: LibKafkaError = exc.args[0]
            if err.code() == LibKafkaError.TOPIC_ALREADY_EXISTS:
                continue
            if is_denied(err):
                raise KafkaError(
                    denied(config, err, "CREATE", f"creating topic {name}", name)
                ) from exc
            raise KafkaError(f"cannot create topic {name}: {err.str()}") from exc
        created.append(name)
        log.info("topic created topic=%s", name)
    return created


def topic_config(config: Mapping[str, Any], name: str) -> dict[str, str]:
    """The effective config of topic `name` (describe_configs)."""
    return topic_configs(config, [name])[name]


def topic_configs(config: Mapping[str, Any], names: Iterable[str]) -> dict[str, dict[str, str]]:
    """The effective config of each topic of `names`, in one describe_configs request."""
    return _describe(config, [ConfigResource(ResourceType.TOPIC, name) for name in names])


def broker_config(config: Mapping[str, Any], broker_id: int) -> dict[str, str]:
    """The effective config of broker `broker_id`: the defaults of topics created without
    their own (default.replication.factor, min.insync.replicas)."""
    return _describe(config, [ConfigResource(ResourceType.BROKER, str(broker_id))])[str(broker_id)]


def _describe(
    config: Mapping[str, Any], resources: list[ConfigResource]
) -> dict[str, dict[str, str]]:
    if not resources:
        return {}
    admin = _admin(config)
    found: dict[str, dict[str, str]] = {}
    current = resources[0]
    try:
        result = admin.describe_configs(resources, request_timeout=ADMIN_TIMEOUT_S)
        for current, future in result.items():
            resource = current
            entries = future.result(timeout=ADMIN_TIMEOUT_S)
            found[resource.name] = {
                k: str(v.value) for k, v in entries.items() if v.value is not None
            }
    except LibKafkaException as exc:
        names = ", ".join(r.name for r in resources)
        err: LibKafkaError = exc.args[0]
        if is_denied(err):
            raise KafkaError(
                denied(config, err, "DESCRIBE_CONFIGS", f"describing {names}", current.name)
            ) from exc
        raise KafkaError(f"cannot describe {names}: {exc.args[0]}", retriable=True) from exc
    return found


STATE_SEGMENT_MS = 600_000
"""The state topic's segments roll every 10 minutes. Compaction only cleans closed
segments, and a stream commits its position up to twice a second: with Kafka's default
(7 days, or 1 GiB) every start would read a week of positions (93,000 records after 22
minutes of a soak with six streams, and the start's memory grew with them)."""

STATE_TOPIC_CONFIG = {"cleanup.policy": "compact", "segment.ms": str(STATE_SEGMENT_MS)}
"""What the bridge creates its state topic with."""


def check_state_topic(config: Mapping[str, Any], name: str) -> None:
    """Refuse a state topic that is not compacted, or has several partitions; warn about one
    whose segments roll so rarely that compaction falls far behind. The topic must exist
    (`ensure_topics` has just created it if it did not)."""
    meta = _created_topic(config, name)
    configs = topic_config(config, name)
    policy = configs.get("cleanup.policy", "delete")
    if "compact" not in {p.strip() for p in policy.split(",")}:
        raise ConfigError(
            f"state topic {name} has cleanup.policy={policy}; polybridge needs compact, or the "
            f"broker eventually deletes the positions of quiet streams. Fix it with "
            f"`kafka-configs --alter --entity-type topics --entity-name {name} "
            f"--add-config cleanup.policy=compact`, or configure another state topic name "
            f"and let polybridge create it"
        )
    if len(meta.partitions) != 1:
        raise ConfigError(
            f"state topic {name} has {len(meta.partitions)} partitions; polybridge needs "
            "exactly 1 (positions are read back in commit order). Use another state topic name"
        )
    segment_ms = int(configs.get("segment.ms", STATE_SEGMENT_MS))
    if segment_ms > 6 * STATE_SEGMENT_MS:
        log.warning(
            "state topic %s rolls its segments every %.1f h (segment.ms=%d): compaction only "
            "cleans closed segments, so each start reads every position committed since. "
            "Set `kafka-configs --alter --entity-type topics --entity-name %s --add-config "
            "segment.ms=%d`",
            name,
            segment_ms / 3.6e6,
            segment_ms,
            name,
            STATE_SEGMENT_MS,
        )
    check_access(config, name, ("READ", "WRITE"))


def _created_topic(config: Mapping[str, Any], name: str) -> Any:
    """Topic `name`'s metadata, asked again every 0.1 s within ADMIN_TIMEOUT_S while the
    broker has not heard of it: metadata trails a creation, and a check that took "not there
    yet" for "nothing to check" let a bridge without DESCRIBE_CONFIGS start (seen in CI)."""
    admin = _admin(config)
    deadline = time.monotonic() + ADMIN_TIMEOUT_S
    while True:
        meta = cluster_metadata(admin, config, ADMIN_TIMEOUT_S).topics.get(name)
        if meta is not None and meta.error is None:
            return meta
        if time.monotonic() + _RETRY_S > deadline:
            raise KafkaError(
                f"topic {name} is not in the cluster's metadata {ADMIN_TIMEOUT_S:.0f} s after "
                f"its creation ({meta.error if meta is not None else 'unknown topic'})",
                retriable=True,
            )
        time.sleep(_RETRY_S)


def check_access(config: Mapping[str, Any], name: str, operations: Iterable[str]) -> None:
    """Refuse, with the line naming the ACL to grant, a topic on which the bridge may not
    do each of `operations`: at start, not at the first transaction, where a missing WRITE
    can surface as records purged from a failed transaction instead of its cause."""
    for operation in missing_operations(config, name, operations):
        missing = LibKafkaError(LibKafkaError.TOPIC_AUTHORIZATION_FAILED)
        raise KafkaError(denied(config, missing, operation, f"using topic {name}", name))


def missing_operations(
    config: Mapping[str, Any], name: str, operations: Iterable[str]
) -> list[str]:
    """Which of `operations` Kafka does not authorize the bridge to do on topic `name`
    (the operations it authorizes for the caller, KIP-430); none when it does not say."""
    admin = _admin(config)
    future = admin.describe_topics(
        TopicCollection([name]),
        include_authorized_operations=True,
        request_timeout=ADMIN_TIMEOUT_S,
    )[name]
    try:
        found = future.result(timeout=ADMIN_TIMEOUT_S).authorized_operations
    except LibKafkaException as exc:
        err: LibKafkaError = exc.args[0]
        if is_denied(err):  # not even Describe, which READ and WRITE imply
            raise KafkaError(denied(config, err, "READ", f"using topic {name}", name)) from exc
        raise KafkaError(f"cannot describe topic {name}: {err.str()}", retriable=True) from exc
    if found is None:
        return []  # the broker does not say (authorization off, or too old to tell)
    allowed = {operation.name for operation in found}
    return [op for op in operations if op not in allowed and "ALL" not in allowed]


def ensure_partitions(config: Mapping[str, Any], name: str, count: int) -> None:
    """Grow topic `name` to at least `count` partitions (Kafka never shrinks one)."""
    admin = _admin(config)
    meta = cluster_metadata(admin, config, ADMIN_TIMEOUT_S).topics.get(name)
    if meta is None or meta.error is not None or len(meta.partitions) >= count:
        return
    future = admin.create_partitions([NewPartitions(name, count)], request_timeout=ADMIN_TIMEOUT_S)[
        name
    ]
    try:
        future.result(timeout=ADMIN_TIMEOUT_S)
    except LibKafkaException as exc:
        err: LibKafkaError = exc.args[0]
        if err.code() != LibKafkaError.INVALID_PARTITIONS:  # grown concurrently: fine
            raise KafkaError(f"cannot add partitions to {name}: {err.str()}") from exc
    log.info("topic grown topic=%s partitions=%d", name, count)
