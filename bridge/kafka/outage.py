"""Kafka being away, said in a few lines: when it became unreachable (and what waits on
it), how long it has been away (at most every `REPEAT_S`), and when it is back.

Without this an outage logs a line per client per retry: librdkafka reports "all brokers
are down" to every producer's error callback every few hundred milliseconds, and a broker
restart of a minute left 600 such lines among the few that said what happened. Outages are
process-wide: every client of the bridge talks to the same cluster.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

REPEAT_S = 30.0
"""An outage still going on is said again after this long, with its age."""

STALE_S = 2.0
"""After Kafka answered, reports of it being away are ignored this long: other clients
deliver their 'all brokers are down' of a moment ago (seen: a second outage line 10 ms
after the first one ended)."""


class Reachability:
    """Tracks whether Kafka answers this process. `unreachable()` is called by whatever
    sees the cluster gone (librdkafka's all-brokers-down error, a commit left pending),
    `reachable()` by whatever succeeds against it (a commit, a producer's init). Thread-safe
    (librdkafka's callbacks come from the threads that poll)."""

    def __init__(
        self,
        target: logging.Logger = log,
        repeat_s: float = REPEAT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._target = target
        self._repeat_s = repeat_s
        self._clock = clock
        self._lock = threading.Lock()
        self._since: float | None = None
        self._said_at = 0.0
        self._back_at = float("-inf")
        self._waiting: set[str] = set()
        self._cause = ""

    @property
    def away(self) -> bool:
        """True while an outage is going on."""
        return self._since is not None

    def unreachable(self, waiting: str, cause: str) -> None:
        """Kafka did not answer `waiting` (a stream or client name) because of `cause`."""
        now = self._clock()
        with self._lock:
            self._waiting.add(waiting)
            self._cause = cause
            if self._since is None:
                if now - self._back_at < STALE_S:
                    self._waiting.discard(waiting)
                    return
                self._since = self._said_at = now
                line = f"Kafka unreachable: {cause}; waiting on it: {self._names()}"
            elif now - self._said_at >= self._repeat_s:
                self._said_at = now
                line = (
                    f"Kafka still unreachable after {now - self._since:.0f} s: {cause}; "
                    f"waiting on it: {self._names()}"
                )
            else:
                return
        self._target.warning("%s", line)

    def reachable(self) -> None:
        """Something succeeded against Kafka: an outage, if any, is over."""
        if self._since is None:  # the common case, without the lock
            return
        now = self._clock()
        with self._lock:
            if self._since is None:
                return
            age, self._since = now - self._since, None
            self._back_at = now
            self._waiting.clear()
        self._target.warning("Kafka reachable again after %.1f s", age)

    def _names(self) -> str:
        names = sorted(self._waiting)
        shown = ", ".join(names[:8])
        return shown + (f" and {len(names) - 8} more" if len(names) > 8 else "")


KAFKA = Reachability()
"""The process's one view of the cluster."""
