"""Confluent Schema Registry wire format: `00` + 4-byte big-endian schema id + Avro body.

`RegistryFormat` implements `WireFormat` like `SingleObjectFormat`: `prefix(schema, topic)`
returns ready-made bytes, so the per-record cost is the same as single-object encoding.
Schema ids are resolved once per (schema, topic) — at startup, by `prepare()`, for every
topic the bridge writes — and cached.

Resolving one (schema, topic):
1. the subject, by the configured strategy: `topic_name` -> `<topic>-value`, `record_name`
   -> `<record full name>`, `topic_record_name` -> `<topic>-<record full name>`;
2. the schema is registered as one self-contained schema: `expanded_schema(name)`, other
   files' named types inlined (no schema references: simplest, and every client reads it);
3. when it is not registered under the subject yet and `compatibility_check` is on, it is
   checked against the subject's versions under the subject's compatibility level (our
   own checker, `bridge.serde.compat`, plus the registry's verdict when it has one): an
   incompatible change is refused with the subject, the reasons and what to do;
4. `auto_register`: register (idempotent: an identical schema keeps its id); otherwise look
   it up, and a missing schema is a `ConfigError` saying how to register it.

Registry errors are translated here, at one boundary: bad configuration or a refused
schema -> `ConfigError`; an unreachable or failing registry -> `KafkaError`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bridge.config import SchemaRegistrySettings, Settings
from bridge.errors import ConfigError, KafkaError
from bridge.serde import compat
from bridge.serde.avro import CONFLUENT_MAGIC, SingleObjectFormat, WireFormat, expanded_schema

log = logging.getLogger(__name__)

DEFAULT_LEVEL = "BACKWARD"
"""The registry's own default compatibility level, used when it does not tell us one."""

_MOCK_CLIENTS: dict[str, Any] = {}
"""`mock://` registries by URL. confluent-kafka gives every mock client its own store; one
client per URL makes a mock registry shared within the process, like a real one."""


def redact(url: str) -> str:
    """The URL without any `user:password@` part, for messages and logs."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _user_info(settings: SchemaRegistrySettings) -> str:
    """`user:password` from the configured file or environment variable ("" when neither)."""
    if settings.basic_auth_user_info_file:
        try:
            return Path(settings.basic_auth_user_info_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"schema_registry.basic_auth_user_info_file "
                f"{settings.basic_auth_user_info_file}: cannot read it ({exc.strerror})"
            ) from None
    if settings.basic_auth_user_info_env:
        value = os.environ.get(settings.basic_auth_user_info_env, "").strip()
        if not value:
            raise ConfigError(
                f"schema_registry.basic_auth_user_info_env: environment variable "
                f"{settings.basic_auth_user_info_env} is not set (expected user:password)"
            )
        return value
    return ""


def client_config(settings: SchemaRegistrySettings) -> dict[str, Any]:
    """The `SchemaRegistryClient` configuration (holds the credentials: never log it)."""
    if not settings.url:
        raise ConfigError("schema_registry.url is empty: no registry configured")
    conf: dict[str, Any] = {"url": settings.url}
    user_info = _user_info(settings)
    if user_info:
        conf["basic.auth.user.info"] = user_info
    for key, path in (
        ("ssl.ca.location", settings.ca_file),
        ("ssl.certificate.location", settings.cert_file),
        ("ssl.key.location", settings.key_file),
    ):
        if path:
            if not Path(path).is_file():
                name = {"ssl.ca.location": "ca_file", "ssl.certificate.location": "cert_file"}
                raise ConfigError(
                    f"schema_registry.{name.get(key, 'key_file')} {path}: no such file"
                )
            conf[key] = path
    return conf


def registry_client(settings: SchemaRegistrySettings) -> Any:
    """A `SchemaRegistryClient` for the settings (the shared mock one for `mock://` URLs)."""
    try:
        from confluent_kafka.schema_registry import SchemaRegistryClient
    except ImportError as exc:  # the [schemaregistry] extra brings httpx, authlib, ...
        raise ConfigError(
            "schema_registry.url is set but confluent-kafka's schema registry client cannot "
            f"be imported ({exc}); install 'confluent-kafka[schemaregistry]'"
        ) from None
    conf = client_config(settings)
    if settings.url.startswith("mock://"):
        if settings.url not in _MOCK_CLIENTS:
            _MOCK_CLIENTS[settings.url] = SchemaRegistryClient.new_client(conf)
        return _MOCK_CLIENTS[settings.url]
    try:
        return SchemaRegistryClient(conf)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"schema_registry: {exc}") from None


def is_mock(client: Any) -> bool:
    return type(client).__name__ == "MockSchemaRegistryClient"


def subject_name(strategy: str, topic: str, schema_name: str) -> str:
    """The subject a topic's value schema lives under, by subject name strategy."""
    if strategy == "topic_name":
        return f"{topic}-value"
    if strategy == "record_name":
        return schema_name
    if strategy == "topic_record_name":
        return f"{topic}-{schema_name}"
    raise ConfigError(
        f"schema_registry.subject_strategy {strategy!r}: use topic_name, record_name or "
        "topic_record_name"
    )


def schema_json(schema_name: str) -> str:
    """The text registered for a schema: self-contained (other files' types inlined)."""
    return json.dumps(expanded_schema(schema_name), separators=(",", ":"))


def _registry_error(exc: Exception) -> tuple[int, int, str] | None:
    """(HTTP status, registry error code, message) of a registry error, else None."""
    status = getattr(exc, "http_status_code", None)
    code = getattr(exc, "error_code", None)
    if isinstance(status, int) and isinstance(code, int):
        return status, code, str(getattr(exc, "error_message", exc))
    return None


class RegistryFormat:
    """Confluent framing with ids from a Schema Registry, resolved once per (schema, topic)."""

    def __init__(self, settings: SchemaRegistrySettings, client: Any | None = None) -> None:
        self.settings = settings
        self.client = client if client is not None else registry_client(settings)
        self._prefixes: dict[tuple[str, str], bytes] = {}

    def prefix(self, schema_name: str, topic: str) -> bytes:
        found = self._prefixes.get((schema_name, topic))
        if found is None:
            found = CONFLUENT_MAGIC + self.resolve(schema_name, topic).to_bytes(4, "big")
            self._prefixes[(schema_name, topic)] = found
        return found

    def prepare(self, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """Resolve (check, register or look up) every (schema, topic) before any record."""
        return {(s, t): int.from_bytes(self.prefix(s, t)[1:], "big") for s, t in pairs}

    def resolve(self, schema_name: str, topic: str) -> int:
        """The schema id of `schema_name` for `topic` (see the module docstring)."""
        subject = subject_name(self.settings.subject_strategy, topic, schema_name)
        text = schema_json(schema_name)
        schema = _schema(text)
        registered: int | None = self._call(
            subject, "look up", lambda: self._lookup(subject, schema)
        )
        if registered is not None:
            log.info("schema registered subject=%s id=%d", subject, registered)
            return registered
        if self.settings.compatibility_check:
            self.check(subject, text)
        if not self.settings.auto_register:
            raise ConfigError(
                f"schema registry {redact(self.settings.url)}: subject {subject}: schema "
                f"{schema_name} is not registered and schema_registry.auto_register is false; "
                "register it (`polybridge schemas register --config ...`) or set "
                "auto_register = true"
            )
        schema_id = self._call(
            subject, "register", lambda: int(self.client.register_schema(subject, schema))
        )
        log.info("schema registered subject=%s id=%d schema=%s", subject, schema_id, schema_name)
        return int(schema_id)

    def _lookup(self, subject: str, schema: Any) -> int | None:
        try:
            return int(self.client.lookup_schema(subject, schema).schema_id)
        except Exception as exc:
            err = _registry_error(exc)
            if err is not None and err[0] == 404:
                return None
            raise

    def versions(self, subject: str) -> list[tuple[int, str]]:
        """Every registered (version, schema text) of `subject`, oldest first."""

        def fetch() -> list[tuple[int, str]]:
            try:
                numbers = sorted(self.client.get_versions(subject))
            except Exception as exc:
                err = _registry_error(exc)
                if err is not None and err[0] == 404:
                    return []
                raise
            return [(n, self.client.get_version(subject, n).schema.schema_str) for n in numbers]

        found: list[tuple[int, str]] = self._call(subject, "list versions of", fetch)
        return found

    def level(self, subject: str) -> str:
        """The subject's compatibility level (else the global one, else BACKWARD)."""
        if is_mock(self.client):
            return DEFAULT_LEVEL  # the mock registry has no configuration endpoints
        for scope in (subject, None):
            found = self._configured_level(scope)
            if found:
                return found
        return DEFAULT_LEVEL

    def _configured_level(self, scope: str | None) -> str | None:
        try:
            found = self.client.get_compatibility(scope)
        except Exception:  # not set for the subject (40408), or not allowed: fall back
            return None
        return str(found).upper() if found else None

    def check(self, subject: str, text: str) -> None:
        """Refuse `text` when it is not compatible with `subject`'s registered versions."""
        versions = self.versions(subject)
        if not versions:
            return
        level = self.level(subject)
        existing = [json.loads(s) for _, s in versions]
        reasons = compat.check(level, text, existing)
        if (
            not reasons
            and not is_mock(self.client)
            and not self._registry_accepts(subject, text, level)
        ):
            # Apicurio reports a subject without its own rule as NONE and applies the
            # global rule: explain the refusal at that level.
            if level == "NONE":
                level = self._configured_level(None) or DEFAULT_LEVEL
                reasons = compat.check(level, text, existing)
            reasons = reasons or ["the registry reports it incompatible"]
        if reasons:
            latest = versions[-1][0]
            against = "every version" if level.endswith("_TRANSITIVE") else f"version {latest}"
            raise ConfigError(
                f"schema registry {redact(self.settings.url)}: subject {subject}: the schema is "
                f"not {level} compatible with {against}: {'; '.join(reasons)}. Either make the "
                "change compatible (give new fields a default, keep field names or add "
                "aliases, add enum symbols only with a default symbol, widen types only by "
                "Avro promotions) or write it under a new subject (another topic or "
                "schema_registry.subject_strategy), or change the subject's compatibility "
                "level if its consumers can follow"
            )

    def _registry_accepts(self, subject: str, text: str, level: str) -> bool:
        """The registry's own verdict, asked even when our checker found nothing (it knows
        its rules); True when it cannot say."""
        test = (
            self.client.test_compatibility_all_versions
            if level.endswith("_TRANSITIVE")
            else self.client.test_compatibility
        )
        try:
            return bool(test(subject, _schema(text)))
        except Exception as exc:
            log.debug("registry compatibility test unavailable subject=%s error=%s", subject, exc)
            return True

    def _call(self, subject: str, what: str, call: Any) -> Any:
        try:
            return call()
        except (ConfigError, KafkaError):
            raise
        except Exception as exc:
            where = f"schema registry {redact(self.settings.url)}: subject {subject}"
            err = _registry_error(exc)
            if err is None:
                raise KafkaError(
                    f"{where}: cannot {what} the schema: {type(exc).__name__}: {exc}",
                    retriable=True,
                ) from exc
            status, code, message = err
            if status == 409:
                raise ConfigError(
                    f"{where}: the registry refused the schema as incompatible: {message} "
                    f"(code {code}). Make the change compatible (defaults for new fields, "
                    "aliases for renames) or use a new subject or compatibility level"
                ) from None
            if status in (401, 403):
                raise ConfigError(
                    f"{where}: not authorized to {what} the schema ({message}); check "
                    "schema_registry.basic_auth_user_info_env / _file"
                ) from None
            if status == 422:
                raise ConfigError(f"{where}: the registry rejected the schema: {message}") from None
            raise KafkaError(
                f"{where}: cannot {what} the schema: {message} (HTTP {status}, code {code})",
                retriable=status >= 500,
            ) from exc


def _schema(text: str) -> Any:
    from confluent_kafka.schema_registry import Schema

    return Schema(text, "AVRO")


def wire_format_of(settings: Settings) -> WireFormat:
    """Confluent framing with a Schema Registry when `schema_registry.url` is set, else
    Avro single-object encoding."""
    if settings.schema_registry.url:
        return RegistryFormat(settings.schema_registry)
    return SingleObjectFormat()


def configured_topic_schemas(settings: Settings) -> list[tuple[str, str]]:
    """(value schema, topic) of every topic the configured bridge writes: each stream's
    data topic, and the state, dead-letter and gap topics."""
    from bridge.streams.catalogue import catalogue

    kafka = settings.kafka
    pairs = {
        ("polybridge.State", kafka.topic(kafka.state_topic)),
        ("polybridge.DeadLetter", kafka.topic(kafka.dlq_topic)),
        ("polybridge.Gap", kafka.topic(kafka.gaps_topic)),
    }
    pairs |= {(stream.schema, stream.topic) for stream in catalogue(settings).values()}
    return sorted(pairs, key=lambda pair: (pair[1], pair[0]))
