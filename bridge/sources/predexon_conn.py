"""Shared Predexon WebSocket connections: many subscriptions spread over few connections.

`PredexonConnectionManager.register(spec)` places a subscription on a connection with
room under the plan's limits (subscriptions per connection, no wildcard/regular mix on a
channel) and opens connections as needed. Each connection:

- connects, waits for `connected`, then subscribes every subscription placed on it, one
  request at a time: the protocol has no request id, so replies are matched by arrival
  order, and keeping a single request in flight makes that matching unambiguous;
- when the connection ends (429/503/network errors/1001/1006/4002...), tries again after
  the delay its `ReconnectPolicy` gives: within 100 ms after losing a healthy (acked)
  connection, since Predexon cannot replay what a delay misses; exponential backoff only
  while attempts fail (see `predexon_reconnect`);
- reads every frame at once into the owning subscription's bounded buffer (`Handle`),
  never waiting for the pipeline: Predexon silently drops events for slow readers, so
  the socket is always drained. A full buffer marks that subscription overflowed: it is
  unsubscribed (the other subscriptions on the connection are untouched) and re-subscribed
  once its reader has drained the buffer; the window is reported as lost;
- sends its own pings (`ping_interval_s`) and treats a pong older than `ping_timeout_s` as
  a dead (or hopelessly backlogged) connection. A pong is the evidence the live time rests
  on: the server writes it after what it had already queued for us, so when it arrives,
  everything generated before its ping was sent has arrived too - unless the server
  dropped some. By the contract it drops only while more than 1 MB is queued for the
  connection, and all of that queued data arrives ahead of the next pong. So fewer than
  `SERVER_DROP_BYTES` received between one ping's sending and the next one's pong proves
  nothing was dropped in between; more, and the window between the two pings is reported
  as `Lagged` (a gap: events there may be missing). The receive time of a frame is no
  such evidence: under a backlog the frame was generated long before.

Auth failures (401, close 4001, AUTH_FAILED/AUTH_REQUIRED/INVALID_API_KEY) fail every
subscription of the connection; plan errors (403, PLAN_REQUIRED, WILDCARD_NOT_ALLOWED,
SUBSCRIPTION_LIMIT, ITEMS_*_LIMIT, INVALID_FILTERS) fail the subscription concerned. Both
are non-retriable and name the subscription, never the API key (the URL is redacted
everywhere, including websockets' own log lines).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from bridge.errors import AuthError, BridgeError, ConfigError, UpstreamError
from bridge.mapping.predexon import CHANNELS, CONTROL_TYPES, WILDCARD, dumps, loads, matches
from bridge.sources.backoff import Backoff
from bridge.sources.predexon_reconnect import ReconnectPolicy, failing_backoff

log = logging.getLogger(__name__)


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

MAX_FRAME_BYTES = 16 * 1024 * 1024
"""Largest frame the client accepts: above the mapper's dead-letter bound, so an oversized
frame becomes a dead letter instead of a 1009 close and a reconnect."""

SERVER_DROP_BYTES = 768 * 1024
"""Predexon drops events while more than 1 MB is queued for a connection (fact sheet); this
is that less a margin for the WebSocket frame headers the byte count does not see."""

PING_EARLY_BYTES = SERVER_DROP_BYTES // 4
"""Ping before the interval is up once this much has arrived since the last ping, so a fast
busy link does not pile `SERVER_DROP_BYTES` into one window without any backlog."""

BUFFER_FRAMES = 10_000
"""Frames buffered per subscription between the socket and the pipeline. At Predexon's
busiest documented rate (a wildcard orderbook `event_batch` every 250 ms) this is over 40
minutes of frames, so only a stuck pipeline overflows it; it bounds memory to roughly
10,000 x frame size."""

AUTH_CODES = frozenset({"AUTH_FAILED", "AUTH_REQUIRED", "INVALID_API_KEY"})
PLAN_CODES = frozenset(
    {
        "PLAN_REQUIRED",
        "WILDCARD_NOT_ALLOWED",
        "SUBSCRIPTION_LIMIT",
        "ITEMS_PER_SUB_LIMIT",
        "ITEMS_LIMIT",
        "INVALID_FILTERS",
    }
)
RETRY_CODES = frozenset({"RATE_LIMIT", "CONNECTION_LIMIT", "WILDCARD_CONNECTION_LIMIT"})
"""Errors a later attempt may not meet (a limit held by our own connection being torn
down, a rate window): retried on the same connection after a backoff delay."""


def now_us() -> int:
    return time.time_ns() // 1000


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
    """The connection's live evidence when the frame arrived (see `_Connection.last_alive_us`):
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
    conn: _Connection | None = None

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
            self.conn.request(("subscribe", self))
        return item

    async def wait(self, timeout_s: float) -> None:
        """Until an item is available or `timeout_s` passes."""
        if self.items:
            return
        self.wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), timeout_s)

    def alive_us(self) -> int | None:
        """Last evidence the subscription's connection was delivering, when it is acked."""
        if self.subscription_id is None or self.conn is None:
            return None
        return self.conn.last_alive_us


class _Retry(Exception):
    """Internal: end the session and reconnect after a backoff delay."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Fatal(Exception):
    def __init__(self, error: BridgeError) -> None:
        super().__init__(str(error))
        self.error = error


Request = tuple[str, Handle] | tuple[str, Handle, str]


class _RedactingLogger(logging.LoggerAdapter[logging.Logger]):
    """Hands websockets a logger that removes the API key from every line it logs."""

    def __init__(self, logger: logging.Logger, secret: str) -> None:
        super().__init__(logger, {})
        self.secret = secret

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if self.isEnabledFor(level):
            text = str(msg) % args if args else str(msg)
            kwargs.pop("extra", None)
            self.logger.log(level, "%s", text.replace(self.secret, "***"), **kwargs)


def api_key_of(url: str) -> str | None:
    """The key carried by a Predexon URL (`/v1/<KEY>` or `?api_key=`)."""
    parts = urlsplit(url)
    match = re.fullmatch(r"/v1/([^/]+)", parts.path)
    if match:
        return match.group(1)
    values = parse_qs(parts.query).get("api_key")
    return values[0] if values else None


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
        self.url = url
        self.limits = PLAN_LIMITS[plan]
        self.buffer_frames = buffer_frames
        self.backoff = backoff
        """Delays while attempts fail (reconnects, and requests refused with RETRY_CODES)."""
        self.reconnect = reconnect or (lambda: ReconnectPolicy(self.backoff()))
        """Each connection's reconnect policy (fast after a healthy drop, else `backoff`)."""
        # Our own ping every second bounds how stale the live time can be (gaps start at
        # the last pong); 10 s without a pong is far above loopback/WAN round trips yet
        # well under Predexon's 60 s rule.
        self.ping_interval_s = ping_interval_s
        self.ping_timeout_s = ping_timeout_s
        self.request_timeout_s = request_timeout_s
        self.open_timeout_s = open_timeout_s
        self.secret = api_key_of(url) or ""
        self.connections: list[_Connection] = []
        self.connection_attempts = 0
        """Handshakes attempted, over all connections (tests count reconnect storms)."""

    def redact(self, text: str) -> str:
        return text.replace(self.secret, "***") if self.secret else text

    def register(self, spec: SubscriptionSpec) -> Handle:
        """Place `spec` on a connection and start subscribing; the handle gets its items."""
        if spec.channel not in CHANNELS:
            raise ConfigError(f"{spec.describe()}: unknown channel")
        items = len(spec.selector())
        if spec.wildcard and not self.limits.wildcard:
            raise AuthError(
                f"{spec.describe()}: wildcard subscriptions need a Pro plan",
                reason="WILDCARD_NOT_ALLOWED",
            )
        if not spec.wildcard and items > self.limits.items_per_sub:
            raise ConfigError(
                f"{spec.describe()}: {items} items exceed the plan's "
                f"{self.limits.items_per_sub} per subscription"
            )
        handle = Handle(spec, self.buffer_frames)
        for conn in self.connections:
            if conn.has_room_for(spec):
                break
        else:
            conn = _Connection(self, len(self.connections) + 1)
            self.connections.append(conn)
        conn.add(handle)
        return handle

    def unregister(self, handle: Handle) -> None:
        conn = handle.conn
        if conn is not None:
            conn.remove(handle)
            if not conn.handles and conn in self.connections:  # not already closed
                conn.close()
                self.connections.remove(conn)

    def update(self, handle: Handle, filters: dict[str, Any]) -> None:
        """Replace a subscription's filters: `update` where allowed, else unsubscribe and
        subscribe again (orderbook)."""
        if handle.conn is not None:
            handle.conn.request(("update", handle, dumps(filters)))

    async def close(self) -> None:
        for conn in self.connections:
            conn.close()
        for conn in self.connections:
            await conn.wait_closed()
        self.connections.clear()


class _Connection:
    """One WebSocket connection and the subscriptions placed on it."""

    def __init__(self, manager: PredexonConnectionManager, number: int) -> None:
        self.manager = manager
        self.number = number
        self.handles: list[Handle] = []
        self.by_sub_id: dict[str, Handle] = {}
        self.requests: asyncio.Queue[Request] = asyncio.Queue()
        self.reply: asyncio.Future[tuple[dict[str, Any], int]] | None = None
        self.subscribing: Handle | None = None
        """The handle whose subscribe request awaits its reply."""
        self.last_alive_us: int | None = None
        """When the newest ping with a timely pong and no possible drops before it was sent
        (or when the session opened): everything generated before it has arrived."""
        self.bytes_received = 0
        self.ping_bytes = 0
        """`bytes_received` when the last answered ping was sent."""
        self.ping_due = asyncio.Event()
        """Set by the reader after `PING_EARLY_BYTES`: the heartbeat pings at once."""
        self.task: asyncio.Task[None] | None = None
        self.ws: ClientConnection | None = None
        self.policy = manager.reconnect()
        """When to try again after the connection ends (told of every subscribe ack)."""

    # -- placement ------------------------------------------------------------------
    def has_room_for(self, spec: SubscriptionSpec) -> bool:
        if len(self.handles) >= self.manager.limits.subs_per_connection:
            return False
        # Wildcard and regular subscriptions cannot share a channel on one connection.
        return not any(
            h.spec.channel == spec.channel and (h.spec.wildcard or spec.wildcard)
            for h in self.handles
        )

    def add(self, handle: Handle) -> None:
        handle.conn = self
        self.handles.append(handle)
        if self.task is None:
            self.task = asyncio.create_task(self._run(), name=f"predexon-conn-{self.number}")
        elif self.ws is not None:
            self.request(("subscribe", handle))

    def remove(self, handle: Handle) -> None:
        if handle in self.handles:
            self.handles.remove(handle)
        if handle.subscription_id is not None:
            self.by_sub_id.pop(handle.subscription_id, None)
            if self.ws is not None:
                self.request(("unsubscribe", handle, handle.subscription_id))
        handle.subscription_id = None
        handle.conn = None

    def request(self, req: Request) -> None:
        self.requests.put_nowait(req)

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def wait_closed(self) -> None:
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    def _describe(self) -> str:
        return "; ".join(h.spec.describe() for h in self.handles) or "no subscriptions"

    # -- connection loop ------------------------------------------------------------
    async def _run(self) -> None:
        manager = self.manager
        while self.handles:
            manager.connection_attempts += 1
            reason = "cancelled"
            try:
                async with connect(
                    manager.url,
                    max_size=MAX_FRAME_BYTES,
                    ping_interval=None,  # our own pings, to timestamp the pongs
                    open_timeout=manager.open_timeout_s,
                    close_timeout=2,
                    compression=None,
                    logger=_RedactingLogger(logging.getLogger(__name__ + ".ws"), manager.secret),
                ) as ws:
                    self.ws = ws
                    await self._session(ws)
                reason = "closed"
            except _Fatal as fatal:
                self._fail_all(fatal.error)
                return
            except _Retry as retry:
                reason = retry.reason
            except InvalidStatus as exc:
                status = exc.response.status_code
                if status in (401, 403):
                    what = "API key refused" if status == 401 else "plan has no WebSocket access"
                    self._fail_all(
                        AuthError(
                            f"predexon handshake HTTP {status} ({what}) for {self._describe()}",
                            reason=f"http_{status}",
                        )
                    )
                    return
                reason = f"http_{status}"
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else 1006
                if code == 4001:
                    self._fail_all(
                        AuthError(
                            f"predexon closed the connection with 4001 (authentication failed) "
                            f"for {self._describe()}",
                            reason="close_4001",
                        )
                    )
                    return
                reason = f"close_{code}"
            except (OSError, TimeoutError, WebSocketException) as exc:
                reason = type(exc).__name__
                log.debug("predexon connection %s error: %s", self.number, manager.redact(str(exc)))
            finally:
                self.ws = None
                self._lose_all(reason)
            delay = self.policy.next_delay(reason)
            log.warning(
                "predexon connection %s lost reason=%s retry_in=%.3fs (%s) subscriptions=%s",
                self.number,
                reason,
                delay,
                self.policy.last,
                len(self.handles),
            )
            await asyncio.sleep(delay)

    def _fail_all(self, error: BridgeError) -> None:
        log.error("predexon connection %s: %s", self.number, error)
        for handle in list(self.handles):
            handle.failed = True
            handle.push(Failed(error))
        self.handles.clear()

    def _lose_all(self, cause: str) -> None:
        at = now_us()
        for handle in self.handles:
            if handle.subscription_id is not None:
                handle.push(Lost(at, self.last_alive_us, "disconnected", cause))
            handle.subscription_id = None
            handle.overflowed = False
        self.by_sub_id.clear()
        if self.reply is not None and not self.reply.done():
            self.reply.cancel()
        self.reply = None
        # Requests of the old session are void: subscriptions are renewed on connect.
        self.requests = asyncio.Queue()

    async def _session(self, ws: ClientConnection) -> None:
        first = await asyncio.wait_for(ws.recv(), self.manager.open_timeout_s)
        self.last_alive_us = now_us()
        message = _parse(first)
        if not isinstance(message, dict) or message.get("type") != "connected":
            log.warning("predexon connection %s: unexpected first frame", self.number)
        for handle in self.handles:
            self.request(("subscribe", handle))
        tasks = [
            asyncio.create_task(self._reader(ws)),
            asyncio.create_task(self._control(ws)),
            asyncio.create_task(self._heartbeat(ws)),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _heartbeat(self, ws: ClientConnection) -> None:
        """Advance the live evidence one pong at a time (see the module docstring)."""
        window_from = self.last_alive_us or now_us()
        self.ping_bytes = self.bytes_received
        self.ping_due.clear()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ping_due.wait(), self.manager.ping_interval_s)
            self.ping_due.clear()
            sent, sent_bytes = now_us(), self.bytes_received
            waiter = await ws.ping()
            try:
                await asyncio.wait_for(waiter, self.manager.ping_timeout_s)
            except TimeoutError:
                # A dead link would hold a polite close for `close_timeout` (2 s) more
                # before the reconnect: abort the TCP connection instead.
                ws.transport.abort()
                raise _Retry("pong_timeout") from None
            if self.bytes_received - self.ping_bytes >= SERVER_DROP_BYTES:
                self._lagged(window_from, sent)
            self.last_alive_us = window_from = sent
            self.ping_bytes = sent_bytes

    def _lagged(self, from_us: int, to_us: int) -> None:
        log.warning(
            "predexon connection %s: %d+ bytes queued by the server between pings: events "
            "it generated in the last %.1fs may have been dropped (reported as a gap)",
            self.number,
            SERVER_DROP_BYTES,
            (to_us - from_us) / 1e6,
        )
        for handle in self.handles:
            if handle.subscription_id is not None:
                handle.push(Lagged(from_us, to_us))

    async def _reader(self, ws: ClientConnection) -> None:
        async for data in ws:
            received = now_us()
            raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
            self.bytes_received += len(raw)
            if self.bytes_received - self.ping_bytes >= PING_EARLY_BYTES:
                self.ping_due.set()
            message = _parse(raw)
            kind = message.get("type") if isinstance(message, dict) else None
            if kind in ("ack", "error") and isinstance(message, dict):
                self._on_reply(message, received)
            elif kind in CONTROL_TYPES:
                continue
            else:
                handle = self._route(raw, message)
                if handle is None:
                    continue
                if handle.frames >= handle.capacity:
                    self._overflow(handle, received)
                else:
                    handle.push(Frame(raw, message, received, self.last_alive_us))
        # A clean close (1000, 1001) ends the iteration without raising: raise it here, so
        # the session ends now rather than when the next ping fails (up to a second later).
        raise ws.close_exc

    def _on_reply(self, message: dict[str, Any], received: int) -> None:
        if self.reply is not None and not self.reply.done():
            handle = self.subscribing
            if handle is not None and message.get("type") == "ack":
                # Registered here, in the reader, not when `_control` next runs: the frames
                # right behind an ack (orderbook snapshots) must already route to it.
                self._register(handle, str(message.get("subscription_id")), received)
            self.reply.set_result((message, received))
            return
        code = message.get("code")
        if code in AUTH_CODES:
            raise _Fatal(
                AuthError(f"predexon error {code} for {self._describe()}", reason=str(code).lower())
            )
        log.warning(
            "predexon connection %s: unsolicited %s code=%s",
            self.number,
            message.get("type"),
            code,
        )

    def _route(self, raw: bytes, message: Any) -> Handle | None:
        """The subscription a data frame belongs to (None: a stale subscription's event)."""
        if isinstance(message, dict):
            sub_id = message.get("subscription_id")
            if isinstance(sub_id, str):
                return self.by_sub_id.get(sub_id)
            if "event_type" in message:
                return self._route_bare(message)
        else:
            # Not JSON: find the subscription id in the text, so the dead letter lands
            # on the right stream; otherwise the first subscription keeps it.
            found = re.search(rb'"subscription_id"\s*:\s*"([^"]+)"', raw)
            if found and found.group(1).decode(errors="replace") in self.by_sub_id:
                return self.by_sub_id[found.group(1).decode()]
        live = [h for h in self.handles if h.subscription_id is not None]
        return live[0] if live else None

    def _route_bare(self, data: dict[str, Any]) -> Handle | None:
        """A bare event (no envelope): the live subscription whose filters select it."""
        event_type = data.get("event_type")
        live = [h for h in self.handles if h.subscription_id is not None]
        same = [h for h in live if event_type in CHANNELS[h.spec.channel].event_types]
        for handle in same:
            if matches(handle.spec.channel, handle.spec.filters, data):
                return handle
        candidates = same or live
        return candidates[0] if candidates else None

    def _overflow(self, handle: Handle, at_us: int) -> None:
        log.warning(
            "predexon %s: buffer of %s frames full, re-subscribing once drained",
            handle.spec.describe(),
            handle.capacity,
        )
        handle.push(Lost(at_us, self.last_alive_us, "overflow"))
        handle.overflowed = True
        if handle.subscription_id is not None:
            self.by_sub_id.pop(handle.subscription_id, None)
            self.request(("unsubscribe", handle, handle.subscription_id))
            handle.subscription_id = None

    async def _control(self, ws: ClientConnection) -> None:
        retry_backoff = self.manager.backoff()
        while True:
            req = await self.requests.get()
            action, handle = req[0], req[1]
            if action == "subscribe" and (
                handle not in self.handles or handle.overflowed or handle.subscription_id
            ):
                # Gone, draining, or already subscribed: a handle added while the session
                # was opening is asked for twice (by `add` and by `_session`), and a second
                # server-side subscription would deliver everything twice.
                continue
            spec = handle.spec
            channel = CHANNELS[spec.channel]
            if action == "subscribe":
                body: dict[str, Any] = {
                    "action": "subscribe",
                    "platform": channel.platform,
                    "version": 1,
                    "type": channel.type,
                    "filters": spec.filters,
                }
            elif action == "unsubscribe":
                body = {"action": "unsubscribe", "subscription_id": req[2]}  # type: ignore[misc]
            else:
                new_filters = loads(req[2])  # type: ignore[misc]
                if handle.subscription_id is None or not channel.updatable:
                    # Orderbook (or not yet acked): replace the subscription.
                    if handle.subscription_id is not None:
                        self.by_sub_id.pop(handle.subscription_id, None)
                        self.request(("unsubscribe", handle, handle.subscription_id))
                        handle.subscription_id = None
                        handle.push(Lost(now_us(), self.last_alive_us, "filters_changed"))
                    handle.spec = SubscriptionSpec(spec.stream_id, spec.channel, new_filters)
                    self.request(("subscribe", handle))
                    continue
                body = {
                    "action": "update",
                    "subscription_id": handle.subscription_id,
                    "filters": new_filters,
                }
            reply, _ = await self._ask(ws, body, handle if action == "subscribe" else None)
            if reply.get("type") == "ack":
                retry_backoff.reset()
                if action == "update":  # a subscribe was registered by `_on_reply` already
                    handle.spec = SubscriptionSpec(spec.stream_id, spec.channel, body["filters"])
                continue
            code = str(reply.get("code"))
            if action == "unsubscribe" or code == "SUBSCRIPTION_NOT_FOUND":
                continue
            if code in AUTH_CODES:
                raise _Fatal(
                    AuthError(f"predexon error {code} for {self._describe()}", reason=code.lower())
                )
            if code in RETRY_CODES:
                delay = retry_backoff.next_delay()
                log.warning("predexon %s: %s, retrying in %.2fs", spec.describe(), code, delay)
                await asyncio.sleep(delay)
                self.request(req)
                continue
            # Plan and filter errors, and anything undocumented: this subscription cannot
            # go on as configured; the others on the connection are not affected.
            error = AuthError if code in PLAN_CODES else UpstreamError
            message = self.manager.redact(str(reply.get("message", "")))
            handle.failed = True
            handle.push(
                Failed(
                    error(
                        f"predexon refused {action} for {spec.describe()}: {code} {message}",
                        reason=code.lower(),
                        retriable=False,
                    )
                )
            )
            if handle in self.handles:
                self.handles.remove(handle)

    def _register(self, handle: Handle, sub_id: str, received: int) -> None:
        self.policy.subscribed()  # the connection is healthy: a drop now reconnects fast
        handle.subscription_id = sub_id
        self.by_sub_id[sub_id] = handle
        handle.push(Acked(sub_id, received))

    async def _ask(
        self, ws: ClientConnection, body: dict[str, Any], subscribing: Handle | None = None
    ) -> tuple[dict[str, Any], int]:
        self.reply = asyncio.get_running_loop().create_future()
        self.subscribing = subscribing
        await ws.send(dumps(body, sort_keys=False))
        try:
            return await asyncio.wait_for(self.reply, self.manager.request_timeout_s)
        except TimeoutError:
            raise _Retry("request_timeout") from None
        finally:
            self.reply = None
            self.subscribing = None


def _parse(raw: bytes | str) -> Any:
    try:
        return loads(raw)
    except (ValueError, RecursionError):
        return None
