"""Journals: positions, filters, retention, snapshots and resume tokens."""

from __future__ import annotations

import pytest

from bridge.sim.journal import (
    InvalidToken,
    Journal,
    Retention,
    TokenCodec,
    frame_record,
    unframe_record,
)


def filled(count: int, retention: Retention | None = None) -> Journal:
    journal = Journal("executions", retention or Retention())
    for n in range(1, count + 1):
        firm = ("firms/a",) if n % 2 else ("firms/b",)
        journal.append(1_000 * n, f"sym-{n % 3}", firm, f"r{n}".encode())
    return journal


def payloads(framed: list[bytes]) -> list[bytes]:
    return [unframe_record(f) for f in framed]


def test_read_returns_records_after_the_position_and_where_it_stopped() -> None:
    journal = filled(10)
    records, position = journal.read(3, frozenset(), None, 4, 1 << 20)
    assert payloads(records) == [b"r4", b"r5", b"r6", b"r7"] and position == 7
    records, position = journal.read(7, frozenset(), None, 100, 1 << 20)
    assert payloads(records) == [b"r8", b"r9", b"r10"] and position == 10


def test_filtered_read_counts_skipped_records_as_examined() -> None:
    journal = filled(10)
    records, position = journal.read(0, frozenset({"sym-1"}), frozenset({"firms/a"}), 100, 1 << 20)
    assert payloads(records) == [b"r1", b"r7"] and position == 10


def test_response_size_cap_splits_batches() -> None:
    journal = filled(10)
    one = len(frame_record(b"r1"))
    records, position = journal.read(0, frozenset(), None, 100, one * 2)
    assert len(records) == 2 and position == 2


def test_position_for_time_and_retention() -> None:
    journal = filled(3000, Retention(max_records=1000))
    assert journal.position_for_time(2_500) == 2  # first record at or after 2.5 ms is #3
    journal.trim(now_us=0)
    assert journal.first_retained == 2001
    assert not journal.covers(1999) and journal.covers(2000) and not journal.covers(3001)
    assert journal.position_for_time(2_000_000) is None  # record 2000 was dropped
    assert journal.position_for_time(2_000_001) == 2000


def test_latest_per_symbol_survives_trimming() -> None:
    journal = filled(3000, Retention(max_records=10))
    before = journal.latest_per_symbol(2995, ())
    journal.trim(now_us=0)
    assert journal.latest_per_symbol(2995, ()) == before
    assert payloads(journal.latest_per_symbol(2995, ["sym-0"])) == [b"r2994"]


def test_tokens_round_trip_and_reject_tampering() -> None:
    codec = TokenCodec(b"secret")
    token = codec.encode("trade_captures", 42, 123)
    decoded = codec.decode(token)
    assert (decoded.stream, decoded.position, decoded.issued_us) == ("trade_captures", 42, 123)
    with pytest.raises(InvalidToken):
        codec.decode(token[:-1] + bytes([token[-1] ^ 1]))
    with pytest.raises(InvalidToken):
        TokenCodec(b"other").decode(token)
    with pytest.raises(InvalidToken):
        codec.decode(b"short")
