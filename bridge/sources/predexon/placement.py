"""Shared Predexon WebSocket connections: many subscriptions spread over few connections.

`PredexonConnectionManager.register(spec)` checks a subscription against the plan's limits,
places it on a connection with room (subscriptions per connection, no wildcard/regular mix
on a channel) and opens connections as needed; what a connection does with its
subscriptions is `connection`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bridge.errors import AuthError, ConfigError
from bridge.serde.exact_json import dumps
from bridge.sources.backoff import Backoff
from bridge.sources.predexon.connection import Connection, ConnectionSettings
from bridge.sources.predexon.reconnect import ReconnectPolicy, failing_backoff
from bridge.sources.predexon.redaction import api_key_of
from bridge.sources.predexon.requests import Update
from bridge.sources.predexon.subscription import BUFFER_FRAMES, Handle, SubscriptionSpec
from bridge.streams.channels import CHANNELS


@dataclass(frozen=True, slots=True)
class PlanLimits:
    subs_per_connection: int
    items_per_sub: int
    items_total: int
    wildcard: bool


PLAN_LIMITS = {
    "dev": PlanLimits(10, 10, 100, False),
    "pro": PlanLimits(100, 500, 50_000, True),
}


def check_plan(spec: SubscriptionSpec, limits: PlanLimits) -> None:
    """Raise when the plan cannot carry `spec` at all."""
    if spec.channel not in CHANNELS:
        raise ConfigError(f"{spec.describe()}: unknown channel")
    items = len(spec.selector())
    if spec.wildcard and not limits.wildcard:
        raise AuthError(
            f"{spec.describe()}: wildcard subscriptions need a Pro plan",
            reason="WILDCARD_NOT_ALLOWED",
        )
    if not spec.wildcard and items > limits.items_per_sub:
        raise ConfigError(
            f"{spec.describe()}: {items} items exceed the plan's "
            f"{limits.items_per_sub} per subscription"
        )


def has_room(conn: Connection, spec: SubscriptionSpec, limits: PlanLimits) -> bool:
    """Whether `spec` may join the subscriptions already on `conn`."""
    if len(conn.handles) >= limits.subs_per_connection:
        return False
    # Wildcard and regular subscriptions cannot share a channel on one connection.
    return not any(
        h.spec.channel == spec.channel and (h.spec.wildcard or spec.wildcard) for h in conn.handles
    )


class PredexonConnectionManager:
    """Spreads subscriptions over shared connections; see the module docstring.

    `url` carries the API key (`.../v1/<KEY>` or `?api_key=<KEY>`); it is never logged.
    """

    def __init__(
        self,
        url: str,
        plan: str = "dev",
        *,
        buffer_frames: int = BUFFER_FRAMES,
        backoff: Callable[[], Backoff] = failing_backoff,
        reconnect: Callable[[], ReconnectPolicy] | None = None,
        ping_interval_s: float = 1.0,
        ping_timeout_s: float = 10.0,
        request_timeout_s: float = 10.0,
        open_timeout_s: float = 10.0,
    ) -> None:
        if plan not in PLAN_LIMITS:
            raise ConfigError(f"predexon.plan {plan!r}: expected dev or pro")
        self.limits = PLAN_LIMITS[plan]
        self.buffer_frames = buffer_frames
        # Our own ping every second bounds how stale the live time can be (gaps start at
        # the last pong); 10 s without a pong is far above loopback/WAN round trips yet
        # well under Predexon's 60 s rule.
        self.settings = ConnectionSettings(
            url=url,
            secret=api_key_of(url) or "",
            backoff=backoff,
            reconnect=reconnect or (lambda: ReconnectPolicy(backoff())),
            ping_interval_s=ping_interval_s,
            ping_timeout_s=ping_timeout_s,
            request_timeout_s=request_timeout_s,
            open_timeout_s=open_timeout_s,
        )
        self.connections: list[Connection] = []
        self.connection_attempts = 0
        """Handshakes attempted, over all connections (tests count reconnect storms)."""

    def register(self, spec: SubscriptionSpec) -> Handle:
        """Place `spec` on a connection and start subscribing; the handle gets its items."""
        check_plan(spec, self.limits)
        handle = Handle(spec, self.buffer_frames)
        for conn in self.connections:
            if has_room(conn, spec, self.limits):
                break
        else:
            conn = Connection(self.settings, len(self.connections) + 1, self._attempted)
            self.connections.append(conn)
        conn.add(handle)
        return handle

    def unregister(self, handle: Handle) -> None:
        conn = handle.conn
        if isinstance(conn, Connection):
            conn.remove(handle)
            if not conn.handles and conn in self.connections:  # not already closed
                conn.close()
                self.connections.remove(conn)

    def update(self, handle: Handle, filters: dict[str, Any]) -> None:
        """Replace a subscription's filters: `update` where allowed, else unsubscribe and
        subscribe again (orderbook)."""
        if isinstance(handle.conn, Connection):
            handle.conn.request(Update(handle, dumps(filters)))

    async def close(self) -> None:
        for conn in self.connections:
            conn.close()
        for conn in self.connections:
            await conn.wait_closed()
        self.connections.clear()

    def _attempted(self) -> None:
        self.connection_attempts += 1
