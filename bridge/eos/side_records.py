"""The bridge's own records of one stream, built in one place: its state (position or
backfill cursor), its gaps and their follow-ups, its dead letters. Every writer of a stream,
the live pipeline and the backfill, produces them through `SideRecords`."""

from __future__ import annotations

import hashlib
from typing import Any

from bridge.eos.contract import SideTopics
from bridge.kafka.state import encode_state
from bridge.records import DeadLetter, Gap, Position
from bridge.timeutil import now_us

OPEN = "open"
"""The status of a gap the stream writes; its backfill's follow-up says how it ended."""

MAX_DEAD_LETTER_RAW = 900_000
"""Raw bytes kept in one dead letter: below Kafka's default message.max.bytes (1,000,000)
with room for the record's other fields and the batch overhead."""


def gap_datum(
    stream_id: str,
    upstream: str,
    gap: Gap,
    status: str,
    detail: str,
    records: int,
    detected_at_us: int,
) -> dict[str, Any]:
    """A `polybridge.Gap` datum: the gap itself (status open) or its follow-up."""
    return {
        "stream_id": stream_id,
        "upstream": upstream,
        "channel": gap.channel,
        "filters": gap.filters,
        "from_time": gap.from_us,
        "to_time": gap.to_us,
        "reason": gap.reason,
        "detected_at": detected_at_us,
        "status": status,
        "detail": detail,
        "records": records,
    }


class SideRecords:
    """Values for the side topics of one stream (`SideTopics`), keyed by the stream id."""

    def __init__(self, stream_id: str, upstream: str, side: SideTopics) -> None:
        self.stream_id = stream_id
        self.upstream = upstream
        self.topics = side
        self.key = stream_id.encode()

    def state(self, position: Position, owner: str) -> bytes:
        """The stream's state record: `position`, committed by `owner` now."""
        return encode_state(
            self.stream_id, self.upstream, position, owner, now_us(), self.topics.state_serializer
        )

    def gap(self, gap: Gap, status: str = OPEN, detail: str = "", records: int = 0) -> bytes:
        """A gap record (status open), or the follow-up that says how its backfill ended;
        either is stamped with the time it is written."""
        datum = gap_datum(self.stream_id, self.upstream, gap, status, detail, records, now_us())
        return self.topics.gap_serializer(datum)

    def dead_letter(self, letter: DeadLetter) -> bytes:
        """A dead letter; raw bytes past `MAX_DEAD_LETTER_RAW` are cut, and the error says
        what the whole was, so the letter is written instead of stopping the stream."""
        raw, error = letter.raw, letter.error
        if len(raw) > MAX_DEAD_LETTER_RAW:
            digest = hashlib.sha256(raw).hexdigest()
            error = (
                f"{error} [raw truncated from {len(raw)} to {MAX_DEAD_LETTER_RAW} bytes; "
                f"sha256 of the whole: {digest}]"
            )
            raw = raw[:MAX_DEAD_LETTER_RAW]
        return self.topics.dead_letter_serializer(
            {
                "stream_id": self.stream_id,
                "upstream": self.upstream,
                "target_topic": letter.target_topic,
                "error_type": letter.error_type,
                "error": error,
                "raw": raw,
                "received_at": letter.received_at_us,
            }
        )
