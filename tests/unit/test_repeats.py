"""Repeat filters: transaction-aware, seeded from what Kafka holds for the stream."""

from __future__ import annotations

from bridge.eos.repeats import LatestPerKey, RecentIds
from bridge.records import Record


def _rec(key: str, event_id: str) -> Record:
    return Record("t", key.encode(), b"", event_id, None)


def test_recent_ids_forget_aborted_and_remember_committed() -> None:
    ids = RecentIds(10)
    assert not ids.is_repeat(_rec("k", "a"))
    assert ids.is_repeat(_rec("k", "a"))  # repeat inside the open transaction
    ids.abort()
    assert not ids.is_repeat(_rec("k", "a"))  # aborted: its replay must be written
    ids.commit()
    assert ids.is_repeat(_rec("k", "a"))


def test_recent_ids_window_keeps_only_the_newest() -> None:
    ids = RecentIds(2)
    ids.seed([_rec("k", "a"), _rec("k", "b"), _rec("k", "c")])
    assert not ids.is_repeat(_rec("k", "a"))
    assert ids.is_repeat(_rec("k", "b")) and ids.is_repeat(_rec("k", "c"))


def test_latest_per_key_keeps_real_returns_to_an_earlier_state() -> None:
    latest = LatestPerKey()
    rows = ["open", "halted", "open", "open"]
    written = [e for e in rows if not latest.is_repeat(_rec("S", e))]
    assert written == ["open", "halted", "open"]


def test_latest_per_key_seeded_from_kafka_drops_the_snapshot_sent_on_connect() -> None:
    # Committed: S went open -> halted. The reconnect's snapshot says halted (a repeat),
    # then a real transition back to open follows.
    latest = LatestPerKey()
    latest.seed([_rec("S", "open"), _rec("S", "halted"), _rec("T", "open")])
    snapshot_then_live = [("S", "halted"), ("T", "open"), ("S", "open")]
    written = [(k, e) for k, e in snapshot_then_live if not latest.is_repeat(_rec(k, e))]
    assert written == [("S", "open")]


def test_latest_per_key_forgets_an_aborted_transition() -> None:
    latest = LatestPerKey()
    latest.seed([_rec("S", "open")])
    assert not latest.is_repeat(_rec("S", "halted"))
    latest.abort()
    assert latest.is_repeat(_rec("S", "open"))
    assert not latest.is_repeat(_rec("S", "halted"))
