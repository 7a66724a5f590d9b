"""What a backfill task reads from and writes to Kafka: its cursor, the stream's gap
records, the event ids the stream's topic already holds, and its own transactional
producer (`<app_id>.<stream id>.backfill`)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from confluent_kafka import TopicPartition

from bridge.backfill.cursor import GapRecord, cursor_key, gap_record
from bridge.eos.contract import Positions, Producer
from bridge.errors import KafkaError
from bridge.kafka.producer import TransactionalProducer
from bridge.kafka.readback import (
    CONNECT_TIMEOUT_S,
    header,
    low_high,
    open_reader,
    partitions_of,
    read_ranges,
    read_topic,
)
from bridge.kafka.state import StateEntry
from bridge.records import EVENT_ID_HEADER, STREAM_HEADER
from bridge.serde.decode import Decoder

log = logging.getLogger(__name__)

CLOCK_SKEW_US = 300_000_000
"""A record of event time t was produced at or after t; reading the stream's topic from
the window's start minus this margin (Kafka CreateTime vs upstream clocks) finds every record
of the window the stream wrote."""


def backfill_transactional_id(app_id: str, stream_id: str) -> str:
    return f"{app_id}.{stream_id}.backfill"


class KafkaBackfillIO:
    """The real Kafka behind a `BackfillTask` (see `bridge.backfill.task.BackfillIO`)."""

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        app_id: str,
        stream_id: str,
        positions: Positions,
        gaps_topic: str,
        decoder: Decoder | None = None,
        transaction_timeout_ms: int = 60_000,
    ) -> None:
        self.config = dict(config)
        self.stream_id = stream_id
        self.transactional_id = backfill_transactional_id(app_id, stream_id)
        self._positions = positions
        self._gaps_topic = gaps_topic
        self._decoder = decoder or Decoder()
        self._txn_timeout_ms = transaction_timeout_ms

    def new_producer(self) -> Producer:
        return TransactionalProducer(
            {**self.config, "transaction.timeout.ms": self._txn_timeout_ms},
            self.transactional_id,
            self.stream_id,
        )

    def cursor_entry(self, stop: threading.Event | None = None) -> StateEntry | None:
        return self._positions.latest(cursor_key(self.stream_id), True, stop)

    def gap_records(self) -> list[GapRecord]:
        """Every gap record of the stream on the gaps topic, in the order written."""
        wanted = self.stream_id.encode()
        found = []
        for record in read_topic(self.config, self._gaps_topic):
            if record.key != wanted or record.value is None:
                continue
            try:
                datum = self._decoder.decode(record.value).datum
                found.append(gap_record(datum))
            except (KafkaError, KeyError, TypeError) as exc:
                log.warning(
                    "stream=%s gap record at offset %d does not decode: %s",
                    self.stream_id,
                    record.offset,
                    exc,
                )
        return found

    def known_records(self, topic: str, since_us: int) -> list[tuple[str, bytes | None]]:
        """(event id, value) of the stream's committed records in `topic` produced since
        `since_us` minus `CLOCK_SKEW_US` (Kafka timestamps)."""
        wanted = self.stream_id.encode()
        consumer = open_reader(self.config)
        try:
            parts = partitions_of(consumer, topic, self.config)
            since_ms = max(0, (since_us - CLOCK_SKEW_US) // 1000)
            asked = [TopicPartition(topic, p, since_ms) for p in parts]
            starts: dict[int, int] = {}
            for tp in consumer.offsets_for_times(asked, timeout=CONNECT_TIMEOUT_S):
                if tp.error is not None:
                    raise KafkaError(f"offsets_for_times {topic} [{tp.partition}]: {tp.error}")
                if tp.offset >= 0:
                    starts[tp.partition] = tp.offset
                else:  # nothing at or after that time: from the end (nothing to read)
                    starts[tp.partition] = low_high(consumer, topic, tp.partition)[1]
            records, _ = read_ranges(consumer, topic, starts, self.config)
        finally:
            consumer.close()
        found = []
        for record in records:
            if header(record.headers, STREAM_HEADER) != wanted:
                continue
            event_id = header(record.headers, EVENT_ID_HEADER)
            if event_id is not None:
                found.append((event_id.decode(), record.value))
        return found
