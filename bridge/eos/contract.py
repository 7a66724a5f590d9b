"""What the exactly-once loop (`bridge.eos.pipeline`) works with: the producer and the
committed positions it needs, the side topics it writes besides the stream's own, and the
counters it reports. The backfill task works with the same."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from bridge.kafka.producer import Headers
from bridge.kafka.state import StateEntry
from bridge.serde.avro import Serializer


@dataclass(frozen=True, slots=True)
class SideTopics:
    """The bridge's own topics and their serializers."""

    state: str
    dead_letters: str
    gaps: str
    state_serializer: Serializer
    dead_letter_serializer: Serializer
    gap_serializer: Serializer


@dataclass(slots=True)
class PipelineStats:
    """Counters a pipeline keeps for metrics, health and the demo's live view."""

    records: int = 0
    bytes: int = 0
    repeats_dropped: int = 0
    dead_letters: int = 0
    gaps: int = 0
    commits: int = 0
    aborts: int = 0
    commit_seconds: list[float] = field(default_factory=list)
    last_commit_at: float | None = None
    first_commit_at: float | None = None
    """The first commit since the stream (re)started on this instance (hand-over time)."""
    last_event_time_us: int | None = None
    running: bool = False
    fenced: int = 0
    """1 once the stream ended because another instance took it over."""


class Producer(Protocol):
    """What the loop needs of a transactional producer (`bridge.kafka.producer`)."""

    transactional_id: str

    @property
    def broken(self) -> bool: ...

    async def init(self) -> None: ...

    async def settle(self, topics: Sequence[str]) -> None:
        """Abort what earlier producers of the id left open, unknown to the coordinator, on
        the partitions of `topics` (after `init`)."""
        ...

    def begin(self) -> None: ...

    def produce(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers | None = None
    ) -> None:
        """Queue a record; `QueueFull` (nothing queued) when the producer's queue is full."""
        ...

    async def wait_for_room(self) -> None:
        """After `QueueFull`: return once the queue has room (without blocking the loop)."""
        ...

    async def commit(self) -> None: ...

    def give_up(self) -> None: ...

    async def abort(self) -> None: ...

    async def aclose(self) -> None:
        """Release the producer once no call of it runs any more (see
        `TransactionalProducer`)."""
        ...


class Positions(Protocol):
    """Where the loop reads its stream's committed position (`bridge.eos.positions`)."""

    def latest(
        self, stream_id: str, complete: bool = True, stop: threading.Event | None = None
    ) -> StateEntry | None:
        """`complete`: also what transactions open now will commit (waits for them);
        `stop`, once set, ends that wait (`ReadStopped`)."""
        ...
