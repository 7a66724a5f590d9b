"""Schema Registry settings without a registry: subject names, credentials, TLS files,
redaction, the `mock://` registry's sharing, and an unreachable registry. What a registry
does (ids, strategies, compatibility at start) is tested against a real one in
tests/integration/test_schema_registry.py."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from bridge.app import Bridge
from bridge.config import SchemaRegistrySettings, Settings, load_settings
from bridge.errors import ConfigError
from bridge.serde.avro import SingleObjectFormat
from bridge.serde.registry import (
    RegistryFormat,
    client_config,
    redact,
    registry_client,
    subject_name,
)

EXECUTION = "polymarket.v1.dropcopy.ExecutionRecord"


def mock_settings(**extra: Any) -> SchemaRegistrySettings:
    return SchemaRegistrySettings(url=f"mock://{uuid.uuid4().hex}", **extra)


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


def test_without_url_the_bridge_uses_single_object_encoding(tmp_path: Path) -> None:
    path = tmp_path / "bridge.toml"
    path.write_text(
        'app_id = "t"\n[kafka]\nbootstrap_servers = "127.0.0.1:1"\n'
        '[dropcopy]\nendpoint = "127.0.0.1:1"\ntls = false\n'
        '[[dropcopy.streams]]\nkind = "executions"\n'
    )
    settings = load_settings(path, environ={})
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
