"""Predexon WebSocket frames -> Avro records, one topic and one schema per channel.

Lossless by construction:

- JSON is parsed with `loads()`, which keeps every JSON *number* as its exact text
  (`RawNumber`), so `0.1` never becomes a binary float. Decimal fields (prices, sizes,
  fees, amounts) are written to Avro as that exact text in a `string` field: Avro's
  `decimal` logical type needs a fixed scale per field, which Predexon does not promise
  (prices have 2-4 decimals, normalized sizes 6, Chainlink prices 8+), and the text as sent
  is what a REST backfill will show, so consumers can compare byte for byte. Orderbook
  prices and sizes arrive as JSON strings and are kept the same way.
- Hex strings (hashes, `log_index`, `block_number`) are kept as sent.
- Fields this version does not know are kept in `extra` (a JSON object text), so an
  upstream addition is never lost before the schema learns it.

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
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from bridge.errors import MappingError
from bridge.records import DeadLetter, Record
from bridge.serde.avro import Serializer

MAX_FRAME_BYTES = 4 * 1024 * 1024
"""Frames larger than this become dead letters instead of records. Predexon terminates a
client whose buffer passes 4 MB, so no legitimate frame is larger; the WebSocket client
accepts up to 16 MiB so such a frame is seen (and dead-lettered) rather than killing the
connection."""


class RawNumber:
    """A JSON number kept as its exact text."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RawNumber) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return f"RawNumber({self.text!r})"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite JSON number {name} is not valid JSON")


def loads(text: str | bytes) -> Any:
    """Parse JSON keeping numbers exact: floats as `RawNumber`, integers as `int`."""
    return json.loads(text, parse_float=RawNumber, parse_constant=_reject_constant)


def dumps(value: Any, *, sort_keys: bool = True) -> str:
    """Canonical JSON (sorted keys, no spaces) writing `RawNumber`s (and `Decimal`s) as
    their exact text. `sort_keys=False` keeps the object's own key order."""
    parts: list[str] = []
    _dump(value, parts, sort_keys)
    return "".join(parts)


def _dump(value: Any, out: list[str], sort_keys: bool) -> None:
    if isinstance(value, RawNumber):
        out.append(value.text)
    elif isinstance(value, Decimal):
        out.append(str(value))
    elif isinstance(value, dict):
        out.append("{")
        for i, key in enumerate(sorted(value) if sort_keys else value):
            if i:
                out.append(",")
            out.append(json.dumps(str(key)))
            out.append(":")
            _dump(value[key], out, sort_keys)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _dump(item, out, sort_keys)
        out.append("]")
    else:
        # str, int, bool, None: the stdlib's output is already canonical.
        out.append(json.dumps(value))


# --- field kinds: how one upstream JSON value becomes one Avro value --------------------


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise MappingError(f"expected a string, got {_type_name(v)}")
    return v


def _dec(v: Any) -> str:
    # Numbers on trades/activity, strings on the orderbook: both kept as exact text.
    if isinstance(v, RawNumber):
        return v.text
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    if isinstance(v, str) and _DECIMAL_TEXT.fullmatch(v):
        return v
    raise MappingError(f"expected a decimal number, got {_type_name(v)} {_short(v)}")


def _int(v: Any) -> int:
    if isinstance(v, int) and not isinstance(v, bool):
        if not -(2**63) <= v < 2**63:
            raise MappingError(f"integer {v} does not fit in 64 bits")
        return v
    raise MappingError(f"expected an integer, got {_type_name(v)} {_short(v)}")


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    raise MappingError(f"expected a boolean, got {_type_name(v)}")


def _json(v: Any) -> str:
    return dumps(v)


def _object_list(item: Callable[[Any], dict[str, Any]]) -> Callable[[Any], list[dict[str, Any]]]:
    def convert(v: Any) -> list[dict[str, Any]]:
        if not isinstance(v, list):
            raise MappingError(f"expected a list, got {_type_name(v)}")
        return [item(x) for x in v]

    return convert


def _token(v: Any) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise MappingError(f"expected a token object, got {_type_name(v)}")
    out = {
        "token_id": _opt(v.get("token_id"), _str),
        "label": _opt(v.get("label"), _str),
        "won": _opt(v.get("won"), _bool),
    }
    rest = {k: x for k, x in v.items() if k not in out}
    out["extra"] = dumps(rest) if rest else None
    return out


def _level(v: Any) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise MappingError(f"expected a price level object, got {_type_name(v)}")
    out = {"price": _opt(v.get("price"), _dec), "size": _opt(v.get("size"), _dec)}
    rest = {k: x for k, x in v.items() if k not in out}
    out["extra"] = dumps(rest) if rest else None
    return out


def _opt(v: Any, convert: Callable[[Any], Any]) -> Any:
    return None if v is None else convert(v)


_DECIMAL_TEXT = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")

KINDS: dict[str, tuple[Callable[[Any], Any], Any]] = {
    # kind: (converter, Avro type of the non-null branch)
    "string": (_str, "string"),
    "decimal": (_dec, "string"),
    "int": (_int, "long"),
    "bool": (_bool, "boolean"),
    "json": (_json, "string"),
    "tokens": (_object_list(_token), {"type": "array", "items": "predexon.polymarket.Token"}),
    "levels": (_object_list(_level), {"type": "array", "items": "predexon.polymarket.PriceLevel"}),
}


@dataclass(frozen=True, slots=True)
class Channel:
    """One Predexon channel: how to subscribe, its topic, schema, fields and identity."""

    name: str
    platform: str
    type: str
    topic: str
    schema: str
    event_types: frozenset[str]
    fields: tuple[tuple[str, str], ...]
    """(upstream field name, kind) in schema order; every one is optional in Avro."""
    selectors: tuple[str, ...]
    """Allowed filter keys (exactly one per subscription)."""
    key_fields: tuple[str, ...]
    """Kafka key: the first of these present in the event."""
    time_unit_us: int
    """Microseconds per unit of `timestamp` (seconds: 1e6; orderbook milliseconds: 1e3)."""
    updatable: bool = True


_ONCHAIN = (("tx_hash", "string"), ("log_index", "string"), ("block_number", "string"))
_MARKET = (
    ("condition_id", "string"),
    ("market_slug", "string"),
    ("market_id", "string"),
    ("title", "string"),
    ("image", "string"),
)

CHANNELS: dict[str, Channel] = {
    c.name: c
    for c in (
        Channel(
            "orders",
            "polymarket",
            "orders",
            "predexon.polymarket.trades",
            "predexon.polymarket.TradeEvent",
            frozenset({"order_filled", "fee_refund"}),
            (
                ("status", "string"),
                ("user", "string"),
                ("taker", "string"),
                ("side", "string"),
                ("price", "decimal"),
                ("shares", "decimal"),
                ("shares_normalized", "decimal"),
                ("fee", "decimal"),
                ("refund", "decimal"),
                ("fee_charged", "decimal"),
                ("token_id", "string"),
                ("token_label", "string"),
                ("outcome", "string"),
                ("outcome_index", "int"),
                ("is_neg_risk", "bool"),
                *_MARKET,
                ("order_hash", "string"),
                ("tx_hash", "string"),
                ("log_index", "string"),
                ("timestamp", "int"),
                ("version", "int"),
                ("builder", "string"),
                ("metadata", "string"),
                ("role", "string"),
                ("complement_token_id", "string"),
                ("complement_token_label", "string"),
            ),
            ("users", "condition_ids", "market_slugs"),
            ("condition_id", "token_id"),
            1_000_000,
        ),
        Channel(
            "activity",
            "polymarket",
            "activity",
            "predexon.polymarket.activity",
            "predexon.polymarket.ActivityEvent",
            frozenset({"split", "merge", "redeem", "conversion"}),
            (
                ("user", "string"),
                *_MARKET,
                ("collateral_token", "string"),
                ("amount", "decimal"),
                ("amount_normalized", "decimal"),
                ("payout", "decimal"),
                ("payout_normalized", "decimal"),
                *_ONCHAIN,
                ("timestamp", "int"),
                ("tokens", "tokens"),
                ("version", "int"),
            ),
            ("users", "condition_ids"),
            ("condition_id",),
            1_000_000,
        ),
        Channel(
            "lifecycle",
            "polymarket",
            "lifecycle",
            "predexon.polymarket.lifecycle",
            "predexon.polymarket.LifecycleEvent",
            frozenset({"condition_prepared", "token_registered", "condition_resolution"}),
            (
                *_MARKET,
                ("oracle", "string"),
                ("question_id", "string"),
                ("is_neg_risk", "bool"),
                ("outcome_slot_count", "int"),
                ("is_invalid", "bool"),
                ("tokens", "tokens"),
                *_ONCHAIN,
                ("timestamp", "int"),
            ),
            ("condition_ids",),
            ("condition_id",),
            1_000_000,
        ),
        Channel(
            "orderbook",
            "polymarket",
            "orderbook",
            "predexon.polymarket.orderbook",
            "predexon.polymarket.OrderbookEvent",
            frozenset(
                {
                    "book_snapshot",
                    "snapshots_done",
                    "price_change",
                    "last_trade",
                    "tick_size_change",
                    "resync",
                }
            ),
            (
                ("token_id", "string"),
                ("condition_id", "string"),
                ("slug", "string"),
                ("question", "string"),
                ("outcome", "string"),
                ("timestamp", "int"),
                ("bids", "levels"),
                ("asks", "levels"),
                ("hash", "string"),
                ("side", "string"),
                ("price", "decimal"),
                ("size", "decimal"),
                ("best_bid", "decimal"),
                ("best_ask", "decimal"),
                ("fee_rate_bps", "decimal"),
                ("tick_size", "decimal"),
                ("count", "int"),
            ),
            ("token_ids", "condition_ids", "market_slugs"),
            ("token_id",),
            1_000,
            updatable=False,
        ),
        Channel(
            "oracle",
            "polymarket",
            "oracle",
            "predexon.polymarket.oracle",
            "predexon.polymarket.OracleEvent",
            frozenset({"proposal", "dispute", "settlement", "reset"}),
            (
                ("condition_id", "string"),
                ("market_id", "string"),
                ("title", "string"),
                ("market_slug", "string"),
                ("outcomes", "json"),
                ("tokens", "tokens"),
                ("is_neg_risk", "bool"),
                ("proposer", "string"),
                ("proposed_price", "decimal"),
                ("expiration_timestamp", "int"),
                ("request_timestamp", "int"),
                ("timestamp", "int"),
                ("tx_hash", "string"),
                ("log_index", "string"),
            ),
            ("condition_ids", "market_slugs"),
            ("condition_id",),
            1_000_000,
        ),
        Channel(
            "collateral",
            "polymarket",
            "collateral",
            "predexon.polymarket.collateral",
            "predexon.polymarket.CollateralEvent",
            frozenset({"polyusd_wrapped", "polyusd_unwrapped"}),
            (
                ("user", "string"),
                ("asset", "string"),
                ("amount", "decimal"),
                ("amount_normalized", "decimal"),
                *_ONCHAIN,
                ("timestamp", "int"),
                ("version", "int"),
            ),
            ("users",),
            ("user",),
            1_000_000,
        ),
        Channel(
            "crypto",
            "chainlink",
            "crypto",
            "predexon.chainlink.crypto",
            "predexon.chainlink.CryptoPriceEvent",
            frozenset({"price_feed"}),
            (
                ("feed", "string"),
                ("price", "decimal"),
                ("bid", "decimal"),
                ("ask", "decimal"),
                ("observed_at", "int"),
                ("timestamp", "int"),
            ),
            ("feeds",),
            ("feed",),
            1_000_000,
        ),
    )
}

CONTROL_TYPES = frozenset({"connected", "ack", "error", "pong"})
"""Frame types that are protocol, not data: handled by the connection, never mapped."""

HEADER_FIELDS = (
    "event_id",
    "event_type",
    "event_time",
    "receive_time",
    "stream_id",
    "subscription_id",
    "filters",
)


def avro_schema(channel: Channel) -> dict[str, Any]:
    """The Avro value schema of a channel's topic, as written to `avro/`."""
    namespace, _, name = channel.schema.rpartition(".")
    ts = {"type": "long", "logicalType": "timestamp-micros"}
    fields: list[dict[str, Any]] = [
        {"name": "event_id", "type": "string", "doc": "natural identity, for dedupe"},
        {"name": "event_type", "type": "string"},
        {
            "name": "event_time",
            "type": ["null", ts],
            "default": None,
            "doc": "upstream `timestamp` in microseconds; null when the event has none",
        },
        {"name": "receive_time", "type": ts, "doc": "when the bridge received the frame"},
        {"name": "stream_id", "type": "string"},
        {"name": "subscription_id", "type": ["null", "string"], "default": None},
        {"name": "filters", "type": "string", "doc": "the subscription's filters as JSON"},
    ]
    for field_name, kind in channel.fields:
        doc = "exact decimal text as sent" if kind == "decimal" else None
        if kind == "json":
            doc = "JSON text as sent"
        entry: dict[str, Any] = {
            "name": field_name,
            "type": ["null", KINDS[kind][1]],
            "default": None,
        }
        if doc:
            entry["doc"] = doc
        fields.append(entry)
    fields.append(
        {
            "name": "extra",
            "type": ["null", "string"],
            "default": None,
            "doc": "upstream fields this schema does not know yet, as a JSON object",
        }
    )
    return {
        "type": "record",
        "name": name,
        "namespace": namespace,
        "doc": f"Predexon {channel.platform}/{channel.type} channel event. "
        f"Key: {' else '.join(channel.key_fields)}.",
        "fields": fields,
    }


SELECTOR_FIELDS: dict[str, tuple[str, ...]] = {
    # filter key -> event fields it selects on
    "users": ("user", "taker"),
    "condition_ids": ("condition_id",),
    "market_slugs": ("market_slug", "slug"),
    "token_ids": ("token_id",),
    "feeds": ("feed",),
}
WILDCARD = "*"


def matches(channel: str, filters: Mapping[str, Any], data: Mapping[str, Any]) -> bool:
    """Whether an event of `channel` is selected by a subscription's `filters`.

    The selector matches when any listed value equals the event's field (`["*"]` matches
    everything); on `orders`, `status` picks pending, confirmed (default) or all; a
    `fee_refund` follows the confirmed side.
    """
    if channel == "orders":
        status = filters.get("status", "confirmed")
        event_status = data.get("status", "confirmed")
        if status != "all" and event_status != status:
            return False
    for key, values in filters.items():
        if key == "status" or not isinstance(values, list):
            continue
        if WILDCARD in values:
            return True
        wanted = set(values)
        return any(data.get(f) in wanted for f in SELECTOR_FIELDS.get(key, ()))
    return False


# --- the mapper ------------------------------------------------------------------------


def _type_name(v: Any) -> str:
    if isinstance(v, RawNumber):
        return "number"
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer"}.get(
        type(v), "null" if v is None else type(v).__name__
    )


def _short(v: Any) -> str:
    text = dumps(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _raw_bytes(raw: bytes | str) -> bytes:
    return raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw


def _content_hash(data: Mapping[str, Any], salt: str = "") -> str:
    return hashlib.sha256((salt + dumps(data)).encode()).hexdigest()[:24]


class PredexonMapper:
    """Maps the frames of one subscription (one stream) to records of one channel topic."""

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
                    f"frame is a JSON {_type_name(message)}, not an object",
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
                    raw, receive_time_us, "unknown_type", f"unknown frame type {_short(frame_type)}"
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

    def map_event(self, data: Any, receive_time_us: int, subscription_id: str | None) -> Record:
        """One event object (the envelope's `data`) -> one record; `MappingError` if not."""
        if not isinstance(data, dict):
            raise MappingError(f"event is a JSON {_type_name(data)}, not an object")
        event_type = data.get("event_type")
        if not isinstance(event_type, str) or event_type not in self.channel.event_types:
            raise MappingError(
                f"unknown event_type {_short(event_type)} on channel {self.channel.name}"
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
        timestamp = value.get("timestamp")
        event_time = None if timestamp is None else timestamp * self.channel.time_unit_us
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
