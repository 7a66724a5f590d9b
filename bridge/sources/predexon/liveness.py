"""How long a Predexon connection is known to have delivered everything: our own pings.

A pong is the evidence the live time rests on: the server writes it after what it had
already queued for us, so when it arrives, everything generated before its ping was sent
has arrived too - unless the server dropped some. By the contract it drops only while more
than 1 MB is queued for the connection, and all of that queued data arrives ahead of the
next pong. So fewer than `SERVER_DROP_BYTES` received between one ping's sending and the
next one's pong proves nothing was dropped in between; more, and the window between the
two pings is reported as lagged (a gap: events there may be missing). The receive time of
a frame is no such evidence: under a backlog the frame was generated long before.

A pong older than `ping_timeout_s` means a dead (or hopelessly backlogged) connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from websockets.asyncio.client import ClientConnection

from bridge.timeutil import now_us

log = logging.getLogger(__name__)

SERVER_DROP_BYTES = 768 * 1024
"""Predexon drops events while more than 1 MB is queued for a connection (fact sheet); this
is that less a margin for the WebSocket frame headers the byte count does not see."""

PING_EARLY_BYTES = SERVER_DROP_BYTES // 4
"""Ping before the interval is up once this much has arrived since the last ping, so a fast
busy link does not pile `SERVER_DROP_BYTES` into one window without any backlog."""


HURRY_PING_S = 0.1
"""The ping interval while a subscription on the connection is being handed over: its next
owner waits for this one's live time to pass its own subscription's ack."""


class PongTimeout(Exception):
    """No pong within `ping_timeout_s`: the session ends and the connection tries again."""

    reason = "pong_timeout"


class Liveness:
    """One connection's live evidence, advanced one pong at a time by `heartbeat`."""

    def __init__(self, ping_interval_s: float, ping_timeout_s: float) -> None:
        self.ping_interval_s = ping_interval_s
        self.ping_timeout_s = ping_timeout_s
        self.last_alive_us: int | None = None
        """When the newest ping with a timely pong and no possible drops before it was sent
        (or when the session opened): everything generated before it has arrived."""
        self.bytes_received = 0
        self.ping_bytes = 0
        """`bytes_received` when the last answered ping was sent."""
        self.ping_due = asyncio.Event()
        """Set by `received` after `PING_EARLY_BYTES`: the heartbeat pings at once."""
        self._hurry_until = 0.0

    def hurry(self, seconds: float) -> None:
        """Ping every `HURRY_PING_S` for `seconds` (from now on)."""
        self._hurry_until = time.monotonic() + seconds
        self.ping_due.set()

    def _interval(self) -> float:
        if time.monotonic() < self._hurry_until:
            return min(self.ping_interval_s, HURRY_PING_S)
        return self.ping_interval_s

    def opened(self) -> None:
        """The session's first frame arrived: everything before now is of no concern."""
        self.last_alive_us = now_us()

    def received(self, size: int) -> None:
        self.bytes_received += size
        if self.bytes_received - self.ping_bytes >= PING_EARLY_BYTES:
            self.ping_due.set()

    async def heartbeat(self, ws: ClientConnection, lagged: Callable[[int, int], None]) -> None:
        """Ping until the session ends; `lagged(from_us, to_us)` for each window in which
        the server may have dropped events. Raises `PongTimeout`."""
        window_from = self.last_alive_us or now_us()
        draining = False
        self.ping_bytes = self.bytes_received
        self.ping_due.clear()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval()):
                    await self.ping_due.wait()
            self.ping_due.clear()
            sent, sent_bytes = now_us(), self.bytes_received
            waiter = await ws.ping()
            try:
                async with asyncio.timeout(self.ping_timeout_s):
                    await waiter
            except TimeoutError:
                # A dead link would hold a polite close for `close_timeout` (2 s) more
                # before the reconnect: abort the TCP connection instead.
                ws.transport.abort()
                raise PongTimeout from None
            backlog = self.bytes_received - self.ping_bytes >= SERVER_DROP_BYTES
            if backlog or draining:
                lagged(window_from, sent)
            # The window after a backlog is reported too, as the backlog drains: a CI run
            # saw the server drop events in it with fewer bytes counted than the bound.
            draining = backlog
            self.last_alive_us = window_from = sent
            self.ping_bytes = sent_bytes
