"""Every configured stream resolved once from the settings: the one place a stream id, its
topic, schema and transactional id are worked out. The wiring, the commands and the
registry read these records instead of each deriving them again."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from bridge.config import DropCopyStreamSettings, PredexonSubscriptionSettings, Settings
from bridge.errors import ConfigError
from bridge.streams.channels import CHANNELS
from bridge.streams.kinds import KINDS

Upstream = Literal["dropcopy", "predexon"]


@dataclass(frozen=True, slots=True)
class Stream:
    """One configured stream."""

    id: str
    """`dropcopy.<name>` or `predexon.<name>`: the state record's key, the stream header."""
    upstream: Upstream
    kind: str
    """The DropCopy stream kind (`bridge.streams.kinds`) or Predexon channel."""
    topic: str
    """The data topic, `kafka.topic_prefix` included."""
    schema: str
    """Full name of the topic's Avro value schema."""
    transactional_id: str
    """`<app_id>.<stream id>`: one owner per stream."""
    filters: Mapping[str, Any] = field(default_factory=dict)
    """DropCopy: {"symbols": [...], "firms": [...]}; Predexon: the subscription's filters."""


def dropcopy_stream(settings: Settings, stream: DropCopyStreamSettings) -> Stream:
    filters = {"symbols": list(stream.symbols), "firms": list(stream.firms)}
    kind = KINDS[stream.kind]
    return _resolved(
        settings, "dropcopy", stream.stream_name, stream.kind, stream.topic, kind, filters
    )


def predexon_stream(settings: Settings, sub: PredexonSubscriptionSettings) -> Stream:
    channel = CHANNELS[sub.channel]
    return _resolved(
        settings, "predexon", sub.name, sub.channel, sub.topic, channel, dict(sub.filters)
    )


class _Described(Protocol):
    """A DropCopy kind or a Predexon channel: its default topic and its value schema."""

    @property
    def topic(self) -> str: ...

    @property
    def schema(self) -> str: ...


def _resolved(
    settings: Settings,
    upstream: Upstream,
    name: str,
    kind: str,
    topic: str,
    described: _Described,
    filters: Mapping[str, Any],
) -> Stream:
    stream_id = f"{upstream}.{name}"
    return Stream(
        id=stream_id,
        upstream=upstream,
        kind=kind,
        topic=settings.kafka.topic(topic or described.topic),
        schema=described.schema,
        transactional_id=f"{settings.app_id}.{stream_id}",
        filters=filters,
    )


def catalogue(settings: Settings) -> dict[str, Stream]:
    """Every configured stream by id, in id order (the stream group's partition order)."""
    streams = [dropcopy_stream(settings, s) for s in settings.dropcopy.streams]
    streams += [predexon_stream(settings, s) for s in settings.predexon.subscriptions]
    return {s.id: s for s in sorted(streams, key=lambda s: s.id)}


def configured(settings: Settings, stream_id: str, what: str) -> Stream:
    """The configured stream `stream_id`; a `ConfigError` naming `what` asked and the
    configured ids otherwise."""
    streams = catalogue(settings)
    if stream_id not in streams:
        raise ConfigError(
            f"{what}: unknown stream {stream_id!r}; configured streams: "
            + (", ".join(streams) or "none")
        )
    return streams[stream_id]
