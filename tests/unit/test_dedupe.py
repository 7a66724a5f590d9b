"""Repeat filters: transaction-aware, seeded from what Kafka shows."""

from __future__ import annotations

from bridge.dedupe import LatestPerKey, RecentIds, Visible
from bridge.records import Record


def _rec(key: str, event_id: str) -> Record:
    return Record("t", key.encode(), b"", event_id, None)


def _visible(rows: list[tuple[str, str, int]]) -> list[Visible]:
    return [Visible(_rec(k, e), at) for k, e, at in rows]


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
    ids.seed(_visible([("k", "a", 1), ("k", "b", 2), ("k", "c", 3)]), None)
    assert not ids.is_repeat(_rec("k", "a"))
    assert ids.is_repeat(_rec("k", "b")) and ids.is_repeat(_rec("k", "c"))


def test_latest_per_key_keeps_real_returns_to_an_earlier_state() -> None:
    latest = LatestPerKey()
    rows = ["open", "halted", "open", "open"]
    written = [e for e in rows if not latest.is_repeat(_rec("S", e))]
    assert written == ["open", "halted", "open"]


def test_latest_per_key_drops_the_replay_of_unclaimed_records_after_the_snapshot() -> None:
    # Committed up to t=10 (state: S open); a killed transaction left "halted", "open"
    # visible at t=20, t=21. The restart sends the snapshot (open) then replays both.
    latest = LatestPerKey()
    latest.seed(
        _visible([("S", "pending", 5), ("S", "open", 9), ("S", "halted", 20), ("S", "open", 21)]),
        committed_at_us=10,
    )
    replay = ["open", "halted", "open", "closed"]
    written = [e for e in replay if not latest.is_repeat(_rec("S", e))]
    assert written == ["closed"]


def test_latest_per_key_falls_back_when_the_replay_diverges() -> None:
    latest = LatestPerKey()
    latest.seed(_visible([("S", "open", 9), ("S", "halted", 20)]), committed_at_us=10)
    written = [e for e in ["closed", "open"] if not latest.is_repeat(_rec("S", e))]
    assert written == ["closed", "open"]
