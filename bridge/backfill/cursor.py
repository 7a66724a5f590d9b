"""What a backfill task persists, and the gap records it reads and writes.

The cursor is a `polybridge.State` record under key `<stream id>/backfill` in the state
topic (its `backfill` field): the gaps being filled, oldest first, and where the first one's
REST history stands (the page cursor, records and dead letters written so far). It is
committed in the same transaction as the records it covers, so after a crash the task
resumes after the last page it committed.

Why a field of `polybridge.State` rather than a schema of its own: the state topic keeps
one value schema (one Schema Registry subject under `topic_name`, and `decode_state`
reads every value of the topic as a State), so the cursor is an optional field added
compatibly (default null) that only `<stream id>/backfill` records set.

A gap is identified by (from_time, to_time, reason, channel): its follow-up record on the
gaps topic repeats them with `status` filled, partially_filled or unfillable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from bridge.eos.side_records import OPEN
from bridge.kafka.state import StateEntry, state_datum
from bridge.records import Gap, Position
from bridge.serde.avro import Serializer
from bridge.timeutil import micros

FILLED = "filled"
PARTIALLY_FILLED = "partially_filled"
UNFILLABLE = "unfillable"


def cursor_key(stream_id: str) -> str:
    """The state topic key of a stream's backfill cursor."""
    return f"{stream_id}/backfill"


@dataclass(frozen=True, slots=True)
class Cursor:
    """A stream's backfill progress: `gaps[0]` is being filled from `page_cursor`."""

    gaps: tuple[Gap, ...] = ()
    page_cursor: str | None = None
    records: int = 0
    dead_letters: int = 0

    def add(self, gaps: list[Gap]) -> Cursor:
        """With `gaps` appended (those already listed skipped)."""
        known = {g.identity for g in self.gaps}
        new = []
        for gap in gaps:
            if gap.identity not in known:
                known.add(gap.identity)
                new.append(gap)
        return replace(self, gaps=self.gaps + tuple(new)) if new else self

    def next_gap(self) -> Cursor:
        """The first gap done: the next one starts from its beginning."""
        return Cursor(self.gaps[1:])


@dataclass(frozen=True, slots=True)
class GapRecord:
    """A record of the gaps topic, decoded."""

    gap: Gap
    status: str
    detail: str = ""
    records: int = 0
    stream_id: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)


def cursor_datum(
    stream_id: str, upstream: str, cursor: Cursor, owner: str, committed_at_us: int
) -> dict[str, Any]:
    datum = state_datum(cursor_key(stream_id), upstream, Position(), owner, committed_at_us)
    datum["backfill"] = {
        "gaps": [
            {
                "from_time": g.from_us,
                "to_time": g.to_us,
                "reason": g.reason,
                "channel": g.channel,
                "filters": g.filters,
                "detected_at": g.detected_at_us,
                "follow_up": g.follow_up,
            }
            for g in cursor.gaps
        ],
        "page_cursor": cursor.page_cursor,
        "records": cursor.records,
        "dead_letters": cursor.dead_letters,
    }
    return datum


def encode_cursor(
    stream_id: str,
    upstream: str,
    cursor: Cursor,
    owner: str,
    committed_at_us: int,
    serializer: Serializer,
) -> bytes:
    return serializer(cursor_datum(stream_id, upstream, cursor, owner, committed_at_us))


def cursor_of(entry: StateEntry | None) -> Cursor:
    """The cursor stored in a `<stream id>/backfill` state entry (empty: none)."""
    if entry is None or not entry.backfill:
        return Cursor()
    data = entry.backfill
    gaps = tuple(
        Gap(
            micros(g.get("from_time")),
            micros(g["to_time"]),
            g["reason"],
            g["channel"],
            g["filters"],
            micros(g["detected_at"]),
            bool(g.get("follow_up", True)),
        )
        for g in data.get("gaps") or []
    )
    return Cursor(
        gaps,
        data.get("page_cursor"),
        int(data.get("records") or 0),
        int(data.get("dead_letters") or 0),
    )


def gap_record(datum: Mapping[str, Any]) -> GapRecord:
    """A decoded gaps-topic datum (any released Gap version: v1 has no status: open)."""
    gap = Gap(
        micros(datum.get("from_time")),
        micros(datum["to_time"]),
        datum["reason"],
        datum["channel"],
        datum["filters"],
        micros(datum["detected_at"]),
    )
    return GapRecord(
        gap,
        datum.get("status", OPEN),
        datum.get("detail", ""),
        int(datum.get("records", 0)),
        datum.get("stream_id", ""),
    )


def still_open(records: list[GapRecord]) -> list[Gap]:
    """Gaps written open and not yet closed by a follow-up, in the order written."""
    closed = {r.gap.identity for r in records if r.status != OPEN}
    seen: set[tuple[int | None, int, str, str]] = set()
    found = []
    for r in records:
        key = r.gap.identity
        if r.status == OPEN and key not in closed and key not in seen:
            seen.add(key)
            found.append(r.gap)
    return found
