"""Schema Registry wire format against confluent-kafka's mock registry (no Kafka needed):
ids resolved once, subjects by strategy, startup checks, credentials and configuration."""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import Schema

from bridge import cli
from bridge.app import Bridge
from bridge.config import SchemaRegistrySettings, Settings, load_settings
from bridge.errors import ConfigError
from bridge.serde.avro import SingleObjectFormat, expanded_schema
from bridge.serde.registry import (
    RegistryFormat,
    client_config,
    configured_topic_schemas,
    redact,
    registry_client,
    schema_json,
    subject_name,
)

EXECUTION = "polymarket.v1.dropcopy.ExecutionRecord"


def mock_settings(**extra: Any) -> SchemaRegistrySettings:
    return SchemaRegistrySettings(url=f"mock://{uuid.uuid4().hex}", **extra)


def test_prefix_is_magic_and_big_endian_id_resolved_once() -> None:
    fmt = RegistryFormat(mock_settings())
    prefix = fmt.prefix(EXECUTION, "t.executions")
    client = fmt.client
    registered = client.get_latest_version("t.executions-value")
    assert prefix == b"\x00" + registered.schema_id.to_bytes(4, "big")
    assert json.loads(registered.schema.schema_str) == expanded_schema(EXECUTION)
    # Cached: no further registry calls for the same (schema, topic).
    client.lookup_schema = client.register_schema = None
    assert fmt.prefix(EXECUTION, "t.executions") == prefix


def test_the_same_mock_url_is_one_registry_in_the_process() -> None:
    settings = mock_settings()
    a = RegistryFormat(settings).prefix("polybridge.Gap", "gaps")
    b = RegistryFormat(settings).prefix("polybridge.Gap", "gaps")
    assert a == b and registry_client(settings) is registry_client(settings)


@pytest.mark.parametrize(
    ("strategy", "subject"),
    [
        ("topic_name", "t.x-value"),
        ("record_name", "polybridge.Gap"),
        ("topic_record_name", "t.x-polybridge.Gap"),
    ],
)
def test_subject_name_strategies(strategy: str, subject: str) -> None:
    assert subject_name(strategy, "t.x", "polybridge.Gap") == subject
    fmt = RegistryFormat(mock_settings(subject_strategy=strategy))
    fmt.prefix("polybridge.Gap", "t.x")
    assert fmt.client.get_subjects() == [subject]


def test_without_auto_register_a_missing_schema_is_a_clear_error() -> None:
    settings = mock_settings(auto_register=False)
    with pytest.raises(ConfigError, match=r"subject t\.x-value: schema polybridge\.Gap is not "):
        RegistryFormat(settings).prefix("polybridge.Gap", "t.x")
    # Registered beforehand (e.g. `polybridge schemas register`): found by lookup.
    schema_id = registry_client(settings).register_schema(
        "t.x-value", Schema(schema_json("polybridge.Gap"), "AVRO")
    )
    assert RegistryFormat(settings).prefix("polybridge.Gap", "t.x") == b"\x00" + schema_id.to_bytes(
        4, "big"
    )


def _register_incompatible_predecessor(settings: SchemaRegistrySettings, subject: str) -> int:
    """Register an 'earlier' Gap schema that the current one cannot read: it lacks nothing
    but carries a required field the current schema does not have... and a type the current
    schema narrows (`from_time` written as a string)."""
    old = copy.deepcopy(expanded_schema("polybridge.Gap"))
    for f in old["fields"]:
        if f["name"] == "reason":
            f["type"] = "long"  # the current schema reads `reason` as a string: refused
    client = registry_client(settings)
    return int(client.register_schema(subject, Schema(json.dumps(old), "AVRO")))


def test_incompatible_change_is_refused_with_subject_reason_and_advice() -> None:
    settings = mock_settings()
    _register_incompatible_predecessor(settings, "t.gaps-value")
    with pytest.raises(ConfigError) as caught:
        RegistryFormat(settings).prefix("polybridge.Gap", "t.gaps")
    message = str(caught.value)
    assert "subject t.gaps-value" in message
    assert "not BACKWARD compatible with version 1" in message
    assert "Gap.reason: writer type long cannot be read as string" in message
    assert "give new fields a default" in message and "new subject" in message
    # With the check turned off the mock registry (which enforces nothing) accepts it.
    unchecked = settings.model_copy(update={"compatibility_check": False})
    assert RegistryFormat(unchecked).prefix("polybridge.Gap", "t.gaps")[:1] == b"\x00"


def test_compatible_new_version_is_registered_as_the_next_version() -> None:
    settings = mock_settings()
    old = copy.deepcopy(expanded_schema("polybridge.Gap"))
    old["fields"] = [f for f in old["fields"] if "default" not in f or f["name"] != "detected_at"]
    client = registry_client(settings)
    client.register_schema("t.gaps-value", Schema(json.dumps(old), "AVRO"))
    RegistryFormat(settings).prefix("polybridge.Gap", "t.gaps")
    assert len(client.get_versions("t.gaps-value")) in (1, 2)


def _config(tmp_path: Path, url: str, extra: str = "") -> Path:
    path = tmp_path / "bridge.toml"
    path.write_text(
        'app_id = "t"\n'
        f'[schema_registry]\nurl = "{url}"\n{extra}\n'
        # Nothing listens here: the schema check must fail before any Kafka or upstream call.
        '[kafka]\nbootstrap_servers = "127.0.0.1:1"\ntopic_prefix = "t."\n'
        '[dropcopy]\nendpoint = "127.0.0.1:1"\ntls = false\n'
        '[dropcopy.auth]\ntoken_env = "NO_SUCH_TOKEN_ENV"\n'
        '[[dropcopy.streams]]\nkind = "executions"\n'
    )
    return path


def test_bridge_run_refuses_an_incompatible_schema_at_startup_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # In-process on purpose: mock:// registries live in one process, so the incompatible
    # earlier version must be registered in the same process as the bridge.
    url = f"mock://{uuid.uuid4().hex}"
    _register_incompatible_predecessor(SchemaRegistrySettings(url=url), "t.polybridge.gaps-value")
    code = cli.main(["run", "--config", str(_config(tmp_path, url))])
    err = capsys.readouterr().err
    assert code == 2
    last = err.splitlines()[-1]  # earlier lines: INFO logs of the schemas registered first
    assert last.startswith("polybridge: error: schema registry mock://")
    assert "subject t.polybridge.gaps-value" in last and "not BACKWARD compatible" in last
    assert "Traceback" not in err and err.count("error:") == 1


def test_prepare_registers_every_configured_topic_before_any_record(tmp_path: Path) -> None:
    url = f"mock://{uuid.uuid4().hex}"
    settings = load_settings(_config(tmp_path, url), environ={})
    bridge = Bridge(settings)
    fmt = bridge._format
    assert isinstance(fmt, RegistryFormat)
    with pytest.raises(Exception):  # noqa: B017 - Kafka is unreachable: after the registry
        asyncio.run(bridge.prepare())
    subjects = set(fmt.client.get_subjects())
    assert subjects == {f"{t}-value" for _, t in configured_topic_schemas(settings)}
    assert {t for _, t in configured_topic_schemas(settings)} == {s.name for s in bridge.topics()}


def test_without_url_the_bridge_uses_single_object_encoding(tmp_path: Path) -> None:
    settings = load_settings(_config(tmp_path, ""), environ={})
    assert isinstance(Bridge(settings)._format, SingleObjectFormat)


def test_example_configuration_lists_the_registry_defaults() -> None:
    example = Path(__file__).resolve().parents[2] / "bridge.example.toml"
    settings = load_settings(example, environ={})
    assert settings.schema_registry == SchemaRegistrySettings()
    assert settings == Settings()


def test_basic_auth_from_env_or_file_and_tls_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SR_AUTH", "alice:s3cret")
    conf = client_config(
        SchemaRegistrySettings(url="https://sr:8081", basic_auth_user_info_env="SR_AUTH")
    )
    assert conf["basic.auth.user.info"] == "alice:s3cret"
    secret = tmp_path / "auth"
    secret.write_text("bob:pw\n")
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    conf = client_config(
        SchemaRegistrySettings(
            url="https://sr:8081",
            basic_auth_user_info_env="SR_AUTH",
            basic_auth_user_info_file=str(secret),
            ca_file=str(ca),
        )
    )
    assert conf["basic.auth.user.info"] == "bob:pw" and conf["ssl.ca.location"] == str(ca)
    with pytest.raises(ConfigError, match=r"schema_registry\.cert_file /nope: no such file"):
        client_config(SchemaRegistrySettings(url="https://sr", cert_file="/nope"))
    monkeypatch.delenv("SR_AUTH")
    with pytest.raises(ConfigError, match="SR_AUTH is not set") as caught:
        client_config(SchemaRegistrySettings(url="https://sr", basic_auth_user_info_env="SR_AUTH"))
    assert "s3cret" not in str(caught.value)


def test_credentials_in_the_url_are_never_shown() -> None:
    assert redact("https://user:pw@sr.example:8081/x") == "https://sr.example:8081/x"
    assert redact("mock://abc") == "mock://abc"


def test_unreachable_registry_is_a_kafka_error_naming_the_url_not_the_credentials() -> None:
    from bridge.errors import KafkaError

    settings = SchemaRegistrySettings(url="http://u:topsecret@127.0.0.1:1")
    with pytest.raises(KafkaError) as caught:
        RegistryFormat(settings).prefix("polybridge.Gap", "t.gaps")
    assert "http://127.0.0.1:1" in str(caught.value) and "topsecret" not in str(caught.value)
