"""The server's side of Predexon's WebSocket protocol, written from Predexon's documentation
and nothing of the bridge: the channels and their filter keys, which events a subscription
receives, and how JSON is written.

The bridge has its own reading of the same facts (`bridge.mapping`, `bridge.sources`); the
simulator deliberately shares no code with it, so a misreading on either side shows up as
a test failure instead of agreeing with itself.

Facts used:

- A subscription names a channel by `platform` and `type` and carries `filters` with
  exactly one selector key (which keys a channel accepts is in `CHANNELS`); `orders` also
  takes `status`. A selector is a non-empty list of strings; `["*"]` alone is a wildcard
  (Pro plan) and selects every event of the channel.
- Selectors select on event fields: `users` on `user` or `taker` (a trade is the user's
  whichever side they were on), `condition_ids` on `condition_id`, `market_slugs` on
  `market_slug` (the orderbook: `slug`), `token_ids` on `token_id`, `feeds` on `feed`. An
  event is selected when one of those fields equals one of the listed values.
- `orders` sends confirmed trades unless `status` says `pending` or `all`; an event without
  a `status` (a `fee_refund`) counts as confirmed.
- Numbers are JSON numbers written exactly (prices `0.10`, never `0.1000000000000000055`):
  the simulator keeps them as `Decimal`s and writes their text. Frames are compact JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

WILDCARD = "*"


@dataclass(frozen=True, slots=True)
class SimChannel:
    """How a channel is subscribed to: `{"platform", "type", "filters": {<selector>: [...]}}`."""

    platform: str
    type: str
    selectors: tuple[str, ...]


CHANNELS: dict[str, SimChannel] = {
    "orders": SimChannel("polymarket", "orders", ("users", "condition_ids", "market_slugs")),
    "activity": SimChannel("polymarket", "activity", ("users", "condition_ids")),
    "lifecycle": SimChannel("polymarket", "lifecycle", ("condition_ids",)),
    "orderbook": SimChannel(
        "polymarket", "orderbook", ("token_ids", "condition_ids", "market_slugs")
    ),
    "oracle": SimChannel("polymarket", "oracle", ("condition_ids", "market_slugs")),
    "collateral": SimChannel("polymarket", "collateral", ("users",)),
    "crypto": SimChannel("chainlink", "crypto", ("feeds",)),
}
"""Every channel the server offers, by the name the simulator gives it."""

EVENT_FIELDS: dict[str, tuple[str, ...]] = {
    "users": ("user", "taker"),
    "condition_ids": ("condition_id",),
    "market_slugs": ("market_slug", "slug"),
    "token_ids": ("token_id",),
    "feeds": ("feed",),
}
"""Selector key -> the event fields it is compared with."""

ORDER_STATUSES = ("confirmed", "pending", "all")


def channel_named(platform: object, type_: object) -> str | None:
    """The channel a subscribe request's `platform` and `type` name, if any."""
    for name, channel in CHANNELS.items():
        if (channel.platform, channel.type) == (platform, type_):
            return name
    return None


def selects(channel: str, filters: Mapping[str, Any], event: Mapping[str, Any]) -> bool:
    """Whether the server sends `event` (of `channel`) to a subscription with `filters`."""
    if channel == "orders":
        wanted_status = filters.get("status", "confirmed")
        if wanted_status != "all" and event.get("status", "confirmed") != wanted_status:
            return False
    selector = [key for key in filters if key in EVENT_FIELDS]
    if len(selector) != 1:
        return False  # the server refuses such filters; nothing would be sent
    values = filters[selector[0]]
    if not isinstance(values, list):
        return False
    if WILDCARD in values:
        return True
    return any(event.get(name) in values for name in EVENT_FIELDS[selector[0]])


def to_json(value: Any) -> str:
    """Compact JSON in the value's own key order, `Decimal`s as their exact text."""
    out: list[str] = []
    _write(value, out)
    return "".join(out)


def _write(value: Any, out: list[str]) -> None:
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{value} is not a JSON number")
        out.append(str(value))
    elif isinstance(value, Mapping):
        out.append("{")
        for i, (key, item) in enumerate(value.items()):
            out.append("," if i else "")
            out.append(json.dumps(str(key)) + ":")
            _write(item, out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, item in enumerate(value):
            out.append("," if i else "")
            _write(item, out)
        out.append("]")
    else:
        out.append(json.dumps(value, allow_nan=False))
