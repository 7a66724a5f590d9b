"""Dropping upstream repeats, transaction-aware.

Upstreams deliver at least once, and the exchange re-sends records after a resume. What a
filter learns from the open transaction is provisional: it becomes part of the filter's
memory only when the transaction commits, and is forgotten when it aborts. A filter is
seeded at start (and after a producer is replaced) from the stream's own recent records,
read back read_committed from its topic: exactly what Kafka holds for the stream.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Protocol

from bridge.records import Record


class RepeatFilter(Protocol):
    def seed(self, committed: Iterable[Record]) -> None:
        """Learn the stream's records committed in Kafka, oldest first."""

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

    def seed(self, committed: Iterable[Record]) -> None:
        self._remember(record.event_id for record in committed)

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

    def seed(self, committed: Iterable[Record]) -> None:
        for record in committed:
            self._latest[record.key] = record.event_id

    def is_repeat(self, record: Record) -> bool:
        key, event_id = record.key, record.event_id
        # Equal to the latest: the snapshot sent on connect, or an immediate re-send.
        if self._pending.get(key, self._latest.get(key)) == event_id:
            return True
        self._pending[key] = event_id
        return False

    def commit(self) -> None:
        self._latest.update(self._pending)
        self._pending.clear()

    def abort(self) -> None:
        self._pending.clear()
