"""`polybridge tail TOPIC`: a polybridge topic's records as JSON lines, for humans and pipes.

One line per record: `{"topic", "partition", "offset", "timestamp", "key", "schema",
"value"}`. Values of either wire format are decoded (`bridge.serde.decode`): single-object
by fingerprint among the known `.avsc` schemas, Confluent-framed by schema id through the
Schema Registry of `--config` or `--schema-registry-url`. Timestamps are ISO-8601 UTC
strings; bytes are base64 (`--bytes hex` for hex); keys are UTF-8 text (base64 when not
valid UTF-8, with `"key_base64": true`). A value that cannot be decoded prints
`"value": null` and `"error"`.

Reading is `read_committed` with `assign()` (no consumer group, nothing committed).
`--from-beginning` starts at each partition's first record and stops at its end unless
`--follow`; without it, tail starts at the end and follows (only new records).
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, OFFSET_INVALID, TopicPartition
from confluent_kafka import KafkaError as LibKafkaError

from bridge.config import Settings, load_settings
from bridge.errors import ConfigError, KafkaError
from bridge.kafka import readback
from bridge.serde.decode import Decoder, to_json
from bridge.serde.registry import registry_client

_POLL_S = 0.5
"""One consume() wait: short enough that Ctrl-C and --max stop promptly."""

_BATCH = 1_000
"""Messages per consume() call; lines are written as they come, so keep batches modest."""


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config) if args.config else load_settings(None)
    if args.bootstrap_servers:
        kafka = settings.kafka.model_copy(update={"bootstrap_servers": args.bootstrap_servers})
        settings = settings.model_copy(update={"kafka": kafka})
    if args.schema_registry_url:
        registry = settings.schema_registry.model_copy(update={"url": args.schema_registry_url})
        settings = settings.model_copy(update={"schema_registry": registry})
    return settings


def _key(raw: bytes | None) -> dict[str, Any]:
    if raw is None:
        return {"key": None}
    try:
        return {"key": raw.decode()}
    except UnicodeDecodeError:
        return {"key": base64.b64encode(raw).decode(), "key_base64": True}


def _timestamp(ms: int) -> str | None:
    if ms <= 0:
        return None
    moment = dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def records(
    config: dict[str, Any], topic: str, from_beginning: bool, follow: bool
) -> Iterator[Any]:
    """Messages of `topic`, partition by partition as they arrive, until every partition's
    end (unless `follow`)."""
    consumer = readback.open_reader(config, follow)
    try:
        parts = readback.partitions_of(consumer, topic, config)
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        consumer.assign([TopicPartition(topic, p, start) for p in parts])
        ended: set[int] = set()
        while follow or len(ended) < len(parts):
            for msg in consumer.consume(_BATCH, _POLL_S):
                err = msg.error()
                part = msg.partition()
                if part is None:
                    if readback.about_placeholder_group(err):
                        continue
                    if err is not None and (err.fatal() or not err.retriable()):
                        raise KafkaError(f"reading {topic}: {err.str()}")
                    continue
                if err is None:
                    ended.discard(part)
                    yield msg
                elif err.code() == LibKafkaError._PARTITION_EOF:
                    ended.add(part)
                elif err.fatal() or not err.retriable():
                    raise KafkaError(f"reading {topic}: {err.str()}")
            if not follow:
                _ended_by_watermark(consumer, topic, parts, ended)
    finally:
        consumer.close()


def _ended_by_watermark(consumer: Any, topic: str, parts: list[int], ended: set[int]) -> None:
    """Backstop for the EOF event: a partition whose fetch position reached the
    fetch-reported high watermark (the LSO for read_committed) is at its end."""
    pending = [TopicPartition(topic, p) for p in parts if p not in ended]
    for tp in consumer.position(pending) if pending else []:
        _, high = consumer.get_watermark_offsets(tp, cached=True)
        if high >= 0 and tp.offset != OFFSET_INVALID and tp.offset >= high:
            ended.add(tp.partition)


def tail(
    settings: Settings,
    topic: str,
    *,
    from_beginning: bool,
    follow: bool,
    key: str | None,
    limit: int | None,
    bytes_format: str,
    out: TextIO,
) -> int:
    """Write `topic`'s records to `out` as JSON lines; the number written."""
    registry = registry_client(settings.schema_registry) if settings.schema_registry.url else None
    decoder = Decoder(registry)
    wanted = None if key is None else key.encode()
    written = 0
    if limit is not None and limit <= 0:
        return 0
    write: Callable[[str], int] = out.write
    for msg in records(settings.kafka.librdkafka(), topic, from_beginning, follow):
        if wanted is not None and msg.key() != wanted:
            continue
        line: dict[str, Any] = {
            "topic": msg.topic(),
            "partition": msg.partition(),
            "offset": msg.offset(),
            "timestamp": _timestamp(msg.timestamp()[1]),
            **_key(msg.key()),
        }
        value = msg.value()
        if value is None:
            line.update(schema=None, value=None)
        else:
            try:
                decoded = decoder.decode(value)
                line.update(schema=decoded.schema, value=to_json(decoded.datum, bytes_format))
            except KafkaError as exc:
                line.update(schema=None, value=None, error=str(exc))
        write(json.dumps(line, ensure_ascii=False) + "\n")
        out.flush()
        written += 1
        if limit is not None and written >= limit:
            break
    return written


class TailCommand:
    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("topic", help="topic to read (the full name, prefix included)")
        parser.add_argument(
            "--from-beginning",
            action="store_true",
            help="start at each partition's first record (default: at the end, following)",
        )
        parser.add_argument(
            "--follow", action="store_true", help="keep waiting for new records at the end"
        )
        parser.add_argument("--key", help="only records with this key (UTF-8)")
        parser.add_argument("--max", type=int, dest="limit", help="stop after N records")
        parser.add_argument("--bootstrap-servers", help="Kafka bootstrap servers")
        parser.add_argument(
            "--config", help="bridge TOML (Kafka settings and schema_registry for Confluent)"
        )
        parser.add_argument(
            "--schema-registry-url",
            help="Schema Registry to fetch registry-framed values' schemas from by id "
            "(overrides schema_registry.url of --config)",
        )
        parser.add_argument(
            "--bytes",
            choices=["base64", "hex"],
            default="base64",
            dest="bytes_format",
            help="how bytes fields are printed (default base64)",
        )

    def run(self, args: argparse.Namespace) -> int:
        if not args.config and not args.bootstrap_servers:
            raise ConfigError("tail: give --bootstrap-servers or --config")
        try:
            tail(
                _settings(args),
                args.topic,
                from_beginning=args.from_beginning,
                follow=args.follow or not args.from_beginning,
                key=args.key,
                limit=args.limit,
                bytes_format=args.bytes_format,
                out=sys.stdout,
            )
        except BrokenPipeError:  # `polybridge tail ... | head`: the reader went away
            return 0
        return 0


def command(path: tuple[str, ...]) -> TailCommand:
    return TailCommand()
