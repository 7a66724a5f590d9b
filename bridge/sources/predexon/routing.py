"""Which subscription a Predexon data frame belongs to, among those of one connection."""

from __future__ import annotations

import re
from typing import Any

from bridge.sources.predexon.filters import matches
from bridge.sources.predexon.subscription import Handle
from bridge.streams.channels import CHANNELS

_SUBSCRIPTION_ID = re.compile(rb'"subscription_id"\s*:\s*"([^"]+)"')


class Routes:
    """The acked subscriptions of one connection, by the id the server gave them."""

    def __init__(self) -> None:
        self.by_sub_id: dict[str, Handle] = {}

    def add(self, sub_id: str, handle: Handle) -> None:
        self.by_sub_id[sub_id] = handle

    def drop(self, handle: Handle) -> None:
        """Route nothing more to `handle` (it is being unsubscribed or replaced)."""
        if handle.subscription_id is not None:
            self.by_sub_id.pop(handle.subscription_id, None)

    def clear(self) -> None:
        self.by_sub_id.clear()

    def route(self, raw: bytes, message: Any, handles: list[Handle]) -> Handle | None:
        """The subscription a data frame belongs to (None: a stale subscription's event)."""
        if isinstance(message, dict):
            sub_id = message.get("subscription_id")
            if isinstance(sub_id, str):
                return self.by_sub_id.get(sub_id)
            if "event_type" in message:
                return _route_bare(message, handles)
        else:
            # Not JSON: find the subscription id in the text, so the dead letter lands
            # on the right stream; otherwise the first subscription keeps it.
            found = _SUBSCRIPTION_ID.search(raw)
            if found and found.group(1).decode(errors="replace") in self.by_sub_id:
                return self.by_sub_id[found.group(1).decode()]
        live = _live(handles)
        return live[0] if live else None


def _route_bare(data: dict[str, Any], handles: list[Handle]) -> Handle | None:
    """A bare event (no envelope): the live subscription whose filters select it."""
    event_type = data.get("event_type")
    live = _live(handles)
    same = [h for h in live if event_type in CHANNELS[h.spec.channel].event_types]
    for handle in same:
        if matches(handle.spec.channel, handle.spec.filters, data):
            return handle
    candidates = same or live
    return candidates[0] if candidates else None


def _live(handles: list[Handle]) -> list[Handle]:
    return [h for h in handles if h.subscription_id is not None]
