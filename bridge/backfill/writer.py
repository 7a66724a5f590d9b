"""Writing one backfill transaction: records, dead letters, a gap's follow-up, the cursor.

`BackfillWriter` owns the backfill's transactional producer (`<app_id>.<stream id>.backfill`)
of one stream: `start()` fences an older owner of the id and settles its open transaction;
each `write()` is one Kafka transaction carrying the REST records (header
`polybridge.source: rest`), the dead letters, when a gap is closed its follow-up record on
the gaps topic (status filled, partially_filled or unfillable, with a detail), and always
the cursor record, so what is written and where the fill stands commit together.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from bridge.backfill.cursor import (
    FILLED,
    PARTIALLY_FILLED,
    Cursor,
    OpenGap,
    cursor_key,
    encode_cursor,
    gap_datum,
)
from bridge.eos.contract import Producer, SideTopics
from bridge.errors import FencedError, KafkaError
from bridge.records import EVENT_ID_HEADER, STREAM_HEADER, DeadLetter, Record
from bridge.timeutil import now_us

log = logging.getLogger(__name__)

SOURCE_HEADER = "polybridge.source"
"""Header marking where a record came from; backfilled records carry `rest`."""
REST_SOURCE = b"rest"


class FollowUp(NamedTuple):
    """How a gap was closed: its follow-up record's status and detail, records written."""

    status: str
    detail: str
    records: int


@dataclass(frozen=True, slots=True)
class Transaction:
    """What one backfill transaction writes: `records` and dead `letters` of `gap`'s fill,
    its `follow_up` when it closes the gap, and the `cursor` after it."""

    records: list[Record]
    letters: list[DeadLetter]
    cursor: Cursor
    gap: OpenGap
    follow_up: FollowUp | None = None


def outcome_of(cursor: Cursor) -> tuple[str, str]:
    """(status, detail) of the gap `cursor` has filled to its end."""
    if cursor.dead_letters:
        return (
            PARTIALLY_FILLED,
            f"{cursor.records} record(s) written; {cursor.dead_letters} REST row(s) did "
            "not map (see the dead letter topic)",
        )
    return FILLED, f"{cursor.records} record(s) written"


class BackfillWriter:
    """The backfill's transactions of one stream (see the module docstring)."""

    def __init__(
        self,
        *,
        stream_id: str,
        upstream: str,
        instance_id: str,
        side: SideTopics,
        new_producer: Callable[[], Producer],
    ) -> None:
        self.stream_id = stream_id
        self.upstream = upstream
        self._instance_id = instance_id
        self._side = side
        self._new_producer = new_producer
        self._producer: Producer | None = None
        self._key = cursor_key(stream_id).encode()
        self._headers: list[tuple[str, str | bytes | None]] = [
            (STREAM_HEADER, stream_id.encode()),
            (SOURCE_HEADER, REST_SOURCE),
        ]

    async def start(self) -> None:
        """A new producer: fences an older owner of the id and settles its transaction."""
        self.close()
        producer = self._new_producer()
        self._producer = producer
        await producer.init()

    async def write(self, txn: Transaction) -> None:
        """`txn` in one Kafka transaction; on any failure it is aborted (unless the
        producer is broken) and the error raised."""
        producer = self._producer
        assert producer is not None, "backfill producer not started"
        producer.begin()
        try:
            for record in txn.records:
                producer.produce(
                    record.topic,
                    record.key,
                    record.value,
                    [*self._headers, (EVENT_ID_HEADER, record.event_id.encode())],
                )
            side = self._side
            for letter in txn.letters:
                producer.produce(side.dead_letters, self.stream_id.encode(), self._letter(letter))
            follow_up = txn.follow_up
            if follow_up is not None and txn.gap.follow_up:
                datum = gap_datum(
                    self.stream_id,
                    self.upstream,
                    txn.gap,
                    follow_up.status,
                    follow_up.detail,
                    follow_up.records,
                    now_us(),
                )
                value = side.gap_serializer(datum)
                producer.produce(side.gaps, self.stream_id.encode(), value, self._headers)
            state = encode_cursor(
                self.stream_id,
                self.upstream,
                txn.cursor,
                self._instance_id,
                now_us(),
                side.state_serializer,
            )
            producer.produce(side.state, self._key, state, self._headers)
            await producer.commit()
        except BaseException:
            if not producer.broken:
                with contextlib.suppress(FencedError):
                    await self.abort()
            raise

    async def abort(self) -> None:
        """Abort the open transaction, if any (a failure is logged: fencing settles it)."""
        producer = self._producer
        if producer is None or producer.broken:
            return
        try:
            await producer.abort()
        except KafkaError as exc:
            log.warning("stream=%s backfill abort failed: %s", self.stream_id, exc)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close()
            self._producer = None

    def _letter(self, letter: DeadLetter) -> bytes:
        return self._side.dead_letter_serializer(
            {
                "stream_id": self.stream_id,
                "upstream": self.upstream,
                "target_topic": letter.target_topic,
                "error_type": letter.error_type,
                "error": letter.error,
                "raw": letter.raw,
                "received_at": letter.received_at_us,
            }
        )
