"""Predexon subscription filters: which events a subscription's filters select.

The source routes each event to the subscriptions it matches (`routing.py`).
The simulator decides what to send with its own reading of the rule
(`bridge.sim.predexon.protocol`), so the two are checked against each other, not copied.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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
