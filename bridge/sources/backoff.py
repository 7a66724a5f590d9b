"""Reconnect delays: exponential backoff with full jitter, reset after a healthy period.

Shared by every upstream source. The policy is AWS's "full jitter"
(`delay = uniform(0, min(cap, initial * 2**attempt))`): it spreads many clients that lost
the same server over the whole window, so they do not reconnect in lockstep, and it is the
variant with the least total work in AWS's comparison. `jitter=0.5` gives "equal jitter"
(`uniform(ceiling / 2, ceiling)`) instead: a floor under every delay, so successive delays
grow for certain (Predexon's failing reconnects use it). The attempt counter only goes back
to zero once a connection has stayed up for `reset_after_s`: a server that accepts and then
drops every connection at once keeps us backing off instead of hammering it at the
initial delay.

Usage::

    backoff = Backoff()
    while True:
        try:
            conn = await connect()
        except RetriableError:
            await asyncio.sleep(backoff.next_delay())
            continue
        backoff.success()          # connected: start the healthy timer
        ...                        # on loss: loop and call next_delay() again
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable


class Backoff:
    """Exponential backoff with full (or partial) jitter; see the module docstring.

    - `next_delay()` returns the delay before the next attempt and counts the attempt.
      If the last `success()` is at least `reset_after_s` old (`healthy()`), the counter is
      reset first, so the first delay after a long healthy period is drawn from
      `[0, initial_s]` again.
    - `success()` says "the connection is up" (e.g. subscribed and acknowledged); it starts
      the healthy timer but does not reset the counter by itself.
    - `healthy()` is True when a success was recorded `reset_after_s` ago or more and no
      failure (`next_delay()`) was counted since.

    `jitter` is the randomised share of each delay: 1.0 (default) draws from
    `[0, ceiling)`, 0.5 from `[ceiling / 2, ceiling)`, 0.0 waits exactly the ceiling.
    `rng` returns floats in [0, 1) and `clock` monotonic seconds; both are injectable so
    tests are deterministic.
    """

    def __init__(
        self,
        initial_s: float = 1.0,
        cap_s: float = 30.0,
        reset_after_s: float = 60.0,
        *,
        jitter: float = 1.0,
        rng: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if initial_s <= 0 or cap_s < initial_s or reset_after_s < 0:
            raise ValueError("Backoff needs 0 < initial_s <= cap_s and reset_after_s >= 0")
        if not 0.0 <= jitter <= 1.0:
            raise ValueError("Backoff needs 0 <= jitter <= 1")
        self.initial_s = initial_s
        self.cap_s = cap_s
        self.reset_after_s = reset_after_s
        self.jitter = jitter
        self._rng = rng
        self._clock = clock
        self._attempt = 0
        self._up_since: float | None = None

    @property
    def attempt(self) -> int:
        """Failures counted since the last reset."""
        return self._attempt

    def ceiling(self) -> float:
        """Upper bound of the next delay (before jitter), given the current attempt count."""
        # min() before the power would overflow on long outages: cap the exponent instead.
        exponent = min(self._attempt, 62)
        return float(min(self.cap_s, self.initial_s * (2**exponent)))

    def next_delay(self) -> float:
        """Seconds to wait before the next attempt: uniform in
        `[ceiling * (1 - jitter), ceiling)` (`[0, ceiling)` by default)."""
        if self.healthy():
            self._attempt = 0
        ceiling = self.ceiling()
        self._attempt += 1
        self._up_since = None
        return ceiling * (1.0 - self.jitter + self.jitter * self._rng())

    def success(self) -> None:
        """The connection is up; the counter resets once it has stayed up `reset_after_s`."""
        if self._up_since is None:
            self._up_since = self._clock()

    def healthy(self) -> bool:
        """True when the connection has been up for at least `reset_after_s`."""
        return self._up_since is not None and self._clock() - self._up_since >= self.reset_after_s

    def reset(self) -> None:
        """Forget every failure (e.g. after a configuration change)."""
        self._attempt = 0
        self._up_since = None
