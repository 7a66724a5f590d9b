"""The bridge's schema handling against the session's real Schema Registry
(`schema_registry_url`): ids resolved once, subjects by strategy, compatibility checked at
start under the registry's level (BACKWARD), an incompatible change refused in one line,
a compatible evolution registered as the next version and read by old readers."""

from __future__ import annotations

import asyncio
import copy
import json
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from bridge.app import Bridge
from bridge.config import SchemaRegistrySettings, load_settings
from bridge.errors import ConfigError
from bridge.serde.avro import Serializer, expanded_schema
from bridge.serde.registry import (
    RegistryFormat,
    configured_topic_schemas,
    registry_client,
    schema_json,
)

EXECUTION = "polymarket.v1.dropcopy.ExecutionRecord"


@pytest.fixture
def registry(schema_registry_url: str) -> SchemaRegistrySettings:
    return SchemaRegistrySettings(url=schema_registry_url)


@pytest.fixture
def topic(unique_name: Callable[[str], str]) -> str:
    """A topic name no other test registers a subject for."""
    return unique_name("sr") + ".gaps"


def test_prefix_is_magic_and_big_endian_id_resolved_once(
    registry: SchemaRegistrySettings, topic: str
) -> None:
    fmt = RegistryFormat(registry)
    prefix = fmt.prefix(EXECUTION, topic)
    registered = registry_client(registry).get_latest_version(f"{topic}-value")
    assert prefix == b"\x00" + registered.schema_id.to_bytes(4, "big")
    assert json.loads(registered.schema.schema_str) == expanded_schema(EXECUTION)
    # Cached: no further registry calls for the same (schema, topic).
    fmt.client = None
    assert fmt.prefix(EXECUTION, topic) == prefix


@pytest.mark.parametrize("strategy", ["topic_name", "record_name", "topic_record_name"])
def test_subjects_by_strategy(registry: SchemaRegistrySettings, topic: str, strategy: str) -> None:
    subject = {
        "topic_name": f"{topic}-value",
        "record_name": "polybridge.Gap",
        "topic_record_name": f"{topic}-polybridge.Gap",
    }[strategy]
    settings = registry.model_copy(update={"subject_strategy": strategy})
    schema_id = int.from_bytes(RegistryFormat(settings).prefix("polybridge.Gap", topic)[1:], "big")
    client = registry_client(registry)
    assert subject in client.get_subjects()
    assert client.get_latest_version(subject).schema_id == schema_id


def test_without_auto_register_a_missing_schema_is_a_clear_error(
    registry: SchemaRegistrySettings, topic: str
) -> None:
    settings = registry.model_copy(update={"auto_register": False})
    with pytest.raises(
        ConfigError, match=rf"subject {topic}-value: schema polybridge\.Gap is not "
    ):
        RegistryFormat(settings).prefix("polybridge.Gap", topic)
    # Registered beforehand (e.g. `polybridge schemas register`): found by lookup.
    schema_id = registry_client(registry).register_schema(
        f"{topic}-value", Schema(schema_json("polybridge.Gap"), "AVRO")
    )
    found = RegistryFormat(settings).prefix("polybridge.Gap", topic)
    assert found == b"\x00" + schema_id.to_bytes(4, "big")


def _gap_with(field: str, type_: Any) -> dict[str, Any]:
    """The Gap schema with one field's type changed."""
    old = copy.deepcopy(expanded_schema("polybridge.Gap"))
    for f in old["fields"]:
        if f["name"] == field:
            f["type"] = type_
    return old


def _config(tmp_path: Path, url: str, prefix: str) -> Path:
    path = tmp_path / "bridge.toml"
    path.write_text(
        'app_id = "t"\n'
        f'[schema_registry]\nurl = "{url}"\n'
        # Nothing listens here: the schema check must fail before any Kafka or upstream call.
        f'[kafka]\nbootstrap_servers = "127.0.0.1:1"\ntopic_prefix = "{prefix}"\n'
        '[dropcopy]\nendpoint = "127.0.0.1:1"\ntls = false\n'
        '[dropcopy.auth]\ntoken_env = "NO_SUCH_TOKEN_ENV"\n'
        '[[dropcopy.streams]]\nkind = "executions"\n'
    )
    return path


def test_bridge_refuses_to_start_on_an_incompatible_schema_with_one_line(
    registry: SchemaRegistrySettings, tmp_path: Path, unique_name: Callable[[str], str]
) -> None:
    prefix = unique_name("srbad") + "."
    subject = f"{prefix}polybridge.gaps-value"
    # An earlier Gap whose `reason` was a long: the current schema (a string) cannot read it.
    earlier = json.dumps(_gap_with("reason", "long"))
    registry_client(registry).register_schema(subject, Schema(earlier, "AVRO"))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bridge",
            "run",
            "--config",
            str(_config(tmp_path, registry.url, prefix)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]  # earlier lines: INFO logs of other schemas
    print(last)  # the refusal as an operator sees it (pytest -rP)
    assert last.startswith(f"polybridge: error: schema registry {registry.url}: subject {subject}")
    assert "not BACKWARD compatible with version 1" in last
    assert "Gap.reason: writer type long cannot be read as string" in last
    assert "give new fields a default" in last and "new subject" in last
    assert "Traceback" not in done.stderr and done.stderr.count("error:") == 1
    assert len(registry_client(registry).get_versions(subject)) == 1


def test_the_registry_itself_refuses_what_the_bridge_refuses(
    registry: SchemaRegistrySettings, topic: str
) -> None:
    """The registry enforces BACKWARD too (the fixture sets it, as users must): with the
    bridge's own check off, registering is refused by the registry, in one clear error."""
    client = registry_client(registry)
    client.register_schema(
        f"{topic}-value", Schema(json.dumps(_gap_with("reason", "long")), "AVRO")
    )
    unchecked = registry.model_copy(update={"compatibility_check": False})
    with pytest.raises(ConfigError, match="the registry refused the schema as incompatible"):
        RegistryFormat(unchecked).prefix("polybridge.Gap", topic)


def test_compatible_evolution_is_a_new_version_that_old_readers_read(
    registry: SchemaRegistrySettings, topic: str
) -> None:
    client = registry_client(registry)
    subject = f"{topic}-value"
    # The earlier Gap had no `records`: the current one adds it, optional (default 0).
    earlier = copy.deepcopy(expanded_schema("polybridge.Gap"))
    earlier["fields"] = [f for f in earlier["fields"] if f["name"] != "records"]
    first_id = client.register_schema(subject, Schema(json.dumps(earlier), "AVRO"))
    prefix = RegistryFormat(registry).prefix("polybridge.Gap", topic)
    latest = client.get_latest_version(subject)
    assert (latest.version, len(client.get_versions(subject))) == (2, 2)
    assert latest.schema_id != first_id and prefix == b"\x00" + latest.schema_id.to_bytes(4, "big")
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    datum = {
        "stream_id": "predexon.x",
        "upstream": "predexon",
        "channel": "orders",
        "filters": "{}",
        "from_time": None,
        "to_time": moment,
        "reason": "restarted",
        "detected_at": moment,
        "status": "filled",
        "detail": "all of it",
        "records": 12,
    }
    value = Serializer("polybridge.Gap", prefix)(datum)
    context = SerializationContext(topic, MessageField.VALUE)
    old_reader = AvroDeserializer(registry_client(registry), schema_str=json.dumps(earlier))
    assert old_reader(value, context) == {k: v for k, v in datum.items() if k != "records"}
    assert AvroDeserializer(registry_client(registry))(value, context) == datum


def test_prepare_registers_every_configured_topic_before_any_record(
    registry: SchemaRegistrySettings, tmp_path: Path, unique_name: Callable[[str], str]
) -> None:
    prefix = unique_name("srprep") + "."
    settings = load_settings(_config(tmp_path, registry.url, prefix), environ={})
    bridge = Bridge(settings)
    with pytest.raises(Exception):  # noqa: B017 - Kafka is unreachable: after the registry
        asyncio.run(bridge.prepare())
    subjects = {s for s in registry_client(registry).get_subjects() if s.startswith(prefix)}
    assert subjects == {f"{t}-value" for _, t in configured_topic_schemas(settings)}
    assert {t for _, t in configured_topic_schemas(settings)} == {s.name for s in bridge.topics()}
