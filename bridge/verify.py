"""Compare what landed in Kafka with what an upstream sent: missing, doubled, reordered.

Used by the demo and the end-to-end tests. Identity is (key, event_id) as the bridge
writes them; order is compared per key, the order Kafka guarantees to consumers.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bridge.kafka.readback import ReadRecord, header, read_topic
from bridge.records import EVENT_ID_HEADER, STREAM_HEADER

Row = tuple[bytes | None, str]
"""(key, event_id) of one record."""


@dataclass(frozen=True, slots=True)
class Comparison:
    stream_id: str
    expected: int
    actual: int
    missing: int
    duplicated: int
    unexpected: int
    keys_out_of_order: int

    @property
    def same_records(self) -> bool:
        """Every expected row once and nothing else, whatever the order."""
        return self.expected == self.actual and not (
            self.missing or self.duplicated or self.unexpected
        )

    @property
    def equal(self) -> bool:
        """The same records, and each key's in the expected order."""
        return self.same_records and not self.keys_out_of_order

    def summary(self) -> str:
        verdict = "EQUAL" if self.equal else "DIFFERENT"
        return (
            f"{self.stream_id}: {verdict} expected={self.expected} actual={self.actual} "
            f"missing={self.missing} duplicated={self.duplicated} unexpected={self.unexpected} "
            f"keys_out_of_order={self.keys_out_of_order}"
        )


def compare(stream_id: str, expected: Sequence[Row], actual: Sequence[Row]) -> Comparison:
    # Counted per (key, event_id): a row may legitimately occur more than once (an
    # instrument returning to an earlier state); extra copies of an expected row are
    # duplicates, rows never expected are unexpected.
    want = Counter(expected)
    got = Counter(actual)
    missing = sum((want - got).values())
    extra = got - want
    duplicated = sum(n for row, n in extra.items() if row in want)
    unexpected = sum(n for row, n in extra.items() if row not in want)
    return Comparison(
        stream_id=stream_id,
        expected=len(expected),
        actual=len(actual),
        missing=missing,
        duplicated=duplicated,
        unexpected=unexpected,
        keys_out_of_order=_keys_out_of_order(expected, actual),
    )


def _keys_out_of_order(expected: Sequence[Row], actual: Sequence[Row]) -> int:
    def by_key(rows: Iterable[Row]) -> dict[bytes | None, list[str]]:
        grouped: dict[bytes | None, list[str]] = defaultdict(list)
        for key, event_id in rows:
            grouped[key].append(event_id)
        return grouped

    want, got = by_key(expected), by_key(actual)
    return sum(1 for key, ids in want.items() if got.get(key) != ids)


def kafka_rows(config: Mapping[str, Any], topic: str, stream_id: str) -> list[Row]:
    """(key, event_id) of the stream's committed records in `topic`, in partition order."""
    return stream_rows(read_topic(config, topic), stream_id)


def stream_rows(records: Iterable[ReadRecord], stream_id: str) -> list[Row]:
    """(key, event_id) of the stream's records among `records` (header `polybridge.stream`)."""
    rows: list[Row] = []
    for record in records:
        if header(record.headers, STREAM_HEADER) != stream_id.encode():
            continue
        event_id = header(record.headers, EVENT_ID_HEADER)
        rows.append((record.key, event_id.decode() if event_id is not None else ""))
    return rows


def collapse_repeats_per_key(rows: Sequence[Row]) -> list[Row]:
    """Drop a row equal to the previous row of its key (what `LatestPerKey` writes)."""
    latest: dict[bytes | None, str] = {}
    kept = []
    for key, event_id in rows:
        if latest.get(key) != event_id:
            kept.append((key, event_id))
            latest[key] = event_id
    return kept


def expected_dropcopy_rows(kind_name: str, stream_id: str, messages: Sequence[Any]) -> list[Row]:
    """(key, event_id) the bridge must write for the upstream `messages`, in order."""
    return ExpectedDropCopyRows(kind_name, stream_id)(messages)


class ExpectedDropCopyRows:
    """`expected_dropcopy_rows` for a journal read again and again while it grows: each call
    maps only the messages appended since the last one (mapping is per message, and costs
    seconds for 100,000 of them). A journal trimmed at its start is mapped afresh."""

    def __init__(self, kind_name: str, stream_id: str) -> None:
        from bridge.streams.kinds import KINDS

        self._kind = KINDS[kind_name]
        self._stream_id = stream_id
        self._mapped: Sequence[Any] = ()
        self._rows: list[Row] = []

    def __call__(self, messages: Sequence[Any]) -> list[Row]:
        done = len(self._mapped)
        if done and (
            len(messages) < done
            or messages[0] != self._mapped[0]
            or messages[done - 1] != self._mapped[-1]
        ):
            done, self._rows = 0, []
        self._rows += self._map(messages[done:])
        self._mapped = messages
        return collapse_repeats_per_key(self._rows) if self._kind.latest_per_key else self._rows[:]

    def _map(self, messages: Sequence[Any]) -> list[Row]:
        from bridge.mapping.dropcopy import DropCopyMapper

        if not messages:
            return []
        response = self._kind.response_type()
        getattr(response, self._kind.list_field).extend(messages)
        mapper = DropCopyMapper(self._kind, self._stream_id, "verify", b"")
        records, _ = mapper.map_response(response, 0)
        return [(record.key, record.event_id) for record in records]
