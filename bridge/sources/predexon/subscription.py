"""One Predexon subscription as its reader sees it: what was configured (`SubscriptionSpec`)
and the bounded buffer its connection fills (`Handle`) with the items below.

A connection reads every frame at once into the owning subscription's buffer, never
waiting for the pipeline (Predexon silently drops events for slow readers). A full buffer
marks the subscription overflowed; once its reader has drained it, the handle asks its
connection to subscribe again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from bridge.errors import BridgeError
from bridge.serde.exact_json import dumps
from bridge.sources.predexon.filters import WILDCARD

BUFFER_FRAMES = 10_000
"""Frames buffered per subscription between the socket and the pipeline. At Predexon's
busiest documented rate (a wildcard orderbook `event_batch` every 250 ms) this is over 40
minutes of frames, so only a stuck pipeline overflows it; it bounds memory to roughly
10,000 x frame size."""


@dataclass(frozen=True, slots=True)
class SubscriptionSpec:
    """One configured subscription: the stream it feeds, its channel and filters."""

    stream_id: str
    channel: str
    filters: dict[str, Any]

    @property
    def filters_json(self) -> str:
        return dumps(self.filters)

    def describe(self) -> str:
        return f"stream {self.stream_id} (channel {self.channel}, filters {self.filters_json})"

    def selector(self) -> list[str]:
        return next(
            (v for k, v in self.filters.items() if k != "status" and isinstance(v, list)), []
        )

    @property
    def wildcard(self) -> bool:
        return self.selector() == [WILDCARD]


# --- what a connection hands to a subscription's reader ------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    raw: bytes
    message: Any
    """Parsed with `loads()`, or None when the frame is not valid JSON."""
    receive_time_us: int
    alive_us: int | None
    """The connection's live evidence when the frame arrived (see `Liveness.last_alive_us`):
    everything generated before it has arrived by now."""


@dataclass(frozen=True, slots=True)
class Acked:
    subscription_id: str
    at_us: int


@dataclass(frozen=True, slots=True)
class Lost:
    at_us: int
    last_alive_us: int | None
    """The connection's last live evidence before the loss."""
    reason: str
    """The gap reason: disconnected, overflow or filters_changed."""
    cause: str = ""
    """Why a connection was lost (close_1006, pong_timeout, ...), for the reconnect metric."""


@dataclass(frozen=True, slots=True)
class Lagged:
    """The server may have dropped events generated between these instants (two pings with
    at least `SERVER_DROP_BYTES` received in between); the subscription stays live."""

    from_us: int
    to_us: int


@dataclass(frozen=True, slots=True)
class Failed:
    error: BridgeError


Item = Frame | Acked | Lost | Lagged | Failed


class Carrier(Protocol):
    """The connection a handle is placed on, as the handle needs it."""

    @property
    def last_alive_us(self) -> int | None: ...

    def resubscribe(self, handle: Handle) -> None: ...

    def hurry(self, seconds: float) -> None: ...


@dataclass(eq=False)
class Handle:
    """A registered subscription: its buffer of items and its state on its connection."""

    spec: SubscriptionSpec
    capacity: int
    items: deque[Item] = field(default_factory=deque)
    frames: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    subscription_id: str | None = None
    overflowed: bool = False
    failed: bool = False
    conn: Carrier | None = None

    def push(self, item: Item) -> None:
        self.items.append(item)
        if isinstance(item, Frame):
            self.frames += 1
        self.wake.set()

    def pop(self) -> Item | None:
        """The next item, or None; re-subscribes after an overflow once drained."""
        if not self.items:
            return None
        item = self.items.popleft()
        if isinstance(item, Frame):
            self.frames -= 1
        if self.overflowed and self.frames == 0 and self.conn is not None:
            self.overflowed = False
            self.conn.resubscribe(self)
        return item

    async def wait(self, timeout_s: float) -> None:
        """Until an item is available or `timeout_s` passes."""
        if self.items:
            return
        self.wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self.wake.wait()

    def alive_us(self) -> int | None:
        """Last evidence the subscription's connection was delivering, when it is acked."""
        if self.subscription_id is None or self.conn is None:
            return None
        return self.conn.last_alive_us
