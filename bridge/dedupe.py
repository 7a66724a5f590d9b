"""Dropping upstream repeats, transaction-aware.

What a filter learns from the open transaction is provisional: it becomes part of the
filter's memory only when the transaction commits, and is forgotten when it aborts (those
records were not written, so their replay must not be dropped).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Protocol

from bridge.records import Record


class RepeatFilter(Protocol):
    def seed(self, records: Iterable[Record]) -> None:
        """Learn records already in Kafka (read back at startup), oldest first."""

    def is_repeat(self, record: Record) -> bool:
        """True if the record was written before; otherwise remember it as pending."""

    def commit(self) -> None: ...

    def abort(self) -> None: ...


class RecentIds:
    """Drops records whose event id is among the last `size` committed (at-least-once upstreams)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._committed: OrderedDict[str, None] = OrderedDict()
        self._pending: dict[str, None] = {}

    def seed(self, records: Iterable[Record]) -> None:
        for record in records:
            self._committed[record.event_id] = None
            self._committed.move_to_end(record.event_id)
        self._trim()

    def is_repeat(self, record: Record) -> bool:
        event_id = record.event_id
        if event_id in self._pending or event_id in self._committed:
            return True
        self._pending[event_id] = None
        return False

    def commit(self) -> None:
        self._committed.update(self._pending)
        self._pending.clear()
        self._trim()

    def abort(self) -> None:
        self._pending.clear()

    def _trim(self) -> None:
        excess = len(self._committed) - self._size
        for _ in range(max(0, excess)):
            self._committed.popitem(last=False)


class LatestPerKey:
    """Drops a record identical to the last one written for its key (instrument states).

    Instrument state changes carry no id or time: the same content for a symbol twice in a
    row is a repeat (e.g. the snapshot the exchange sends on every connect), while a symbol
    returning to an earlier state (OPEN -> HALTED -> OPEN) is a real change and is kept.
    """

    def __init__(self) -> None:
        self._latest: dict[bytes | None, str] = {}
        self._pending: dict[bytes | None, str] = {}

    def seed(self, records: Iterable[Record]) -> None:
        for record in records:
            self._latest[record.key] = record.event_id

    def is_repeat(self, record: Record) -> bool:
        latest = self._pending.get(record.key, self._latest.get(record.key))
        if latest == record.event_id:
            return True
        self._pending[record.key] = record.event_id
        return False

    def commit(self) -> None:
        self._latest.update(self._pending)
        self._pending.clear()

    def abort(self) -> None:
        self._pending.clear()
