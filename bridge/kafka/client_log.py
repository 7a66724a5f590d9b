"""librdkafka's own log lines, through Python logging: at a sensible level, deduplicated.

Every confluent-kafka client the bridge creates merges `client_log_config(conf)` into its
config. With a `logger` set, confluent-kafka turns on librdkafka's `log.queue`: log lines
are queued on the client's main queue and handed to `logger.log()` only by that client's
poll()/flush()/consume() (commit_transaction() too: it flushes), on the calling thread.
They are never printed to stderr and never delivered from librdkafka's own threads.
Measured (confluent-kafka 2.16.1): Producer, Consumer and AdminClient alike deliver nothing
until polled; an AdminClient nobody polls drops its queued lines when it is destroyed
(the failed call reports the outcome as an exception instead).
"""

from __future__ import annotations

import atexit
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bridge.kafka.outage import KAFKA

log = logging.getLogger(__name__)

WINDOW_S = 60.0
"""A repeated librdkafka line is logged once per window, then summarised with its count."""

LOG_LEVEL = 6
"""librdkafka's syslog level threshold (LOG_INFO, its default). Lines below it are never
even formatted; `debug` contexts (a user's kafka property) raise it to LOG_DEBUG."""

# Host:port words ("kafka-1:9092/1", "ipv4#127.0.0.1:9092", "[::1]:9092") are kept: failures
# of different brokers are different messages. Any other number (elapsed ms, counts,
# partitions, ids) varies from one repeat to the next, so it is masked for the comparison.
_ADDRESS_OR_NUMBER = re.compile(r"(?<![\w.#:\[\]-])([\w.#:\[\]-]*:\d+(?:/\w+)?)|\d+")


def shape(text: str) -> str:
    """`text` with its varying numbers masked: equal shapes are the same message."""
    return _ADDRESS_OR_NUMBER.sub(lambda m: m.group(1) or "#", text)


def bridge_level(level: int) -> int:
    """The Python level for a librdkafka line, given confluent-kafka's mapping of its syslog
    level (EMERG..CRIT -> 50, ERR -> 40, WARNING -> 30, NOTICE/INFO -> 20, DEBUG -> 10)."""
    # At most WARNING. librdkafka's ERR lines are mostly broker connection failures and
    # request timeouts that it retries by itself; its CRIT lines are fatal errors of one
    # client, such as a fenced transactional producer. Whatever matters also reaches the
    # bridge through the API (an exception, error_cb, a delivery report), and the bridge
    # reports that outcome at ERROR itself: these lines are the detail behind it (which
    # broker, which cause), worth a warning, not error spam.
    return min(level, logging.WARNING)


@dataclass(slots=True)
class _Seen:
    since: float
    """Start of the current window."""
    repeats: int
    """Lines suppressed in the current window."""
    level: int
    message: str
    """The newest of them, formatted."""


class ClientLog:
    """The object confluent-kafka calls as `logger.log(level, "%s [%s] %s", fac, client,
    text)`: maps the level (`bridge_level`) and logs the first line of each shape (same
    level, facility and `shape(text)`) per `window_s`, then "(repeated N times in the last
    S s)" with the newest text when the window ends. DEBUG lines (opt-in troubleshooting,
    where every line counts) pass through as they are. Thread-safe."""

    def __init__(
        self,
        target: logging.Logger,
        window_s: float = WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._target = target
        self._window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[tuple[int, str, str], _Seen] = {}
        self._next_sweep = float("inf")

    def log(self, level: int, msg: str, *args: Any, **kwargs: Any) -> None:
        if len(args) != 3:  # not confluent-kafka's log_cb shape: pass it on unchanged
            self._target.log(bridge_level(level), msg, *args, **kwargs)
            return
        fac, client, text = (str(a) for a in args)
        level = bridge_level(level)
        if KAFKA.away and level > logging.DEBUG and _is_connection_failure(text):
            level = logging.DEBUG  # the outage's own lines say it (`bridge.kafka.outage`)
        if not self._target.isEnabledFor(level):
            return
        message = f"librdkafka client={client} {fac}: {text}"
        if level <= logging.DEBUG:
            self._target.log(level, "%s", message)
            return
        now = self._clock()
        key = (level, fac, shape(text))
        with self._lock:
            out = self._sweep(now) if now >= self._next_sweep else []
            seen = self._seen.get(key)
            if seen is None:
                self._seen[key] = _Seen(now, 0, level, message)
                self._next_sweep = min(self._next_sweep, now + self._window_s)
                out.append((level, message))
            else:
                seen.repeats += 1
                seen.message = message
        self._emit(out)

    def flush(self) -> None:
        """Log the summaries of all open windows now (at exit: no count is lost)."""
        with self._lock:
            out = self._sweep(self._clock(), everything=True)
        self._emit(out)

    def _sweep(self, now: float, everything: bool = False) -> list[tuple[int, str]]:
        """Close the windows that ended by `now` (with `everything`: also those holding
        repeats) and return their summaries. Lock held."""
        out: list[tuple[int, str]] = []
        self._next_sweep = float("inf")
        for key, seen in list(self._seen.items()):
            end = seen.since + self._window_s
            if now < end and not (everything and seen.repeats):
                self._next_sweep = min(self._next_sweep, end)
                continue
            if seen.repeats == 0:  # quiet for a whole window: the next one is logged afresh
                del self._seen[key]
                continue
            # Still repeating: summarise, and count on in a new window. Lines are timed when
            # delivered (a client may deliver a backlog at once, e.g. on close): a span under
            # a second says nothing, so it is left out.
            span = now - seen.since
            when = f" in the last {span:.0f} s" if span >= 1 else ""
            out.append((seen.level, f"{seen.message} (repeated {seen.repeats} times{when})"))
            seen.since, seen.repeats = now, 0
            self._next_sweep = min(self._next_sweep, now + self._window_s)
        return out

    def _emit(self, lines: list[tuple[int, str]]) -> None:
        for level, message in lines:
            self._target.log(level, "%s", message)


_CONNECTION_FAILURES = ("Connect to ", "brokers are down", "Connection refused", "Disconnected")


def _is_connection_failure(text: str) -> bool:
    return any(words in text for words in _CONNECTION_FAILURES)


_shared = ClientLog(log)


def report(level: int, facility: str, client: str, text: str) -> None:
    """Log a client's error as its librdkafka lines are: deduplicated by shape per window."""
    _shared.log(level, "%s [%s] %s", facility, client, text)


def flush_at_exit() -> None:
    """Log the open windows' summaries when the process exits (the CLI registers this).
    A handler whose stream the host closed first (pytest) is skipped without a traceback."""

    def flush() -> None:
        logging.raiseExceptions = False
        _shared.flush()

    atexit.register(flush)


def client_log_config(conf: Mapping[str, Any]) -> dict[str, Any]:
    """Settings to merge into the config `conf` of every confluent-kafka client:
    `{**conf, **client_log_config(conf)}`. A `log_level` the user set in `conf` is kept."""
    return {
        "logger": _shared,
        "log_level": conf.get("log_level", LOG_LEVEL),
        # The "[thrd:...]" prefix only helps debugging librdkafka itself.
        "log.thread.name": conf.get("log.thread.name", False),
    }
