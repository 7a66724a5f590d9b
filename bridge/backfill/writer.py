"""Writing one backfill transaction: records, dead letters, a gap's follow-up, the cursor.

`BackfillWriter` writes through the one transaction runner (`bridge.eos.transactions`) of the
backfill's transactional id (`<app_id>.<stream id>.backfill`) of one stream: `start()`
fences an older owner of the id and settles its open transaction;
each `write()` is one Kafka transaction carrying the REST records (header
`polybridge.source: rest`), the dead letters, when a gap is closed its follow-up record on
the gaps topic (status filled, partially_filled or unfillable, with a detail), and always
the cursor record, so what is written and where the fill stands commit together.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from bridge.backfill.cursor import (
    FILLED,
    PARTIALLY_FILLED,
    Cursor,
    cursor_key,
    encode_cursor,
)
from bridge.eos.contract import Producer, SideTopics
from bridge.eos.side_records import SideRecords
from bridge.eos.transactions import Transactions
from bridge.errors import KafkaError
from bridge.records import EVENT_ID_HEADER, STREAM_HEADER, DeadLetter, Gap, Record
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
    gap: Gap
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
        topic: str,
        side: SideTopics,
        new_producer: Callable[[], Producer],
    ) -> None:
        self.stream_id = stream_id
        self.upstream = upstream
        self._instance_id = instance_id
        self._side = side
        self._records = SideRecords(stream_id, upstream, side)
        self._txns = Transactions(
            stream_id, new_producer, (topic, side.state, side.gaps, side.dead_letters)
        )
        self._key = cursor_key(stream_id).encode()
        self._headers: list[tuple[str, str | bytes | None]] = [
            (STREAM_HEADER, stream_id.encode()),
            (SOURCE_HEADER, REST_SOURCE),
        ]

    async def start(self) -> None:
        """A new producer: fences an older owner of the id and settles its transaction.
        The caller then reads the cursor back: after a failure, that is where it stands."""
        await self._txns.start()

    async def write(self, txn: Transaction) -> None:
        """`txn` in one Kafka transaction. On a Kafka error the transaction is aborted (or
        its producer given up when that fails) and the error raised: the caller starts
        again and reads the cursor back."""
        txns = self._txns
        try:
            for record in txn.records:
                await txns.put(
                    record.topic,
                    record.key,
                    record.value,
                    [*self._headers, (EVENT_ID_HEADER, record.event_id.encode())],
                )
            side, key = self._side, self.stream_id.encode()
            for letter in txn.letters:
                await txns.put(side.dead_letters, key, self._records.dead_letter(letter))
            follow_up = txn.follow_up
            if follow_up is not None and txn.gap.follow_up:
                value = self._records.gap(
                    txn.gap, follow_up.status, follow_up.detail, follow_up.records
                )
                await txns.put(side.gaps, key, value, self._headers)
            state = encode_cursor(
                self.stream_id,
                self.upstream,
                txn.cursor,
                self._instance_id,
                now_us(),
                side.state_serializer,
            )
            await txns.put(side.state, self._key, state, self._headers)
            await txns.commit()
        except KafkaError as exc:
            await txns.recover(exc)
            raise

    async def abort(self) -> None:
        """Abort the open transaction, if any (a failure gives the producer up: the next
        `start()` replaces it and settles the transaction)."""
        if self._txns.is_open:
            await self._txns.recover(KafkaError("backfill stopped", retriable=True))

    async def aclose(self) -> None:
        await self._txns.aclose()
