"""The state topic: each stream's resume position, one compacted 1-partition topic.

Key: the stream id (UTF-8). Value: a `polybridge.State` Avro record, single-object encoded
(`C3 01` + schema fingerprint + body) or, with a Schema Registry, Confluent-framed (`00` +
4-byte schema id + body); a tombstone (value None) means "no position" (`state reset`).
The newest record per key is the stream's position (see `bridge.records.Position`). State
records are written only inside the transaction that writes the data they cover.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from io import BytesIO
from typing import Any

import fastavro

from bridge.errors import KafkaError
from bridge.event_times import BOUNDS_TEXT, describe_us, is_plausible, plausible_or_none
from bridge.kafka.producer import ConfigValue, TransactionalProducer
from bridge.records import STREAM_HEADER, Position
from bridge.serde.avro import (
    CONFLUENT_MAGIC,
    SINGLE_OBJECT_MAGIC,
    Serializer,
    expanded_schema,
    fingerprint,
)
from bridge.timeutil import micros

log = logging.getLogger(__name__)

STATE_SCHEMA = "polybridge.State"


@dataclass(frozen=True, slots=True)
class StateEntry:
    """One stream's committed position as stored in the state topic."""

    stream_id: str
    upstream: str
    owner: str
    """Instance id of the bridge that committed it; not ours means we were fenced."""
    committed_at_us: int
    position: Position
    backfill: Mapping[str, Any] | None = None
    """Only under key `<stream id>/backfill`: the backfill cursor datum
    (`bridge.backfill.cursor` reads it)."""


def state_datum(
    stream_id: str, upstream: str, position: Position, owner: str, committed_at_us: int
) -> dict[str, Any]:
    """The `polybridge.State` datum for a position. Its times are written only when
    plausible at `committed_at_us` (`bridge.event_times`), so no state record holds a time
    a later start would refuse; the mappers already null the implausible ones."""
    return {
        "stream_id": stream_id,
        "upstream": upstream,
        "resume_token": position.resume_token,
        "event_time": plausible_or_none(position.event_time_us, committed_at_us),
        "live_time": plausible_or_none(position.live_time_us, committed_at_us),
        "owner": owner,
        "committed_at": committed_at_us,
        "detail": dict(position.detail),
    }


def encode_state(
    stream_id: str,
    upstream: str,
    position: Position,
    owner: str,
    committed_at_us: int,
    serializer: Serializer,
) -> bytes:
    """The state topic value for `position` (framed by `serializer`'s wire format)."""
    return serializer(state_datum(stream_id, upstream, position, owner, committed_at_us))


def _entry(datum: Mapping[str, Any]) -> StateEntry:
    return StateEntry(
        stream_id=datum["stream_id"],
        upstream=datum["upstream"],
        owner=datum.get("owner", ""),
        committed_at_us=micros(datum["committed_at"]),
        position=Position(
            resume_token=datum.get("resume_token"),
            event_time_us=micros(datum.get("event_time")),
            live_time_us=micros(datum.get("live_time")),
            detail=dict(datum.get("detail") or {}),
        ),
        backfill=datum.get("backfill"),
    )


@cache
def _times_as_longs() -> Any:
    """The State schema without logical types: the same binary encoding, its timestamps
    read as the longs they are. A reader turning them into dates fails on any time beyond
    year 9999, and that is `implausible_time`'s to report, with the stream it stops."""

    def plain(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: plain(v) for k, v in node.items() if k != "logicalType"}
        if isinstance(node, list):
            return [plain(item) for item in node]
        return node

    return fastavro.parse_schema(plain(expanded_schema(STATE_SCHEMA)))


def implausible_time(entry: StateEntry, now_us: int) -> str | None:
    """What is wrong with the times of a stream's position (None: nothing). A position
    resumes from them, so one outside the plausible range must not be used."""
    for name, time_us in (
        ("event_time", entry.position.event_time_us),
        ("live_time", entry.position.live_time_us),
    ):
        if time_us is not None and not is_plausible(time_us, now_us):
            return f"its {name} {describe_us(time_us)} is implausible (not {BOUNDS_TEXT})"
    return None


def decode_state(value: bytes) -> StateEntry:
    """A state topic value back to a `StateEntry`. Times are read as longs (see
    `implausible_time` for their check).

    Accepts single-object encoding (the fingerprint must be the current State schema's) and
    Confluent framing (the body is read with the current schema: State changes are kept
    BACKWARD compatible and the bridge registers that schema). Anything else raises
    `KafkaError` naming the framing it found.
    """
    schema = _times_as_longs()
    if value.startswith(SINGLE_OBJECT_MAGIC):
        fp = value[2:10]
        if fp != fingerprint(STATE_SCHEMA):
            raise KafkaError(
                f"state record written with an unknown State schema (fingerprint {fp.hex()}); "
                "upgrade polybridge or reset the stream's state"
            )
        body = value[10:]
    elif value.startswith(CONFLUENT_MAGIC) and len(value) >= 5:
        body = value[5:]
    else:
        raise KafkaError(
            f"state record has unknown framing (first bytes {value[:4].hex()}); expected Avro "
            "single-object (c301...) or Confluent (00...) framing"
        )
    try:
        datum = fastavro.schemaless_reader(BytesIO(body), schema, schema)
    except Exception as exc:
        raise KafkaError(f"state record does not decode as {STATE_SCHEMA}: {exc}") from exc
    if not isinstance(datum, dict):
        raise KafkaError(f"state record decoded to {type(datum).__name__}, not a record")
    return _entry(datum)


async def write_state(
    config: Mapping[str, ConfigValue],
    topic: str,
    transactional_id: str,
    stream_id: str,
    value: bytes | None,
    timeout: float = 30.0,
) -> None:
    """Write one state record (None: a tombstone) in its own transaction.

    Uses the stream's own `transactional_id`, so a bridge running that stream is fenced
    first (the safety idea of KIP-875's offset reset: nobody overwrites a live owner).
    """
    producer = TransactionalProducer(config, transactional_id, stream_id)
    try:
        await producer.init(timeout)
        producer.begin()
        producer.produce(topic, stream_id.encode(), value, [(STREAM_HEADER, stream_id.encode())])
        await producer.commit(timeout)
    finally:
        producer.close()
