"""Shared fixtures. Kafka helpers live in `tests/kafka_fixture.py`; keep this file thin."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import pytest

from tests import kafka_fixture, registry_fixture
from tests.kafka_fixture import KafkaTarget, Row


@pytest.fixture(scope="session")
def kafka_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaTarget]:
    """The broker for this test session (see `kafka_fixture.kafka_target` for the order)."""
    with kafka_fixture.kafka_target(str(tmp_path_factory.mktemp("kafka"))) as target:
        yield target


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_target: KafkaTarget) -> str:
    """`bootstrap.servers` of the session's broker."""
    return kafka_target.bootstrap_servers


@pytest.fixture(scope="session")
def schema_registry_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Schema Registry for this test session (see `registry_fixture.schema_registry`)."""
    with registry_fixture.schema_registry(str(tmp_path_factory.mktemp("registry"))) as url:
        yield url


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """Factory: `unique_name("state")` -> "state-3f9a..." (never collides across tests)."""
    return kafka_fixture.unique


@pytest.fixture
def make_topic(kafka_bootstrap: str) -> Callable[..., str]:
    """Factory: `make_topic(partitions=3, config={...})` creates a uniquely named topic."""

    def make(
        name: str | None = None, partitions: int = 1, config: Mapping[str, str] | None = None
    ) -> str:
        return kafka_fixture.create_topic(
            kafka_bootstrap, name or kafka_fixture.unique("topic"), partitions, config
        )

    return make


@pytest.fixture
def read_topic(kafka_bootstrap: str) -> Callable[[str], list[Row]]:
    """Reads a whole topic read_committed: [(key, value, headers, partition, offset)]."""
    return lambda topic: kafka_fixture.read_all(kafka_bootstrap, topic)


_FIRST = {"fault": 0, "integration": 1, "unit": 2}


def _seconds(item: pytest.Item) -> float:
    """A long test's typical duration under `make test`: `@pytest.mark.slow(seconds)`."""
    marker = item.get_closest_marker("slow")
    return float(marker.args[0]) if marker is not None and marker.args else 0.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest first: the tests marked slow by their duration, then fault, integration and
    unit tests. `make test` runs on several workers and lasts as long as its busiest one:
    handing out the long tests first (one to each worker) lets the short ones fill the gaps
    instead of one long test trailing at the end."""
    items.sort(key=lambda item: (-_seconds(item), _FIRST.get(item.path.parent.name, 1)))
