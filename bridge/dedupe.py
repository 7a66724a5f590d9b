"""Dropping upstream repeats, transaction-aware.

What a filter learns from the open transaction is provisional: it becomes part of the
filter's memory only when the transaction commits, and is forgotten when it aborts.

Filters are seeded from what is *visible* in Kafka, not from what the state says was
committed: a broker may expose records of a transaction that never committed (Tansu shows
aborted transactions and a killed producer's open transaction to read_committed readers).
Records written after the stream's last committed position are "unclaimed": the upstream
will deliver them again after a restart, and those replays are repeats. On Apache Kafka
nothing is unclaimed and the seeding changes nothing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from bridge.records import Record


@dataclass(frozen=True, slots=True)
class Visible:
    """A record read back from Kafka, with when it was produced."""

    record: Record
    written_at_us: int


class RepeatFilter(Protocol):
    def seed(self, visible: Iterable[Visible], committed_at_us: int | None) -> None:
        """Learn what Kafka shows (oldest first); records written after `committed_at_us`,
        when the stream's position was last committed, are unclaimed."""

    def is_repeat(self, record: Record) -> bool:
        """True if the record was written before; otherwise remember it as pending."""

    def commit(self) -> None: ...

    def abort(self) -> None: ...


class RecentIds:
    """Drops records whose event id is among the last `size` committed (at-least-once upstreams)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._ids: set[str] = set()
        self._order: deque[str] = deque()  # oldest first, to forget in insertion order
        self._pending: dict[str, None] = {}

    def seed(self, visible: Iterable[Visible], committed_at_us: int | None) -> None:
        # Unclaimed records are remembered like committed ones: their replay is a repeat.
        self._remember(item.record.event_id for item in visible)

    def is_repeat(self, record: Record) -> bool:
        event_id = record.event_id
        if event_id in self._ids or event_id in self._pending:
            return True
        self._pending[event_id] = None
        return False

    def commit(self) -> None:
        self._remember(self._pending)
        self._pending.clear()

    def abort(self) -> None:
        self._pending.clear()

    def _remember(self, event_ids: Iterable[str]) -> None:
        ids, order = self._ids, self._order
        for event_id in event_ids:
            if event_id not in ids:
                ids.add(event_id)
                order.append(event_id)
        for _ in range(len(order) - self._size):
            ids.discard(order.popleft())


class LatestPerKey:
    """Drops a record identical to the last one written for its key (instrument states).

    Instrument state changes carry no id or time: the same content for a symbol twice in a
    row is a repeat (e.g. the snapshot the exchange sends on every connect), while a symbol
    returning to an earlier state (OPEN -> HALTED -> OPEN) is a real change and is kept.
    """

    def __init__(self) -> None:
        self._latest: dict[bytes | None, str] = {}
        self._pending: dict[bytes | None, str] = {}
        self._unclaimed: dict[bytes | None, deque[str]] = {}

    def seed(self, visible: Iterable[Visible], committed_at_us: int | None) -> None:
        # "Latest" is as of the committed position (what the upstream's replay and its
        # snapshot start from); records written after it are expected again, in order.
        for item in visible:
            key, event_id = item.record.key, item.record.event_id
            if committed_at_us is None or item.written_at_us <= committed_at_us:
                self._latest[key] = event_id
            else:
                self._unclaimed.setdefault(key, deque()).append(event_id)

    def is_repeat(self, record: Record) -> bool:
        key, event_id = record.key, record.event_id
        # Equal to the latest: the snapshot sent on connect, or an immediate re-send.
        if self._pending.get(key, self._latest.get(key)) == event_id:
            return True
        unclaimed = self._unclaimed.get(key)
        if unclaimed:
            if unclaimed[0] == event_id:
                unclaimed.popleft()
                self._pending[key] = event_id
                return True
            unclaimed.clear()  # the replay diverged: back to comparing with the latest
        self._pending[key] = event_id
        return False

    def commit(self) -> None:
        self._latest.update(self._pending)
        self._pending.clear()

    def abort(self) -> None:
        self._pending.clear()
