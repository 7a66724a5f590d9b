"""Typed, frozen settings: one TOML file, every key overridable from the environment.

Environment overrides use `POLYBRIDGE_<SECTION>__<KEY>` (double underscore between levels),
e.g. `POLYBRIDGE_KAFKA__BOOTSTRAP_SERVERS=broker:9092`; values are parsed as JSON when they
parse (numbers, booleans, lists, objects) and taken as strings otherwise; the one top-level
key is `POLYBRIDGE_APP_ID`. Other `POLYBRIDGE_` names without a double underscore are not
settings (the tooling's own, e.g. `POLYBRIDGE_KAFKA_POM`) and are left alone. Unknown keys
are rejected by name. Secrets are never values here, only where to read them (env var or
file).
"""

from __future__ import annotations

import json
import os
import re
import socket
import tomllib
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bridge.errors import ConfigError
from bridge.maintenance import WEEKDAYS, MaintenanceSchedule, WeeklyWindow, parse_clock

ENV_PREFIX = "POLYBRIDGE_"
INSTANCE_ID = re.compile(r"[a-zA-Z0-9._-]{1,200}")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KafkaSettings(_Section):
    bootstrap_servers: str = "localhost:9092"
    topic_prefix: str = ""
    """Prepended to every topic name the bridge uses (data, state, dead letters, gaps)."""
    partitions: int = Field(6, ge=1)
    replication_factor: int = Field(-1, ge=-1)
    """Replicas of each topic the bridge creates; -1: the cluster's
    `default.replication.factor` (Kafka's own "unset")."""
    state_topic: str = "polybridge.state"
    dlq_topic: str = "polybridge.dlq"
    gaps_topic: str = "polybridge.gaps"
    transaction_timeout_ms: int = Field(60_000, ge=1_000)
    properties: dict[str, str | int | float | bool] = Field(default_factory=dict)
    """Passed to librdkafka as-is, e.g. security.protocol / sasl.* / ssl.* for managed Kafka."""

    @field_validator("replication_factor")
    @classmethod
    def _replicas(cls, value: int) -> int:
        if value == 0:
            raise ValueError("must be -1 (the cluster's default.replication.factor) or >= 1")
        return value

    def topic(self, name: str) -> str:
        return self.topic_prefix + name

    def librdkafka(self) -> dict[str, Any]:
        """The base librdkafka configuration every client of the bridge starts from."""
        return {"bootstrap.servers": self.bootstrap_servers, **self.properties}


class PipelineSettings(_Section):
    max_batch_records: int = Field(10_000, ge=1)
    """Commit once a transaction holds this many records, if nothing more queued did first."""
    max_latency_ms: int = Field(50, ge=1)
    """Commit once the oldest record of the open transaction has waited this long (a backlog
    that takes longer to produce; otherwise a transaction commits when nothing is queued)."""
    heartbeat_commit_interval_s: float = Field(5.0, gt=0)
    """With only heartbeats (no records), commit the newer position at most this often."""
    dedupe_window: int = Field(100_000, ge=0)
    """How many recent event ids per stream are remembered to drop upstream repeats."""
    queue_max_batches: int = Field(64, ge=1)
    """Batches buffered between source and Kafka; when full the source stops reading."""


class DropCopyAuthSettings(_Section):
    mode: Literal["static", "private_key_jwt"] = "static"
    token_env: str = "POLYMARKET_ACCESS_TOKEN"
    """static: the environment variable holding the access token."""
    token_file: str = ""
    """static: a file holding the access token (wins over token_env when set)."""
    client_id: str = ""
    private_key_file: str = ""
    """private_key_jwt: PEM file of the RSA key registered for client_id."""
    token_url: str = "https://pmx-prod.us.auth0.com/oauth/token"
    audience: str = "https://api.prod.polymarketexchange.com"
    ca_file: str = ""
    """private_key_jwt: CA bundle to verify the token endpoint (system roots when empty)."""
    refresh_margin_s: float = Field(30.0, ge=0)


DropCopyKind = Literal["executions", "trade_captures", "instrument_states", "position_changes"]


class DropCopyStreamSettings(_Section):
    kind: DropCopyKind
    name: str = ""
    """Stream id suffix (`dropcopy.<name>`); defaults to the kind."""
    symbols: tuple[str, ...] = ()
    firms: tuple[str, ...] = ()
    topic: str = ""
    """Topic override (before the prefix); defaults to the kind's topic."""
    start: str = "live"
    """First start only (no stored position): `live`, or an ISO-8601 time to replay from."""

    @field_validator("start")
    @classmethod
    def _start_is_live_or_time(cls, value: str) -> str:
        if value != "live":
            parse_time(value)
        return value

    @property
    def stream_name(self) -> str:
        return self.name or self.kind


GrpcStatusName = Literal[
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
]


class MaintenanceWindowSettings(_Section):
    """One announced (extra) maintenance window."""

    start: str
    """ISO-8601 time (naive = UTC)."""
    end: str

    @field_validator("start", "end")
    @classmethod
    def _is_time(cls, value: str) -> str:
        parse_time(value)
        return value

    @model_validator(mode="after")
    def _ends_after_start(self) -> MaintenanceWindowSettings:
        if parse_time(self.end) <= parse_time(self.start):
            raise ValueError(f"end {self.end} is not after start {self.start}")
        return self


class DropCopyMaintenanceSettings(_Section):
    """The exchange's maintenance windows: refused connections there are expected."""

    weekly: bool = True
    """The exchange's weekly window; false: only the `extra` windows."""
    weekday: Literal[
        "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"
    ] = "thursday"
    start: str = "06:00"
    """Wall-clock start (HH:MM) of the weekly window in `timezone`."""
    end: str = "08:00"
    """Wall-clock end (HH:MM); not after `start` means the next day."""
    timezone: str = "America/New_York"
    """IANA time zone of the weekly window (daylight saving time applies)."""
    extra: tuple[MaintenanceWindowSettings, ...] = ()
    """Windows the exchange announces ad hoc (ISO start / end)."""
    retry_interval_s: float = Field(30.0, gt=0)
    """Reconnect attempts inside a window, at most this often."""
    refused_codes: tuple[GrpcStatusName, ...] = (
        "UNAVAILABLE",
        "CANCELLED",
        "UNKNOWN",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "DATA_LOSS",
    )
    """gRPC statuses that mean "maintenance" inside a window (the exchange does not
    document which one it returns); outside a window they keep their usual meaning."""

    @field_validator("start", "end")
    @classmethod
    def _is_clock(cls, value: str) -> str:
        parse_clock(value)
        return value

    @field_validator("timezone")
    @classmethod
    def _is_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (an IANA name)") from None
        return value

    def schedule(self) -> MaintenanceSchedule:
        weekly = None
        if self.weekly:
            weekly = WeeklyWindow(
                WEEKDAYS.index(self.weekday),
                parse_clock(self.start),
                parse_clock(self.end),
                ZoneInfo(self.timezone),
            )
        extra = [(parse_time(w.start), parse_time(w.end)) for w in self.extra]
        return MaintenanceSchedule(weekly, extra)


class DropCopySettings(_Section):
    endpoint: str = "grpc-api.prod.polymarketexchange.com:443"
    tls: bool = True
    """TLS is the default; plaintext only when explicitly set to false (simulators, tests)."""
    ca_file: str = ""
    """Extra CA bundle to trust (PEM); system roots when empty."""
    participant_id: str = ""
    """`firms/<Firm>/users/<user>`, sent as x-participant-id on account-scoped streams."""
    resume_time_margin_s: float = Field(5.0, ge=0)
    """When a resume token is refused, replay from the last committed event time minus this."""
    reconnect_initial_s: float = Field(1.0, gt=0)
    """First reconnect delay; doubles per failure (with full jitter) up to reconnect_max_s."""
    reconnect_max_s: float = Field(30.0, gt=0)
    """Reconnect delay cap: the exchange documents 1 s doubling to 30 s."""
    keepalive_time_s: float = Field(60.0, gt=0)
    """Ping the exchange after this long without traffic (the exchange recommends 60 s)."""
    keepalive_timeout_s: float = Field(20.0, gt=0)
    """A ping unanswered this long means the connection is dead (half-open): reconnect."""
    silence_timeout_s: float = Field(180.0, gt=0)
    """A stream that delivers nothing this long (not even a heartbeat) is dead: resume it."""
    maintenance: DropCopyMaintenanceSettings = DropCopyMaintenanceSettings()
    auth: DropCopyAuthSettings = DropCopyAuthSettings()
    streams: tuple[DropCopyStreamSettings, ...] = ()


class PredexonSubscriptionSettings(_Section):
    name: str
    channel: Literal[
        "orders", "activity", "lifecycle", "orderbook", "oracle", "collateral", "crypto"
    ]
    filters: dict[str, Any]
    topic: str = ""


class PredexonSettings(_Section):
    url: str = "wss://wss.predexon.com/v1/{api_key}"
    """`{api_key}` is replaced by the key; the URL is never logged with the key in it."""
    api_key_env: str = "PREDEXON_API_KEY"
    api_key_file: str = ""
    plan: Literal["dev", "pro"] = "dev"
    subscriptions: tuple[PredexonSubscriptionSettings, ...] = ()


SubjectStrategy = Literal["topic_name", "record_name", "topic_record_name"]


class SchemaRegistrySettings(_Section):
    url: str = ""
    """Confluent Schema Registry URL; empty: Avro single-object encoding, no registry.
    `mock://<name>` is confluent-kafka's in-process mock registry (tests)."""
    auto_register: bool = True
    """Register missing schemas at startup; false: only look them up (missing is an error)."""
    subject_strategy: SubjectStrategy = "topic_name"
    """topic_name: `<topic>-value`; record_name: `<record full name>`;
    topic_record_name: `<topic>-<record full name>`."""
    basic_auth_user_info_env: str = ""
    """Environment variable holding `user:password` for HTTP basic auth (never logged)."""
    basic_auth_user_info_file: str = ""
    """File holding `user:password` (wins over basic_auth_user_info_env when set)."""
    ca_file: str = ""
    """CA bundle (PEM) to verify the registry's TLS certificate; system roots when empty."""
    cert_file: str = ""
    """Client certificate (PEM) for mutual TLS."""
    key_file: str = ""
    """Client private key (PEM) for mutual TLS."""
    compatibility_check: bool = True
    """At startup, check each new schema against the subject's registered versions under the
    subject's compatibility level and refuse an incompatible change with the reasons."""


class MetricsSettings(_Section):
    port: int = Field(0, ge=0, le=65535)
    """Port for /metrics, /healthz and /readyz; 0 disables the endpoint."""
    host: str = "127.0.0.1"


class ClusterSettings(_Section):
    enabled: bool = True
    """Share the streams with every instance of the same app_id through Kafka's group
    protocol (one instance alone runs them all). false: run every configured stream here,
    with transactional fencing as the only guard against a second instance."""
    session_timeout_ms: int = Field(10_000, ge=1_000)
    """How long a silent instance keeps its streams before the group moves them (the
    broker bounds it: group.min.session.timeout.ms, 6 s by default)."""
    handover_s: float = Field(10.0, ge=0)
    """Make before break for Predexon streams (which cannot replay): a stream moving to
    another instance keeps running here until its next owner, subscribed already, takes
    it, for this long at most; the next owner waits as long at most for this one's last
    position. Clocks of the hosts must agree (NTP) to well under a second. 0: break
    before make (the next owner subscribes after the previous one stopped)."""
    topic: str = "polybridge.streams"
    """The coordination topic (one partition per stream; nothing is written to it)."""
    instance_id: str = ""
    """This instance's stable name in the stream group, sent as Kafka's
    `group.instance.id` (static membership): restarted under the same name, an instance
    gets its own streams back at once instead of after its old session expires. Empty:
    the host name (a Kubernetes pod's name; a StatefulSet keeps it over restarts). Unique
    per running instance of an app_id."""

    @field_validator("instance_id")
    @classmethod
    def _instance_id(cls, value: str) -> str:
        if value and not INSTANCE_ID.fullmatch(value):
            raise ValueError(
                "use at most 200 of the characters a-z A-Z 0-9 . _ - (Kafka's group.instance.id)"
            )
        return value

    def instance_name(self) -> str:
        """`instance_id`, or the host name when it is empty (characters Kafka's
        group.instance.id does not allow become `-`)."""
        if self.instance_id:
            return self.instance_id
        return re.sub(r"[^a-zA-Z0-9._-]", "-", socket.gethostname())[:200] or "localhost"


class BackfillSettings(_Section):
    """Filling gaps from the upstreams' REST history (`docs/backfill.md`)."""

    enabled: bool = False
    """Fill the gaps the streams write. Needs the `read:reports` / `read:positions` scopes
    (DropCopy) and Predexon REST access, so it is off unless asked for."""
    exchange_url: str = "https://api.prod.polymarketexchange.com"
    """The exchange's REST base URL (Report API, position ledger)."""
    predexon_url: str = "https://api.predexon.com"
    """Predexon's REST base URL."""
    page_size: int = Field(500, ge=1, le=1000)
    """Rows asked per REST page (Predexon allows at most 500, the ledger 1000)."""
    max_records_per_transaction: int = Field(1_000, ge=1)
    """Records written per backfill transaction: bounds the work between two yields."""
    retry_interval_s: float = Field(60.0, gt=0)
    """After a REST or Kafka error, try the gap again this much later."""
    accounts: tuple[str, ...] = ()
    """`firms/<firm>/accounts/<id>`: the accounts whose position ledger fills position
    change gaps (the ledger is per account)."""
    exchange_retention_s: float = Field(0.0, ge=0)
    """Windows starting longer ago than this are unfillable without asking (the exchange
    publishes no retention); 0: always ask."""
    reconcile_interval_s: float = Field(0.0, ge=0)
    """Predexon trades (`orders` subscriptions): every this many seconds, check the recent
    past against REST history and write what the stream missed; 0: off."""
    predexon_rest_lag_s: float = Field(120.0, ge=0)
    """How far Predexon's REST history lags the chain: a gap is asked for this long after
    it ended, and a reconciliation window ends this far behind now."""
    predexon_lookback_s: float = Field(60.0, ge=0, le=240)
    """Predexon fills are asked for from this long before a gap's start: a fill's
    timestamp is its block time, earlier than its arrival on the stream (at most 240 s:
    what is already in Kafka is looked up from 300 s before a gap)."""


class Settings(_Section):
    app_id: str = "polybridge"
    """Prefix of every transactional.id (`<app_id>.<stream id>`): one owner per stream; also
    the consumer group the instances of one deployment share the streams through."""
    kafka: KafkaSettings = KafkaSettings()
    pipeline: PipelineSettings = PipelineSettings()
    dropcopy: DropCopySettings = DropCopySettings()
    predexon: PredexonSettings = PredexonSettings()
    metrics: MetricsSettings = MetricsSettings()
    cluster: ClusterSettings = ClusterSettings()
    schema_registry: SchemaRegistrySettings = SchemaRegistrySettings()
    backfill: BackfillSettings = BackfillSettings()


def parse_time(text: str) -> datetime:
    """An ISO-8601 time; naive times are UTC."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"not an ISO-8601 time: {text!r}") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        if len(path) == 1 and path[0] not in Settings.model_fields:
            continue  # not a setting: a variable of the tooling (POLYBRIDGE_KAFKA_POM, ...)
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"environment variable {name}: {part} is not a section")
        node[path[-1]] = value
    return tree


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _describe(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"])
        if item["type"] == "extra_forbidden":
            lines.append(
                f"{source}: unknown key '{key}' (check the spelling against docs/configuration.md)"
            )
        else:
            value = item.get("input")
            shown = "" if isinstance(value, dict | list) else f" (got {value!r})"
            lines.append(f"{source}: key '{key}': {item['msg']}{shown}")
    return "; ".join(lines)


def load_settings(path: str | Path | None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from the TOML file at `path` (optional) with environment overrides."""
    data: dict[str, Any] = {}
    source = "configuration"
    if path is not None:
        source = str(path)
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"configuration file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    data = _merge(data, _env_overrides(os.environ if environ is None else environ))
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None
