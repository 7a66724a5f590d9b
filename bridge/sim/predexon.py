"""A faithful simulator of Predexon's WebSocket API, as Predexon documents it.

It speaks the documented protocol: key in the URL path (`/v1/<KEY>`, or `?api_key=`),
handshake refusals (401 unknown key, 403 Free plan, 429 connection limit, 503 capacity),
`connected` on open, subscribe/update/unsubscribe answered by `ack` or `error` in request
order, plan limits, protocol pings with a pong deadline, the 4000 idle close, 4001/4002.
Events come from one seeded global stream per channel (`predexon_events`); each is recorded
in the ground truth with the time it was generated, then sent to every matching
subscription. What was actually written to each subscription (or dropped, and why) is
recorded too, so tests can tell "lost while disconnected" from "sent".

Like the real server it never blocks on a slow client: each connection has a bounded
outbound queue and events that do not fit are dropped silently; a "stalled" connection
drops everything for a while. Assumption (the docs are silent): unsubscribe and update
are acknowledged with an `ack` carrying the subscription id, like subscribe.

Python API: `PredexonSimulator(SimConfig(...))` with `await start()` / `await stop()`,
`url_for(key)`, the fault knobs below, `ground_truth()` and `sent()`;
`SimulatorThread` runs one in its own event-loop thread for synchronous tests.
CLI: `polybridge sim predexon --port 8765 [--seed N] [--rate R] ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import itertools
import json
import logging
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from bridge.mapping.predexon import CHANNELS, WILDCARD, dumps, matches
from bridge.sim.predexon_events import EventFactory
from bridge.sim.predexon_rest import PredexonRest, PredexonRestConfig

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class PlanLimits:
    subs_per_connection: int
    items_per_sub: int
    items_total: int
    wildcard_connections_per_channel: int
    connections: int
    """Concurrent connections per key (undocumented numbers; 429 above)."""


PLANS: dict[str, PlanLimits] = {
    "dev": PlanLimits(10, 10, 100, 0, 5),
    "pro": PlanLimits(100, 500, 50_000, 2, 50),
}


@dataclass
class SimConfig:
    """Simulator settings; the fault knobs among them may be changed while it runs."""

    host: str = "127.0.0.1"
    port: int = 0
    seed: int = 0
    rate: float = 20.0
    """Events generated per second on each channel."""
    keys: dict[str, str] = field(
        default_factory=lambda: {"sim-pro-key": "pro", "sim-dev-key": "dev", "sim-free-key": "free"}
    )
    channels: tuple[str, ...] = tuple(CHANNELS)
    ping_interval_s: float = 30.0
    pong_timeout_s: float = 60.0
    idle_timeout_s: float = 120.0
    confirm_scale: float = 1.0
    """Multiplies the 3-5 s pending -> confirmed delay (0.01 for fast tests)."""
    bare_ratio: float = 0.0
    """Share of events sent as the bare `data` object instead of the envelope."""
    duplicate_ratio: float = 0.0
    """Share of event frames sent twice."""
    outbound_frames: int = 5_000
    """Frames queued per connection before new events are dropped (the real 1 MB buffer)."""
    batch_interval_s: float = 0.25
    """Wildcard orderbook `event_batch` period, as documented."""
    max_requests_per_s: int = 50
    """Control messages per connection per second before RATE_LIMIT."""
    capacity_full: bool = False
    """Refuse new connections with 503."""
    allow_keyless: bool = False
    """Accept `/v1` without a key; every request then gets AUTH_REQUIRED."""
    plan_required: dict[str, str] = field(default_factory=dict)
    """channel -> plan needed to subscribe to it (PLAN_REQUIRED otherwise)."""
    tick_s: float = 0.02
    """Generator period: events are produced in small bursts this often."""
    connected_delay_s: float = 0.0
    """Wait this long after the handshake before sending `connected` (a busy server)."""
    drop_every_events: int = 0
    """Drop a connection (with `drop_code`) once it has been sent this many events; 0: never.
    A flaky server or load balancer, for the reconnect benchmark."""
    drop_code: int = 1006
    """Close code of `drop_every_events` drops (1006: abort TCP, see `drop_connections`)."""
    rest: PredexonRestConfig = field(default_factory=PredexonRestConfig)
    """REST history (`/v2/polymarket/trades`, `/activity`): `bridge.sim.predexon_rest`."""


@dataclass(slots=True)
class SentEvent:
    """One event the simulator tried to send to one subscription."""

    data: dict[str, Any]
    at: float
    status: str
    """sent, dropped_stalled, dropped_slow_consumer."""


@dataclass(eq=False)
class SimSubscription:
    id: str
    channel: str
    filters: dict[str, Any]
    conn: SimConnection
    items: int
    wildcard: bool
    sent: list[SentEvent] = field(default_factory=list)
    batch: list[dict[str, Any]] = field(default_factory=list)


@dataclass(eq=False)
class SimConnection:
    id: int
    key: str | None
    plan: str
    ws: ServerConnection
    outbox: asyncio.Queue[tuple[str, list[tuple[SimSubscription, dict[str, Any]]]]]
    subs: dict[str, SimSubscription] = field(default_factory=dict)
    stalled_until: float = 0.0
    idle_since: float = field(default_factory=time.monotonic)
    request_times: list[float] = field(default_factory=list)
    closed: bool = False
    events_sent: int = 0


MALFORMED_KINDS = ("invalid_json", "truncated", "oversized", "wrong_types", "unknown_type")


def malformed_frame(kind: str, sub_id: str) -> str:
    """The bad frame `send_malformed` sends: one of `MALFORMED_KINDS`."""
    good = {
        "type": "event",
        "subscription_id": sub_id,
        "data": {"event_type": "price_feed", "feed": "BTC/USD", "price": 1.5},
    }
    frames = {
        "invalid_json": '{"type": "event", "subscription_id": ' + f'"{sub_id}", data: ]',
        "truncated": json.dumps(good)[:-7],
        "oversized": json.dumps(good | {"pad": "x" * (5 * 1024 * 1024)}),
        "wrong_types": json.dumps(
            good | {"data": {"event_type": "price_feed", "feed": 7, "price": "abc"}}
        ),
        "unknown_type": json.dumps(good | {"data": {"event_type": "surprise"}}),
    }
    return frames[kind]


class PredexonSimulator:
    """The simulated server; see the module docstring."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self.factory = EventFactory(self.config.seed, confirm_scale=self.config.confirm_scale)
        self._rng = random.Random(self.config.seed + 1)  # framing choices, not event content
        self._server: Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closing: set[asyncio.Task[None]] = set()
        self._conns: dict[int, SimConnection] = {}
        self._pending_keys: dict[int, tuple[str | None, str]] = {}
        self._conn_ids = itertools.count(1)
        self._scheduled: list[tuple[float, int, str, dict[str, Any]]] = []
        self._seq = itertools.count()
        self._truth: list[dict[str, Any]] = []
        self._all_subs: dict[str, SimSubscription] = {}
        self.revoked: set[str] = set()
        self.handshakes: Counter[int] = Counter()
        """HTTP status of every handshake answered (101 = accepted)."""
        self.handshake_log: list[tuple[float, int]] = []
        """(monotonic time the handshake request arrived, HTTP status answered), in order."""
        self.drop_log: list[tuple[float, int]] = []
        """(monotonic time, close code) of every connection the fault knobs dropped."""
        self.port = 0
        self.rest: PredexonRest | None = None
        """REST history endpoints (`rest.url`, `rest.faults`); set by `start()`."""

    # -- lifecycle ------------------------------------------------------------------
    async def start(self) -> None:
        cfg = self.config
        self._server = await serve(
            self._handle,
            cfg.host,
            cfg.port,
            process_request=self._process_request,
            ping_interval=cfg.ping_interval_s,
            ping_timeout=cfg.pong_timeout_s,
            max_size=2**20,
            compression=None,
        )
        sock = next(iter(self._server.sockets))
        self.port = sock.getsockname()[1]
        if cfg.rest.enabled:
            self.rest = PredexonRest(
                self._truth, cfg.keys, self.revoked, host=cfg.host, config=cfg.rest
            )
            await self.rest.start()
        self._tasks = [
            asyncio.create_task(self._generate()),
            asyncio.create_task(self._flush_batches()),
        ]
        log.info("predexon simulator listening port=%s", self.port)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            self._server.close()
            if self.rest is not None:
                await self.rest.stop()
                self.rest = None
            await self._server.wait_closed()

    def url_for(self, api_key: str, *, query: bool = False) -> str:
        base = f"ws://{self.config.host}:{self.port}"
        return f"{base}/?api_key={api_key}" if query else f"{base}/v1/{api_key}"

    # -- introspection --------------------------------------------------------------
    def ground_truth(
        self, channel: str, filters: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """Every global event generated on `channel` matching `filters` (None: all), in
        order, as `{"channel", "generated_at" (Unix s), "data"}`."""
        return [
            e
            for e in self._truth
            if e["channel"] == channel and (filters is None or matches(channel, filters, e["data"]))
        ]

    def sent(self, subscription_id: str) -> list[SentEvent]:
        """What the simulator tried to send to one subscription, with each outcome."""
        return list(self._all_subs[subscription_id].sent)

    def subscriptions(self) -> list[SimSubscription]:
        """Every subscription ever acked, in order."""
        return list(self._all_subs.values())

    def connections(self) -> list[SimConnection]:
        return [c for c in self._conns.values() if not c.closed]

    def export_ground_truth(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as out:
            for e in self._truth:
                out.write(dumps(e, sort_keys=False) + "\n")

    # -- fault knobs ----------------------------------------------------------------
    def drop_connections(self, code: int = 1006, key: str | None = None) -> int:
        """Drop every connection (of `key`): 1006 aborts TCP with no close frame; any
        other code closes with that code (1001 shutting down, 4001, 4002...)."""
        n = 0
        for conn in self.connections():
            if key is not None and conn.key != key:
                continue
            n += 1
            self._drop(conn, code)
        return n

    def _drop(self, conn: SimConnection, code: int) -> None:
        conn.closed = True
        self.drop_log.append((time.monotonic(), code))
        if code == 1006:
            conn.ws.transport.abort()
        else:
            task = asyncio.create_task(conn.ws.close(code, _CLOSE_REASONS.get(code, "")))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def stall(self, seconds: float, key: str | None = None) -> None:
        """Stop sending for `seconds`; events meanwhile are dropped (as for a slow client)."""
        until = time.monotonic() + seconds
        for conn in self.connections():
            if key is None or conn.key == key:
                conn.stalled_until = until

    def send_malformed(self, kind: str) -> None:
        """Send one bad frame on every connection (see `malformed_frame` for the kinds)."""
        for conn in self.connections():
            sub_id = next(iter(conn.subs), "sub_000000000000")
            conn.outbox.put_nowait((malformed_frame(kind, sub_id), []))

    def send_resync(self) -> None:
        """Orderbook subscriptions get `resync`, then fresh snapshots and `snapshots_done`."""
        now = time.time()
        for conn in self.connections():
            for sub in list(conn.subs.values()):
                if sub.channel == "orderbook" and not sub.wildcard:
                    self._send(sub, {"event_type": "resync", "timestamp": int(now * 1000)})
                    self._send_snapshots(sub)

    def revoke_key(self, key: str) -> None:
        """The key stops being valid: its next request gets AUTH_FAILED and close 4001."""
        self.revoked.add(key)

    # -- handshake ------------------------------------------------------------------
    def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        key: str | None = None
        if parts.path.startswith("/v1/") and len(parts.path) > 4:
            key = parts.path[4:]
        elif "api_key" in parse_qs(parts.query):
            key = parse_qs(parts.query)["api_key"][0]
        if self.config.capacity_full:
            return self._refuse(ws, HTTPStatus.SERVICE_UNAVAILABLE, "server at capacity")
        if key is None:
            if self.config.allow_keyless and parts.path.rstrip("/") == "/v1":
                self._pending_keys[id(ws)] = (None, "pro")
                self._answered(101)
                return None
            return self._refuse(ws, HTTPStatus.UNAUTHORIZED, "missing API key")
        plan = self.config.keys.get(key)
        if plan is None or key in self.revoked:
            return self._refuse(ws, HTTPStatus.UNAUTHORIZED, "invalid API key")
        if plan not in PLANS:
            return self._refuse(ws, HTTPStatus.FORBIDDEN, "plan has no WebSocket access")
        open_for_key = sum(1 for c in self.connections() if c.key == key)
        if open_for_key >= PLANS[plan].connections:
            return self._refuse(ws, HTTPStatus.TOO_MANY_REQUESTS, "connection limit for plan")
        self._pending_keys[id(ws)] = (key, plan)
        self._answered(101)
        return None

    def _answered(self, status: int) -> None:
        self.handshakes[status] += 1
        self.handshake_log.append((time.monotonic(), status))

    def _refuse(self, ws: ServerConnection, status: HTTPStatus, message: str) -> Response:
        self._answered(status.value)
        body = json.dumps({"error": message}).encode()
        headers = Headers([("Content-Type", "application/json")])
        return Response(status.value, status.phrase, headers, body)

    # -- connection -----------------------------------------------------------------
    async def _handle(self, ws: ServerConnection) -> None:
        key, plan = self._pending_keys.pop(id(ws))
        conn = SimConnection(next(self._conn_ids), key, plan, ws, asyncio.Queue())
        self._conns[conn.id] = conn
        sender = asyncio.create_task(self._sender(conn))
        idle = asyncio.create_task(self._idle_watch(conn))
        try:
            if self.config.connected_delay_s:
                await asyncio.sleep(self.config.connected_delay_s)
            await ws.send(
                json.dumps({"type": "connected", "message": "Connected to Predexon WebSocket"})
            )
            async for message in ws:
                await self._request(conn, message)
        except ConnectionClosed:
            pass
        finally:
            conn.closed = True
            conn.subs.clear()
            sender.cancel()
            idle.cancel()
            self._conns.pop(conn.id, None)

    async def _sender(self, conn: SimConnection) -> None:
        while True:
            frame, targets = await conn.outbox.get()
            try:
                await conn.ws.send(frame)
            except ConnectionClosed:
                return
            now = time.time()
            for sub, data in targets:
                sub.sent.append(SentEvent(data, now, "sent"))
            conn.events_sent += len(targets)
            every = self.config.drop_every_events
            if every and conn.events_sent >= every and not conn.closed:
                self._drop(conn, self.config.drop_code)
                return

    async def _idle_watch(self, conn: SimConnection) -> None:
        period = min(1.0, self.config.idle_timeout_s / 4)
        while not conn.closed:
            await asyncio.sleep(period)
            if conn.subs:
                conn.idle_since = time.monotonic()
            elif time.monotonic() - conn.idle_since >= self.config.idle_timeout_s:
                conn.closed = True
                await conn.ws.close(4000, "idle: no subscriptions")
                return

    def _reply(self, conn: SimConnection, message: dict[str, Any]) -> None:
        conn.outbox.put_nowait((json.dumps(message), []))

    def _error(self, conn: SimConnection, code: str, message: str) -> None:
        self._reply(conn, {"type": "error", "code": code, "message": message})

    async def _request(self, conn: SimConnection, message: str | bytes) -> None:
        now = time.monotonic()
        conn.request_times = [t for t in conn.request_times if now - t < 1.0] + [now]
        if len(conn.request_times) > self.config.max_requests_per_s:
            self._error(conn, "RATE_LIMIT", "too many requests; slow down")
            return
        if conn.key is None:
            self._error(conn, "AUTH_REQUIRED", "an API key is required")
            return
        if conn.key in self.revoked:
            # Sent directly, not via the outbox, so it precedes the close frame.
            error = {
                "type": "error",
                "code": "AUTH_FAILED",
                "message": "API key is no longer valid",
            }
            await conn.ws.send(json.dumps(error))
            conn.closed = True
            await conn.ws.close(4001, "authentication failed")
            return
        try:
            request = json.loads(message)
        except ValueError:
            self._error(conn, "PARSE_ERROR", "message is not valid JSON")
            return
        if not isinstance(request, dict):
            self._error(conn, "PARSE_ERROR", "message must be a JSON object")
            return
        action = request.get("action")
        if action == "subscribe":
            self._subscribe(conn, request)
        elif action == "unsubscribe":
            sub = self._find(conn, request)
            if sub is not None:
                del conn.subs[sub.id]
                if not conn.subs:
                    conn.idle_since = time.monotonic()
                self._reply(conn, {"type": "ack", "subscription_id": sub.id, "channel": "trades"})
        elif action == "update":
            sub = self._find(conn, request)
            if sub is not None:
                if sub.channel == "orderbook":
                    self._error(conn, "INVALID_FILTERS", "update is not supported on orderbook")
                    return
                checked = self._check_filters(conn, sub.channel, request.get("filters"), sub)
                if checked is not None:
                    sub.filters, sub.items, sub.wildcard = checked
                    self._reply(
                        conn, {"type": "ack", "subscription_id": sub.id, "channel": "trades"}
                    )
        else:
            self._error(conn, "UNKNOWN_ACTION", f"unknown action {action!r}")

    def _find(self, conn: SimConnection, request: dict[str, Any]) -> SimSubscription | None:
        sub = conn.subs.get(str(request.get("subscription_id")))
        if sub is None:
            self._error(conn, "SUBSCRIPTION_NOT_FOUND", "no such subscription on this connection")
        return sub

    def _channel_of(self, request: dict[str, Any]) -> str | None:
        for name, ch in CHANNELS.items():
            if request.get("platform") == ch.platform and request.get("type") == ch.type:
                return name
        return None

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
            self._error(conn, "INVALID_FILTERS", "filters must be an object")
            return None
        keys = [k for k in filters if not (channel == "orders" and k == "status")]
        if len(keys) != 1 or keys[0] not in selectors:
            self._error(
                conn, "INVALID_FILTERS", f"exactly one of {', '.join(selectors)} is required"
            )
            return None
        values = filters[keys[0]]
        if (
            not isinstance(values, list)
            or not values
            or not all(isinstance(v, str) for v in values)
        ):
            self._error(conn, "INVALID_FILTERS", f"{keys[0]} must be a non-empty list of strings")
            return None
        if channel == "orders" and filters.get("status", "confirmed") not in (
            "confirmed",
            "all",
            "pending",
        ):
            self._error(conn, "INVALID_FILTERS", "status must be confirmed, all or pending")
            return None
        others = [s for s in conn.subs.values() if s is not replacing]
        wildcard = values == [WILDCARD]
        if wildcard:
            if limits.wildcard_connections_per_channel == 0:
                self._error(conn, "WILDCARD_NOT_ALLOWED", "wildcard subscriptions need a Pro plan")
                return None
            if any(s.channel == channel and not s.wildcard for s in others):
                self._error(
                    conn,
                    "INVALID_FILTERS",
                    "wildcard and regular subscriptions cannot mix on a channel",
                )
                return None
            wild_conns = {
                c.id
                for c in self.connections()
                if c.key == conn.key and c is not conn
                for s in c.subs.values()
                if s.channel == channel and s.wildcard
            }
            if len(wild_conns) >= limits.wildcard_connections_per_channel:
                self._error(
                    conn,
                    "WILDCARD_CONNECTION_LIMIT",
                    "too many wildcard connections for this channel",
                )
                return None
            return filters, 0, True
        if WILDCARD in values:
            self._error(conn, "INVALID_FILTERS", "a wildcard must be the only value")
            return None
        if any(s.channel == channel and s.wildcard for s in others):
            self._error(
                conn,
                "INVALID_FILTERS",
                "wildcard and regular subscriptions cannot mix on a channel",
            )
            return None
        if len(values) > limits.items_per_sub:
            self._error(
                conn,
                "ITEMS_PER_SUB_LIMIT",
                f"at most {limits.items_per_sub} items per subscription",
            )
            return None
        total = sum(
            s.items
            for c in self.connections()
            if c.key == conn.key
            for s in c.subs.values()
            if s is not replacing
        )
        if total + len(values) > limits.items_total:
            self._error(conn, "ITEMS_LIMIT", f"at most {limits.items_total} items in total")
            return None
        return filters, len(values), False

    def _subscribe(self, conn: SimConnection, request: dict[str, Any]) -> None:
        channel = self._channel_of(request)
        if channel is None:
            self._error(conn, "INVALID_FILTERS", "unknown platform/type")
            return
        needed = self.config.plan_required.get(channel)
        if needed == "pro" and conn.plan != "pro":
            self._error(conn, "PLAN_REQUIRED", f"the {channel} channel needs a {needed} plan")
            return
        if len(conn.subs) >= PLANS[conn.plan].subs_per_connection:
            self._error(conn, "SUBSCRIPTION_LIMIT", "too many subscriptions on this connection")
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
        self._reply(conn, {"type": "ack", "subscription_id": sub.id, "channel": "trades"})
        if channel == "orderbook" and not wildcard:
            self._send_snapshots(sub)

    def _send_snapshots(self, sub: SimSubscription) -> None:
        tokens = self.factory.tokens_for(sub.filters)
        now = time.time()
        for token in tokens:
            self._send(sub, self.factory.book_snapshot(token, now))
        self._send(sub, {"event_type": "snapshots_done", "count": len(tokens)})

    # -- events ---------------------------------------------------------------------
    async def _generate(self) -> None:
        cfg = self.config
        owed = dict.fromkeys(cfg.channels, 0.0)
        last = time.monotonic()
        while True:
            await asyncio.sleep(cfg.tick_s)
            mono = time.monotonic()
            now = time.time()
            for channel in cfg.channels:
                owed[channel] += cfg.rate * (mono - last)
                while owed[channel] >= 1.0:
                    owed[channel] -= 1.0
                    for delay, data in self.factory.make(channel, now):
                        heapq.heappush(
                            self._scheduled, (mono + delay, next(self._seq), channel, data)
                        )
            last = mono
            while self._scheduled and self._scheduled[0][0] <= mono:
                _, _, channel, data = heapq.heappop(self._scheduled)
                self._emit(channel, data)

    def _emit(self, channel: str, data: dict[str, Any]) -> None:
        self._truth.append({"channel": channel, "generated_at": time.time(), "data": data})
        for conn in self.connections():
            for sub in list(conn.subs.values()):
                if sub.channel == channel and matches(channel, sub.filters, data):
                    if sub.wildcard and channel == "orderbook":
                        sub.batch.append(data)
                    else:
                        self._send(sub, data)

    def _send(self, sub: SimSubscription, data: dict[str, Any]) -> None:
        conn = sub.conn
        if time.monotonic() < conn.stalled_until:
            sub.sent.append(SentEvent(data, time.time(), "dropped_stalled"))
            return
        if conn.outbox.qsize() >= self.config.outbound_frames:
            sub.sent.append(SentEvent(data, time.time(), "dropped_slow_consumer"))
            return
        if self._rng.random() < self.config.bare_ratio:
            frame = dumps(data, sort_keys=False)
        else:
            frame = dumps(
                {"type": "event", "subscription_id": sub.id, "data": data}, sort_keys=False
            )
        conn.outbox.put_nowait((frame, [(sub, data)]))
        if self._rng.random() < self.config.duplicate_ratio:
            conn.outbox.put_nowait((frame, [(sub, data)]))

    async def _flush_batches(self) -> None:
        while True:
            await asyncio.sleep(self.config.batch_interval_s)
            for conn in self.connections():
                for sub in conn.subs.values():
                    if not sub.batch:
                        continue
                    events, sub.batch = sub.batch, []
                    if time.monotonic() < conn.stalled_until:
                        now = time.time()
                        sub.sent.extend(SentEvent(e, now, "dropped_stalled") for e in events)
                        continue
                    frame = dumps(
                        {
                            "type": "event_batch",
                            "subscription_id": sub.id,
                            "count": len(events),
                            "events": events,
                            "gap": False,
                        },
                        sort_keys=False,
                    )
                    conn.outbox.put_nowait((frame, [(sub, e) for e in events]))


_CLOSE_REASONS = {
    1001: "server shutting down",
    4000: "idle: no subscriptions",
    4001: "authentication failed",
    4002: "limit exceeded",
}


STOP_TIMEOUT_S = 30.0
"""Bound for stopping the simulator: closing a WebSocket whose peer went away (a SIGKILLed
bridge, a stalled connection) waits for websockets' close timeout, 10 s per connection."""


class SimulatorThread:
    """Runs a `PredexonSimulator` in its own event-loop thread (for synchronous tests).

    `with SimulatorThread(config) as runner: runner.sim.url_for(...)`; call knobs with
    `runner.call(runner.sim.drop_connections, 1006)` so they run on the simulator's loop.
    """

    def __init__(self, config: SimConfig | None = None) -> None:
        self.sim = PredexonSimulator(config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, daemon=True, name="predexon-sim"
        )

    def __enter__(self) -> SimulatorThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.sim.start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.sim.stop(), self._loop).result(STOP_TIMEOUT_S)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on the simulator's loop and return its result."""
        done: Future[T] = Future()

        def run() -> None:
            try:
                done.set_result(fn(*args))
            except BaseException as exc:
                done.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return done.result(10)


# --- CLI ---------------------------------------------------------------------------


class _Command:
    def __init__(self, path: tuple[str, ...]) -> None:
        self.path = path

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8765)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--rate", type=float, default=20.0, help="events/s per channel")
        parser.add_argument(
            "--key",
            action="append",
            metavar="KEY=PLAN",
            help="API key and its plan (free, dev, pro); repeatable. Default: sim-pro-key=pro, "
            "sim-dev-key=dev, sim-free-key=free",
        )
        parser.add_argument("--ping-interval", type=float, default=30.0)
        parser.add_argument("--pong-timeout", type=float, default=60.0)
        parser.add_argument("--idle-timeout", type=float, default=120.0)
        parser.add_argument("--confirm-scale", type=float, default=1.0)
        parser.add_argument("--bare-ratio", type=float, default=0.0)
        parser.add_argument("--duplicate-ratio", type=float, default=0.0)
        parser.add_argument(
            "--ground-truth-out", metavar="FILE", help="JSON lines, written on exit"
        )

    def run(self, args: argparse.Namespace) -> int:
        config = SimConfig(
            host=args.host,
            port=args.port,
            seed=args.seed,
            rate=args.rate,
            ping_interval_s=args.ping_interval,
            pong_timeout_s=args.pong_timeout,
            idle_timeout_s=args.idle_timeout,
            confirm_scale=args.confirm_scale,
            bare_ratio=args.bare_ratio,
            duplicate_ratio=args.duplicate_ratio,
        )
        if args.key:
            config.keys = dict(_split_key(k) for k in args.key)
        return asyncio.run(self._serve(config, args.ground_truth_out))

    async def _serve(self, config: SimConfig, truth_out: str | None) -> int:
        sim = PredexonSimulator(config)
        await sim.start()
        key = next((k for k, p in config.keys.items() if p == "pro"), next(iter(config.keys)))
        print(f"predexon simulator listening on {sim.url_for(key)}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await sim.stop()
        if truth_out:
            sim.export_ground_truth(truth_out)
        return 0


def _split_key(text: str) -> tuple[str, str]:
    key, sep, plan = text.partition("=")
    if not sep or not key:
        from bridge.errors import ConfigError

        raise ConfigError(f"--key {text!r}: expected KEY=PLAN (plan: free, dev or pro)")
    return key, plan


def command(path: tuple[str, ...]) -> _Command:
    """Entry point for `polybridge sim predexon`."""
    return _Command(path)
