"""When a Predexon connection tries again: at once after losing a healthy connection,
backing off only while attempts fail.

Predexon has no replay: everything generated between a drop and the next acknowledged
subscription is lost for good (it becomes a gap record), so reconnect delay is data loss.
The shared `Backoff` alone (1 s doubling to 30 s, reset only after 60 s up) counted every
drop as a failure: against a server that drops a connection every few seconds, its
ceilings climbed to 30 s and about half of all events fell into gaps.

`ReconnectPolicy.next_delay(reason)` decides, once per ended connection:

- fast: the connection was healthy - `connected` arrived and the server acknowledged a
  subscription (`subscribed()`) - and did not end in a way that asks us to wait
  (`BACKOFF_REASONS`). The next attempt starts after `uniform(0, FAST_JITTER_S)` and the
  failure count starts over: the drop was the server's doing, not a failed attempt.
- backoff: everything else - a handshake refused (429, 503) or failing (network, timeout),
  a connection that never got an ack, a close saying "limit exceeded" (4002) or "try
  later" -: exponential with equal jitter (`failing_backoff()`), growing for as long as
  attempts keep failing.
- never: auth failures (401, 403, close 4001, AUTH_*) end the connection's subscriptions
  before any delay is asked for (`connection`).

A budget (`FAST_BURST`, one more every `FAST_REFILL_S`) bounds the fast path: a server that
acknowledges and then drops every connection at once gets about one handshake a second
from us, not a tight loop; a connection dropped every few seconds stays on the fast path.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from bridge.sources.backoff import Backoff

FAST_JITTER_S = 0.1
"""First attempt after a healthy connection drops: uniform in [0, 100 ms). The jitter
spreads the connections (ours and other clients') that one server restart dropped at the
same instant; 100 ms keeps the attempt well inside 250 ms of the drop with room for
noticing it and tearing the session down on a loaded machine (a few ms on loopback)."""

FAIL_INITIAL_S = 0.5
"""First delay after a failed attempt: [0.25 s, 0.5 s). A refusal (429 connection limit,
503 capacity) is usually gone within a second; waiting longer would only lose data."""

FAIL_CAP_S = 15.0
"""Delays double up to [7.5 s, 15 s): after a long outage ends, at most ~15 s more is lost,
and one client makes at most ~6 attempts a minute against a server that keeps refusing
(DropCopy, which can replay, caps at 30 s; here every second of delay is lost data)."""

FAIL_JITTER = 0.5
"""Equal jitter, `uniform(ceiling / 2, ceiling)`: a floor under every delay, so successive
failures wait longer for certain and a refusal is never retried within a few ms."""

FAST_BURST = 10
FAST_REFILL_S = 1.0
"""Fast reconnects: 10 in a row, then one per second on average (a token bucket). Drops at
most once a second stay fast indefinitely; an ack-then-drop loop is held to ~1 handshake/s
plus backoff instead of hammering the server."""

BACKOFF_REASONS = frozenset(
    {
        "close_4002",  # Predexon: limit exceeded (connections, subscriptions, items)
        "close_1008",  # policy violation
        "close_1013",  # try again later
        "request_timeout",  # the server stopped answering requests: sick, not dropped
    }
)
"""Ends of a healthy connection that still back off: the server said so (or cannot
answer). Other ends (1000, 1001, 1006, 1011, pong timeout, ...) reconnect fast; if the
server is really away, the fast attempt fails and backoff takes over."""


def failing_backoff() -> Backoff:
    """The delays while attempts fail (see `FAIL_INITIAL_S`, `FAIL_CAP_S`, `FAIL_JITTER`)."""
    return Backoff(FAIL_INITIAL_S, FAIL_CAP_S, jitter=FAIL_JITTER)


class ReconnectPolicy:
    """One connection's reconnect delays; see the module docstring.

    Call `subscribed()` when the server acknowledges a subscription, and `next_delay(reason)`
    after the connection ends (the reason is the gap cause: `close_1006`, `http_503`, ...).
    `last` says which path the last delay took (`fast` or `backoff`), for logs and tests.
    """

    def __init__(
        self,
        backoff: Backoff | None = None,
        *,
        fast_jitter_s: float = FAST_JITTER_S,
        burst: int = FAST_BURST,
        refill_s: float = FAST_REFILL_S,
        rng: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if fast_jitter_s < 0 or burst < 1 or refill_s <= 0:
            raise ValueError("ReconnectPolicy needs fast_jitter_s >= 0, burst >= 1, refill_s > 0")
        self.backoff = backoff if backoff is not None else failing_backoff()
        self.fast_jitter_s = fast_jitter_s
        self.burst = burst
        self.refill_s = refill_s
        self._rng = rng
        self._clock = clock
        self._tokens = float(burst)
        self._filled_at = clock()
        self._healthy = False
        self.last = ""

    def subscribed(self) -> None:
        """The server acknowledged a subscription on the current connection: it is healthy."""
        self._healthy = True
        self.backoff.success()

    def next_delay(self, reason: str) -> float:
        """Seconds to wait before the next attempt, given why the connection ended."""
        healthy, self._healthy = self._healthy, False
        if healthy and reason not in BACKOFF_REASONS and self._take_token():
            self.backoff.reset()
            self.last = "fast"
            return self._rng() * self.fast_jitter_s
        self.last = "backoff"
        return self.backoff.next_delay()

    def _take_token(self) -> bool:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._filled_at) / self.refill_s)
        self._filled_at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True
