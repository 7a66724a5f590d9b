"""Predexon WebSocket frames -> Avro records, one topic and one schema per channel.

`PredexonMapper` turns the frames of one subscription into records (or dead letters). What
it builds on, one job each:

- `bridge.serde.exact_json`: JSON parsed and written with every number kept as its exact
  text;
- `predexon_fields`: each field kind's converter (decimals kept as text, never floats);
- `bridge.streams.channels`: the channel table (topic, schema, fields, key per channel);
- `predexon_schema`: the Avro schemas generated from that table.

Which events a subscription's filters select is the source's business
(`bridge.sources.predexon.filters`).

Fields this version does not know are kept in `extra` (a JSON object text), so an upstream
addition is never lost before the schema learns it.

`event_time` is the event's `timestamp` in microseconds, its unit (seconds, milliseconds or
microseconds: Predexon does not publish it) read from its magnitude, and null unless the
time is plausible (`bridge.event_times`); `timestamp` itself is always kept as sent.

Identities (`event_id`, used by the pipeline to drop repeats):

- on-chain events: `<event_type>:<tx_hash>:<log_index>` (order fills add `:<role>`, since
  the synthetic taker-aggregate row shares the transaction);
- pending fills (no log index yet): `order_filled:pending:<tx_hash>:<order_hash>:<role>`;
- `fee_refund`: `fee_refund:<tx_hash>:<order_hash>`;
- orderbook and crypto prices have no on-chain identity: `<event_type>:<token_id|feed>:
  <timestamp>:<sha256 of the canonical JSON of the event>[:24]`; orderbook markers without
  a token (`snapshots_done`, `resync`) also hash the subscription id, so the markers of two
  subscriptions never collide. Identical content at the same timestamp is the same event.
- oracle events carry no transaction: like orderbook, hashed from content unless
  `tx_hash` and `log_index` are present.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

from bridge.errors import MappingError
from bridge.event_times import micros_by_magnitude, plausible_or_none
from bridge.mapping.predexon_fields import KINDS
from bridge.records import DeadLetter, Record
from bridge.serde.avro import Serializer
from bridge.serde.exact_json import dumps, json_excerpt, json_type_name, loads
from bridge.streams.channels import CHANNELS, CONTROL_TYPES

_NESTED_KINDS = ("tokens", "levels")
"""Field kinds whose items keep their own unknown keys in an `extra`."""

MAX_FRAME_BYTES = 4 * 1024 * 1024
"""Frames larger than this become dead letters instead of records. Predexon terminates a
client whose buffer passes 4 MB, so no legitimate frame is larger; the WebSocket client
accepts up to 16 MiB so such a frame is seen (and dead-lettered) rather than killing the
connection."""


def _raw_bytes(raw: bytes | str) -> bytes:
    return raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw


def _event_time(timestamp: int | None, receive_time_us: int) -> int | None:
    # Predexon publishes no unit (seconds, and milliseconds, were both seen): by magnitude.
    # An implausible time stays only in `timestamp`, as sent; it never reaches a position.
    if timestamp is None:
        return None
    return plausible_or_none(micros_by_magnitude(timestamp), receive_time_us)


def _content_hash(data: Mapping[str, Any], salt: str = "") -> str:
    return hashlib.sha256((salt + dumps(data)).encode()).hexdigest()[:24]


class PredexonMapper:
    """Maps the frames of one subscription (one stream) to records of one channel topic.

    `unknown_field_records` counts the records mapped that keep keys this version does not
    know in an `extra` (the metric `polybridge_unknown_fields_total`).
    """

    def __init__(
        self,
        channel: str,
        stream_id: str,
        topic: str,
        prefix: bytes,
        filters_json: str,
        *,
        max_frame_bytes: int = MAX_FRAME_BYTES,
    ) -> None:
        if channel not in CHANNELS:
            raise MappingError(f"unknown Predexon channel {channel!r}")
        self.channel = CHANNELS[channel]
        self.stream_id = stream_id
        self.topic = topic
        self.filters_json = filters_json
        self.max_frame_bytes = max_frame_bytes
        self.serializer = Serializer(self.channel.schema, prefix)
        self._known = {name for name, _ in self.channel.fields} | {"event_type"}
        self._converters = [(name, KINDS[kind][0]) for name, kind in self.channel.fields]
        self._nested = [name for name, kind in self.channel.fields if kind in _NESTED_KINDS]
        self.unknown_field_records = 0

    def map_frame(
        self, raw: bytes | str, receive_time_us: int
    ) -> tuple[list[Record], list[DeadLetter]]:
        """Map one WebSocket frame: an event envelope, a bare event, or an event batch.

        Control frames (connected/ack/error) map to nothing. A frame that is not JSON, too
        large, or of an unknown shape becomes one dead letter with the raw frame; inside a
        valid envelope or batch each bad event is its own dead letter and the others map.
        """
        raw_b = _raw_bytes(raw)
        if len(raw_b) > self.max_frame_bytes:
            return [], [self._oversized(raw_b, receive_time_us)]
        try:
            message = loads(raw_b)
        except (ValueError, RecursionError) as exc:
            return [], [self._dead(raw_b, receive_time_us, "parse_error", f"invalid JSON: {exc}")]
        return self.map_message(message, raw_b, receive_time_us)

    def _oversized(self, raw: bytes, receive_time_us: int) -> DeadLetter:
        detail = f"frame of {len(raw)} bytes exceeds {self.max_frame_bytes}"
        return self._dead(raw, receive_time_us, "oversized", detail)

    def map_message(
        self,
        message: Any,
        raw: bytes,
        receive_time_us: int,
        subscription_id: str | None = None,
    ) -> tuple[list[Record], list[DeadLetter]]:
        """Map an already parsed frame (`loads()`); `raw` is kept for dead letters.
        `subscription_id` is used for frames that carry none (bare events)."""
        if len(raw) > self.max_frame_bytes:
            return [], [self._oversized(raw, receive_time_us)]
        if not isinstance(message, dict):
            return [], [
                self._dead(
                    raw,
                    receive_time_us,
                    "bad_shape",
                    f"frame is a JSON {json_type_name(message)}, not an object",
                )
            ]
        frame_type = message.get("type")
        if frame_type in CONTROL_TYPES:
            return [], []
        sub_id = message.get("subscription_id")
        sub_id = sub_id if isinstance(sub_id, str) else subscription_id
        events: Iterable[Any]
        if frame_type == "event":
            events = [message.get("data")]
        elif frame_type == "event_batch":
            batch = message.get("events")
            if not isinstance(batch, list):
                return [], [
                    self._dead(
                        raw, receive_time_us, "bad_shape", "event_batch without an events array"
                    )
                ]
            events = batch
        elif frame_type is None and "event_type" in message:
            events = [message]  # bare event, as the documentation examples show
        else:
            return [], [
                self._dead(
                    raw,
                    receive_time_us,
                    "unknown_type",
                    f"unknown frame type {json_excerpt(frame_type)}",
                )
            ]
        records: list[Record] = []
        dead: list[DeadLetter] = []
        for data in events:
            try:
                records.append(self.map_event(data, receive_time_us, sub_id))
            except MappingError as exc:
                # The raw of one bad event inside a batch is that event, not the whole batch.
                one = raw if frame_type != "event_batch" else dumps(data).encode()
                dead.append(self._dead(one, receive_time_us, "mapping_error", str(exc)))
        return records, dead

    def _nested_extra(self, value: dict[str, Any]) -> bool:
        """Whether a token or price level of this event kept unknown keys in its `extra`."""
        return any(item["extra"] is not None for name in self._nested for item in value[name] or ())

    def map_event(self, data: Any, receive_time_us: int, subscription_id: str | None) -> Record:
        """One event object (the envelope's `data`) -> one record; `MappingError` if not."""
        if not isinstance(data, dict):
            raise MappingError(f"event is a JSON {json_type_name(data)}, not an object")
        event_type = data.get("event_type")
        if not isinstance(event_type, str) or event_type not in self.channel.event_types:
            raise MappingError(
                f"unknown event_type {json_excerpt(event_type)} on channel {self.channel.name}"
            )
        value: dict[str, Any] = {}
        for name, convert in self._converters:
            v = data.get(name)
            try:
                value[name] = None if v is None else convert(v)
            except MappingError as exc:
                raise MappingError(f"{event_type}.{name}: {exc}") from None
        rest = {k: v for k, v in data.items() if k not in self._known}
        value["extra"] = dumps(rest) if rest else None
        unknown = bool(rest) or self._nested_extra(value)
        event_time = _event_time(value.get("timestamp"), receive_time_us)
        value.update(
            event_id=self._event_id(event_type, data, value, subscription_id),
            event_type=event_type,
            event_time=event_time,
            receive_time=receive_time_us,
            stream_id=self.stream_id,
            subscription_id=subscription_id,
            filters=self.filters_json,
        )
        key = next((value[f] for f in self.channel.key_fields if value.get(f)), None)
        if key is None and self.channel.name == "orderbook":
            key = self.stream_id  # markers: one partition per stream keeps them in order
        try:
            encoded = self.serializer(value)
        except (ValueError, TypeError, OverflowError) as exc:
            raise MappingError(f"{event_type}: cannot encode: {exc}") from None
        self.unknown_field_records += unknown
        return Record(
            topic=self.topic,
            key=None if key is None else str(key).encode(),
            value=encoded,
            event_id=value["event_id"],
            event_time_us=event_time,
        )

    def _event_id(
        self,
        event_type: str,
        data: Mapping[str, Any],
        value: Mapping[str, Any],
        subscription_id: str | None,
    ) -> str:
        tx, log_index = value.get("tx_hash"), value.get("log_index")
        if event_type == "order_filled":
            role = value.get("role") or "-"
            if value.get("status") == "pending" or log_index is None:
                if tx is None:
                    raise MappingError("order_filled without tx_hash")
                return f"order_filled:pending:{tx}:{value.get('order_hash')}:{role}"
            return f"order_filled:{value.get('status')}:{tx}:{log_index}:{role}"
        if event_type == "fee_refund":
            if tx is None or value.get("order_hash") is None:
                raise MappingError("fee_refund without tx_hash/order_hash")
            return f"fee_refund:{tx}:{value['order_hash']}"
        if self.channel.name in ("orderbook", "crypto", "oracle") and (
            tx is None or log_index is None
        ):
            subject = value.get("token_id") or value.get("feed") or value.get("condition_id")
            salt = "" if subject else (subscription_id or "")
            digest = _content_hash(data, salt)
            return f"{event_type}:{subject or '-'}:{value.get('timestamp')}:{digest}"
        if tx is None or log_index is None:
            raise MappingError(f"{event_type} without tx_hash/log_index")
        return f"{event_type}:{tx}:{log_index}"

    def _dead(self, raw: bytes, receive_time_us: int, error_type: str, error: str) -> DeadLetter:
        return DeadLetter(
            raw=raw,
            error=f"predexon {self.channel.name} stream {self.stream_id}: {error}",
            error_type=error_type,
            received_at_us=receive_time_us,
            target_topic=self.topic,
        )
