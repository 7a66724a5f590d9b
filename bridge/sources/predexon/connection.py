"""One shared Predexon WebSocket connection and the subscriptions placed on it.

A connection:

- connects, waits for `connected`, then subscribes every subscription placed on it, one
  request at a time (`requests.Exchange`);
- when the connection ends (429/503/network errors/1001/1006/4002...), tries again after
  the delay its `ReconnectPolicy` gives: within 100 ms after losing a healthy (acked)
  connection, since Predexon cannot replay what a delay misses; exponential backoff only
  while attempts fail (see `reconnect`);
- reads every frame at once into the owning subscription's bounded buffer (`Handle`,
  found by `routing`), never waiting for the pipeline: Predexon silently drops
  events for slow readers, so the socket is always drained. A full buffer marks that
  subscription overflowed: it is unsubscribed (the other subscriptions on the connection
  are untouched) and re-subscribed once its reader has drained the buffer; the window is
  reported as lost;
- sends its own pings and reports windows the server may have dropped from
  (`liveness`).

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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from bridge.errors import AuthError, BridgeError
from bridge.serde.exact_json import loads
from bridge.sources.backoff import Backoff
from bridge.sources.predexon.liveness import SERVER_DROP_BYTES, Liveness, PongTimeout
from bridge.sources.predexon.reconnect import ReconnectPolicy
from bridge.sources.predexon.redaction import RedactingLogger, redact
from bridge.sources.predexon.requests import (
    AUTH_CODES,
    RETRY_CODES,
    Exchange,
    Refused,
    Request,
    RequestTimeout,
    Subscribe,
    Unsubscribe,
    Update,
    auth_refused,
    request_refused,
    subscribe_body,
)
from bridge.sources.predexon.routing import Routes
from bridge.sources.predexon.subscription import (
    Acked,
    Failed,
    Frame,
    Handle,
    Lagged,
    Lost,
    SubscriptionSpec,
)
from bridge.streams.channels import CHANNELS, CONTROL_TYPES
from bridge.timeutil import now_us

log = logging.getLogger(__name__)

MAX_FRAME_BYTES = 16 * 1024 * 1024
"""Largest frame the client accepts: above the mapper's dead-letter bound, so an oversized
frame becomes a dead letter instead of a 1009 close and a reconnect."""


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    """What every connection of one manager shares."""

    url: str
    """Carries the API key; never logged."""
    secret: str
    """The API key, removed from whatever is logged or raised."""
    backoff: Callable[[], Backoff]
    """Delays while attempts fail (reconnects, and requests refused with RETRY_CODES)."""
    reconnect: Callable[[], ReconnectPolicy]
    """Each connection's reconnect policy (fast after a healthy drop, else `backoff`)."""
    ping_interval_s: float
    ping_timeout_s: float
    request_timeout_s: float
    open_timeout_s: float

    def redact(self, text: str) -> str:
        return redact(text, self.secret)


class Connection:
    """One WebSocket connection and the subscriptions placed on it."""

    def __init__(
        self, settings: ConnectionSettings, number: int, attempted: Callable[[], None]
    ) -> None:
        self.settings = settings
        self.number = number
        self.attempted = attempted
        """Called before every handshake (the manager counts them)."""
        self.handles: list[Handle] = []
        self.routes = Routes()
        self.exchange = Exchange(settings.request_timeout_s, self._register)
        self.liveness = Liveness(settings.ping_interval_s, settings.ping_timeout_s)
        self.task: asyncio.Task[None] | None = None
        self.ws: ClientConnection | None = None
        self.policy = settings.reconnect()
        """When to try again after the connection ends (told of every subscribe ack)."""

    @property
    def last_alive_us(self) -> int | None:
        return self.liveness.last_alive_us

    def hurry(self, seconds: float) -> None:
        """Advance the live evidence often for `seconds` (a subscription is handed over)."""
        self.liveness.hurry(seconds)

    def add(self, handle: Handle) -> None:
        handle.conn = self
        self.handles.append(handle)
        if self.task is None:
            self.task = asyncio.create_task(self._run(), name=f"predexon-conn-{self.number}")
        elif self.ws is not None:
            self.request(Subscribe(handle))

    def remove(self, handle: Handle) -> None:
        if handle in self.handles:
            self.handles.remove(handle)
        if handle.subscription_id is not None:
            self.routes.drop(handle)
            if self.ws is not None:
                self.request(Unsubscribe(handle, handle.subscription_id))
        handle.subscription_id = None
        handle.conn = None

    def request(self, request: Request) -> None:
        self.exchange.put(request)

    def resubscribe(self, handle: Handle) -> None:
        self.request(Subscribe(handle))

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
        settings = self.settings
        while self.handles:
            self.attempted()
            reason = "cancelled"
            try:
                async with connect(
                    settings.url,
                    max_size=MAX_FRAME_BYTES,
                    ping_interval=None,  # our own pings, to timestamp the pongs
                    open_timeout=settings.open_timeout_s,
                    close_timeout=2,
                    compression=None,
                    logger=RedactingLogger(logging.getLogger(__name__ + ".ws"), settings.secret),
                ) as ws:
                    self.ws = ws
                    await self._session(ws)
                reason = "closed"
            except Refused as refused:
                self._fail_all(refused.error)
                return
            except (PongTimeout, RequestTimeout) as retry:
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
                log.debug(
                    "predexon connection %s error: %s", self.number, settings.redact(str(exc))
                )
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
        self.routes.clear()
        self.exchange.reset()

    async def _session(self, ws: ClientConnection) -> None:
        async with asyncio.timeout(self.settings.open_timeout_s):
            first = await ws.recv()
        self.liveness.opened()
        message = _parse(first)
        if not isinstance(message, dict) or message.get("type") != "connected":
            log.warning("predexon connection %s: unexpected first frame", self.number)
        for handle in self.handles:
            self.request(Subscribe(handle))
        tasks = [
            asyncio.create_task(self._reader(ws)),
            asyncio.create_task(self._control(ws)),
            asyncio.create_task(self.liveness.heartbeat(ws, self._lagged)),
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

    # -- reading ----------------------------------------------------------------------
    async def _reader(self, ws: ClientConnection) -> None:
        async for data in ws:
            received = now_us()
            raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
            self.liveness.received(len(raw))
            message = _parse(raw)
            kind = message.get("type") if isinstance(message, dict) else None
            if kind in ("ack", "error") and isinstance(message, dict):
                self._on_reply(message, received)
            elif kind in CONTROL_TYPES:
                continue
            else:
                handle = self.routes.route(raw, message, self.handles)
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
        if self.exchange.answer(message, received):
            return
        code = message.get("code")
        if code in AUTH_CODES:
            raise auth_refused(str(code), self._describe())
        log.warning(
            "predexon connection %s: unsolicited %s code=%s",
            self.number,
            message.get("type"),
            code,
        )

    def _overflow(self, handle: Handle, at_us: int) -> None:
        log.warning(
            "predexon %s: buffer of %s frames full, re-subscribing once drained",
            handle.spec.describe(),
            handle.capacity,
        )
        handle.push(Lost(at_us, self.last_alive_us, "overflow"))
        handle.overflowed = True
        self._unsubscribe(handle)

    # -- requests ---------------------------------------------------------------------
    def _register(self, handle: Handle, sub_id: str, received: int) -> None:
        """A subscribe was acked (called by the reader, see `Exchange.answer`)."""
        self.policy.subscribed()  # the connection is healthy: a drop now reconnects fast
        handle.subscription_id = sub_id
        self.routes.add(sub_id, handle)
        handle.push(Acked(sub_id, received))

    def _unsubscribe(self, handle: Handle) -> None:
        """Stop routing to an acked subscription and ask the server to end it."""
        if handle.subscription_id is not None:
            self.routes.drop(handle)
            self.request(Unsubscribe(handle, handle.subscription_id))
            handle.subscription_id = None

    async def _control(self, ws: ClientConnection) -> None:
        """Send the queued requests one at a time and act on each reply."""
        retry_backoff = self.settings.backoff()
        while True:
            req = await self.exchange.next()
            handle = req.handle
            spec = handle.spec
            if isinstance(req, Subscribe):
                if handle not in self.handles or handle.overflowed or handle.subscription_id:
                    # Gone, draining, or already subscribed: a handle added while the
                    # session was opening is asked for twice (by `add` and by `_session`),
                    # and a second server-side subscription would deliver everything twice.
                    continue
                body = subscribe_body(spec)
            elif isinstance(req, Unsubscribe):
                body = {"action": "unsubscribe", "subscription_id": req.subscription_id}
            else:
                new_filters = loads(req.filters_json)
                if handle.subscription_id is None or not CHANNELS[spec.channel].updatable:
                    # Orderbook (or not yet acked): replace the subscription.
                    if handle.subscription_id is not None:
                        self._unsubscribe(handle)
                        handle.push(Lost(now_us(), self.last_alive_us, "filters_changed"))
                    handle.spec = SubscriptionSpec(spec.stream_id, spec.channel, new_filters)
                    self.request(Subscribe(handle))
                    continue
                body = {
                    "action": "update",
                    "subscription_id": handle.subscription_id,
                    "filters": new_filters,
                }
            reply = await self.exchange.ask(
                ws, body, handle if isinstance(req, Subscribe) else None
            )
            if reply.get("type") == "ack":
                retry_backoff.reset()
                if isinstance(req, Update):  # a subscribe was registered by the reader
                    handle.spec = SubscriptionSpec(spec.stream_id, spec.channel, new_filters)
                continue
            code = str(reply.get("code"))
            if isinstance(req, Unsubscribe) or code == "SUBSCRIPTION_NOT_FOUND":
                continue
            if code in AUTH_CODES:
                raise auth_refused(code, self._describe())
            if code in RETRY_CODES:
                delay = retry_backoff.next_delay()
                log.warning("predexon %s: %s, retrying in %.2fs", spec.describe(), code, delay)
                await asyncio.sleep(delay)
                self.request(req)
                continue
            handle.failed = True
            message = self.settings.redact(str(reply.get("message", "")))
            handle.push(Failed(request_refused(req, code, message)))
            if handle in self.handles:
                self.handles.remove(handle)


def _parse(raw: bytes | str) -> Any:
    try:
        return loads(raw)
    except (ValueError, RecursionError):
        return None
