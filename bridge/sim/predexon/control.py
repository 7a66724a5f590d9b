"""Answering a Predexon connection's control messages: rate limit, key checks, and
subscribe / update / unsubscribe validated against the plan's limits."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from typing import Any

from bridge.sim.predexon.config import PLANS, SimConfig
from bridge.sim.predexon.connections import SimConnection, SimSubscription, error, reply
from bridge.sim.predexon.protocol import CHANNELS, ORDER_STATUSES, WILDCARD, channel_named


class ControlHandler:
    """Control messages of every connection; acked subscriptions land in `all_subs`.

    `rng` is shared with event framing (`Fanout`), so a seed gives the same run as before.
    """

    def __init__(
        self,
        config: SimConfig,
        rng: random.Random,
        revoked: set[str],
        connections: Callable[[], list[SimConnection]],
        all_subs: dict[str, SimSubscription],
        send_snapshots: Callable[[SimSubscription], None],
    ) -> None:
        self._config = config
        self._rng = rng
        self._revoked = revoked
        self._connections = connections
        self._all_subs = all_subs
        self._send_snapshots = send_snapshots

    async def handle(self, conn: SimConnection, message: str | bytes) -> None:
        """Answer one control message (subscribe, update, unsubscribe) in arrival order."""
        now = time.monotonic()
        conn.request_times = [t for t in conn.request_times if now - t < 1.0] + [now]
        if len(conn.request_times) > self._config.max_requests_per_s:
            error(conn, "RATE_LIMIT", "too many requests; slow down")
            return
        if conn.key is None:
            error(conn, "AUTH_REQUIRED", "an API key is required")
            return
        if conn.key in self._revoked:
            # Sent directly, not via the outbox, so it precedes the close frame.
            refusal = {
                "type": "error",
                "code": "AUTH_FAILED",
                "message": "API key is no longer valid",
            }
            await conn.ws.send(json.dumps(refusal))
            conn.closed = True
            await conn.ws.close(4001, "authentication failed")
            return
        try:
            request = json.loads(message)
        except ValueError:
            error(conn, "PARSE_ERROR", "message is not valid JSON")
            return
        if not isinstance(request, dict):
            error(conn, "PARSE_ERROR", "message must be a JSON object")
            return
        action = request.get("action")
        if action == "subscribe":
            self._subscribe(conn, request)
        elif action == "unsubscribe":
            sub = self._find(conn, request)
            if sub is not None:
                del conn.subs[sub.id]
                sub.ended = time.monotonic()
                if not conn.subs:
                    conn.idle_since = time.monotonic()
                reply(conn, {"type": "ack", "subscription_id": sub.id, "channel": "trades"})
        elif action == "update":
            sub = self._find(conn, request)
            if sub is not None:
                if sub.channel == "orderbook":
                    error(conn, "INVALID_FILTERS", "update is not supported on orderbook")
                    return
                checked = self._check_filters(conn, sub.channel, request.get("filters"), sub)
                if checked is not None:
                    sub.filters, sub.items, sub.wildcard = checked
                    reply(conn, {"type": "ack", "subscription_id": sub.id, "channel": "trades"})
        else:
            error(conn, "UNKNOWN_ACTION", f"unknown action {action!r}")

    def _find(self, conn: SimConnection, request: dict[str, Any]) -> SimSubscription | None:
        sub = conn.subs.get(str(request.get("subscription_id")))
        if sub is None:
            error(conn, "SUBSCRIPTION_NOT_FOUND", "no such subscription on this connection")
        return sub

    def _check_filters(
        self,
        conn: SimConnection,
        channel: str,
        filters: Any,
        replacing: SimSubscription | None = None,
    ) -> tuple[dict[str, Any], int, bool] | None:
        limits = PLANS[conn.plan]
        selectors = CHANNELS[channel].selectors
        if not isinstance(filters, dict):
            error(conn, "INVALID_FILTERS", "filters must be an object")
            return None
        keys = [k for k in filters if not (channel == "orders" and k == "status")]
        if len(keys) != 1 or keys[0] not in selectors:
            error(conn, "INVALID_FILTERS", f"exactly one of {', '.join(selectors)} is required")
            return None
        values = filters[keys[0]]
        if (
            not isinstance(values, list)
            or not values
            or not all(isinstance(v, str) for v in values)
        ):
            error(conn, "INVALID_FILTERS", f"{keys[0]} must be a non-empty list of strings")
            return None
        if channel == "orders" and filters.get("status", "confirmed") not in ORDER_STATUSES:
            error(conn, "INVALID_FILTERS", "status must be confirmed, all or pending")
            return None
        others = [s for s in conn.subs.values() if s is not replacing]
        wildcard = values == [WILDCARD]
        if wildcard:
            if limits.wildcard_connections_per_channel == 0:
                error(conn, "WILDCARD_NOT_ALLOWED", "wildcard subscriptions need a Pro plan")
                return None
            if any(s.channel == channel and not s.wildcard for s in others):
                error(
                    conn,
                    "INVALID_FILTERS",
                    "wildcard and regular subscriptions cannot mix on a channel",
                )
                return None
            wild_conns = {
                c.id
                for c in self._connections()
                if c.key == conn.key and c is not conn
                for s in c.subs.values()
                if s.channel == channel and s.wildcard
            }
            if len(wild_conns) >= limits.wildcard_connections_per_channel:
                error(
                    conn,
                    "WILDCARD_CONNECTION_LIMIT",
                    "too many wildcard connections for this channel",
                )
                return None
            return filters, 0, True
        if WILDCARD in values:
            error(conn, "INVALID_FILTERS", "a wildcard must be the only value")
            return None
        if any(s.channel == channel and s.wildcard for s in others):
            error(
                conn,
                "INVALID_FILTERS",
                "wildcard and regular subscriptions cannot mix on a channel",
            )
            return None
        if len(values) > limits.items_per_sub:
            error(
                conn,
                "ITEMS_PER_SUB_LIMIT",
                f"at most {limits.items_per_sub} items per subscription",
            )
            return None
        total = sum(
            s.items
            for c in self._connections()
            if c.key == conn.key
            for s in c.subs.values()
            if s is not replacing
        )
        if total + len(values) > limits.items_total:
            error(conn, "ITEMS_LIMIT", f"at most {limits.items_total} items in total")
            return None
        return filters, len(values), False

    def _subscribe(self, conn: SimConnection, request: dict[str, Any]) -> None:
        channel = channel_named(request.get("platform"), request.get("type"))
        if channel is None:
            error(conn, "INVALID_FILTERS", "unknown platform/type")
            return
        needed = self._config.plan_required.get(channel)
        if needed == "pro" and conn.plan != "pro":
            error(conn, "PLAN_REQUIRED", f"the {channel} channel needs a {needed} plan")
            return
        if len(conn.subs) >= PLANS[conn.plan].subs_per_connection:
            error(conn, "SUBSCRIPTION_LIMIT", "too many subscriptions on this connection")
            return
        checked = self._check_filters(conn, channel, request.get("filters"))
        if checked is None:
            return
        filters, items, wildcard = checked
        sub = SimSubscription(
            f"sub_{self._rng.getrandbits(48):012x}", channel, filters, conn, items, wildcard
        )
        conn.subs[sub.id] = sub
        self._all_subs[sub.id] = sub
        reply(conn, {"type": "ack", "subscription_id": sub.id, "channel": "trades"})
        if channel == "orderbook" and not wildcard:
            self._send_snapshots(sub)
