"""What a source hands to its pipeline: the one contract between upstream and Kafka.

A source turns upstream messages into `Batch`es. A batch is the unit the pipeline treats
atomically: its records, dead letters, gaps and the `Position` after it go into the same
Kafka transaction, or none of them do.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

STREAM_HEADER = "polybridge.stream"
"""Header naming the stream (its id) on every record the bridge writes."""
EVENT_ID_HEADER = "polybridge.event_id"
"""Header carrying a data record's `Record.event_id`."""


@dataclass(slots=True)
class Record:
    """One data record, already serialized for its topic. Not frozen: one is made per
    record, and a frozen dataclass's __init__ (object.__setattr__ per field) costs 3x."""

    topic: str
    key: bytes | None
    value: bytes
    event_id: str
    """Identity used to drop upstream repeats (e.g. `Execution.id`, `(tx_hash, log_index)`)."""
    event_time_us: int | None
    """Upstream event time in microseconds since the epoch, when the upstream gives one."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An upstream message that could not become a record, kept with its raw bytes."""

    raw: bytes
    error: str
    error_type: str
    received_at_us: int
    target_topic: str | None = None


@dataclass(frozen=True, slots=True)
class Gap:
    """A window of upstream time the bridge could not cover, for downstream backfill."""

    from_us: int | None
    """Start of the uncovered window; None when nothing had been covered before."""
    to_us: int
    """End of the uncovered window: when coverage resumed."""
    reason: str
    channel: str
    filters: str
    """The upstream selection (symbols/firms or Predexon filters) as JSON."""
    detected_at_us: int = 0
    """When the bridge wrote it (0 until then)."""
    follow_up: bool = True
    """Whether its backfill writes a follow-up record; False for a window that was asked
    for (`polybridge backfill`, a reconciliation) rather than written by the stream."""

    @property
    def identity(self) -> tuple[int | None, int, str, str]:
        """What makes two records of the gaps topic the same window."""
        return (self.from_us, self.to_us, self.reason, self.channel)


@dataclass(frozen=True, slots=True)
class Position:
    """Where a stream stands: *after the last record committed to Kafka*.

    Restarting a source from a position yields exactly the records that follow it. For
    DropCopy `resume_token` is the token of the last response whose records were all
    committed (so resuming with it yields the next response); `event_time_us` is the newest
    upstream event time committed, the fallback when the token is refused. For Predexon,
    which cannot resume, `live_time_us` is the last instant the subscription was known to be
    connected and delivering; the window after it is a gap if the connection is lost.
    """

    resume_token: bytes | None = None
    event_time_us: int | None = None
    live_time_us: int | None = None
    detail: Mapping[str, str] = field(default_factory=dict)
    """Upstream-specific context persisted with the position (e.g. subscription filters)."""


@dataclass(slots=True)
class Batch:
    """Records of one upstream unit (a gRPC response, a WebSocket frame), and the position
    after it."""

    records: list[Record]
    position: Position
    dead_letters: list[DeadLetter] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ConnectionPool:
    """Upstream connections several sources share (Predexon's connection manager)."""

    pool_id: int
    """The same for every source on this pool, so a total over sources counts it once."""
    attempts: int
    """Connection handshakes attempted so far, over all the pool's connections."""


@dataclass(frozen=True, slots=True)
class SourceStatus:
    """What a source reports about its upstream, read by /metrics and /readyz at every scrape
    (`bridge.metrics`, `bridge.health`). None in a field: the source has no such thing."""

    reconnects: Mapping[str, int] = field(default_factory=dict)
    """Connections (or subscriptions) lost and renewed so far, by reason."""
    unknown_fields: int = 0
    """Records mapped so far that carry upstream fields this version does not know."""
    connected: bool | None = None
    """Whether the upstream call is open (None: not one call per source, e.g. Predexon's
    subscriptions share connections)."""
    maintenance: bool | None = None
    """True while the upstream refuses the stream inside a maintenance window (None: the
    upstream has no maintenance windows)."""
    maintenance_until: str | None = None
    """End of the maintenance window being waited out (ISO 8601, UTC), else None."""
    maintenance_ended_at: float | None = None
    """Monotonic time the stream last left a maintenance window, else None."""
    pool: ConnectionPool | None = None
    """The shared connections the source subscribes on, if any."""


class Source(Protocol):
    """Give me batches from this position, and say how the upstream is doing: the whole
    contract of an upstream."""

    stream_id: str

    def status(self) -> SourceStatus:
        """The upstream's state now (cheap: called on every /metrics and /readyz request)."""
        ...

    def stream(self, start: Position | None) -> AsyncIterator[Batch]:
        """Yield batches following `start` (None: the configured first-start behaviour).

        Reconnects to the upstream by itself, resuming after the last batch it yielded.
        Raises a non-retriable `BridgeError` when it cannot go on.
        """
        ...


@runtime_checkable
class OpensAhead(Protocol):
    """A source that can receive before its stream is taken over (make before break): an
    upstream that cannot replay (Predexon) subscribes first, so the next owner covers the
    time until the previous one's last commit and nothing in between is lost."""

    async def open(self, timeout_s: float) -> int | None:
        """Start receiving, buffering until `stream()`; the instant (us) from which
        everything is received, or None when that was not confirmed within `timeout_s`."""
        ...

    def handing_over(self, seconds: float) -> None:
        """The stream moves to another instance, which waits for this one's live time to
        pass its own start: advance the live time often for `seconds`."""
        ...

    def close(self) -> None:
        """Stop receiving if `stream()` did not take over what `open()` started."""
        ...
