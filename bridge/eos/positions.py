"""Every stream's committed position, kept in memory and followed from the state topic.

The state topic is compacted with one partition; its newest record per key (the stream id)
is that stream's position (a tombstone: none). Like Kafka Connect's offset store
(`KafkaBasedLog`), one read_committed reader per process reads the topic from the beginning
once, then on every `refresh()` only what was appended since, up to the high watermark it
had when the refresh began. Not to the last stable offset: the topic is shared, and a
stream's own newest position can lie after another stream's transaction that is still open
(a commit in flight, or a crashed owner's transaction not yet aborted); reading only to
the stable offset would return an older position and the stream would write again what it
had committed. So a refresh waits for the transactions open below that watermark to end. A
pipeline refreshes when it starts (after `init_transactions()` has settled any transaction
its stream's previous owner left open) and after it replaced a producer whose last commit
had an unknown outcome; in between it knows its own position, because it wrote it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from confluent_kafka import Consumer

from bridge.eos.state_records import StateRecords
from bridge.kafka.readback import (
    READ_TIMEOUT_S,
    EndNotReached,
    ReadRecord,
    high_watermarks,
    low_high,
    open_offsets_reader,
    open_reader,
    partitions_of,
    read_ranges,
)
from bridge.kafka.state import StateEntry
from bridge.timeutil import now_us

log = logging.getLogger(__name__)

HANGING_MARGIN_S = 5.0
"""A stream's start waits for a transaction open on the state topic for the transaction
timeout plus this. Past it, a transaction still open is one its coordinator does not know
(a hanging transaction): the next start of the stream that wrote it ends it
(`TransactionalProducer.settle`), but a stream that does not start again never does, and
every stream would wait for it forever. The start then goes on from the stable view, said
at ERROR with the offset to abort."""


class PositionStore:
    """The newest committed `StateEntry` per stream id. Thread-safe (pipelines refresh it
    from worker threads)."""

    def __init__(
        self,
        config: Mapping[str, Any],
        topic: str,
        transaction_timeout_s: float = 60.0,
        quick: bool = False,
    ) -> None:
        self.config = dict(config)
        self._glances = None if quick else PositionStore(config, topic, quick=True)
        """The store quick looks (`complete` False) read through; None in that store."""
        self.topic = topic
        self._hanging_s = transaction_timeout_s + HANGING_MARGIN_S
        self._stuck: dict[int, int] = {}
        """Per partition: where a transaction was found hanging (no wait there again)."""
        self._records = StateRecords(topic)
        """The newest record per key, each decoded on its own: one stream's bad record
        stops that stream only (`latest`); the others' are never decoded strictly."""
        self._next: dict[int, int] = {}
        """Per partition: the offset after the last one read (where the next read starts)."""
        self._reader: Consumer | None = None
        self._offsets: Consumer | None = None
        self._lock = threading.Lock()

    def refresh(
        self, complete: bool = True, stop: threading.Event | None = None
    ) -> dict[str, StateEntry]:
        """Read what was committed since the last refresh; every stream's newest entry.

        `complete`: up to the high watermark, waiting for the transactions open below it to
        end (what a stream's start needs, once its own `init_transactions()` settled its
        own); False: up to the last stable offset, without waiting (a quick look). `stop`,
        once set, ends a read that waits (`ReadStopped`): a stream asked to stop."""
        with self._lock:
            started = time.monotonic()
            if self._reader is None:
                reader = open_reader(self.config)
                try:
                    parts = partitions_of(reader, self.topic, self.config)
                except BaseException:
                    reader.close()
                    raise
                self._reader = reader
                self._offsets = open_offsets_reader(self.config)
                if not self._next:
                    self._next = dict.fromkeys(parts, 0)  # offset 0: from the beginning
            assert self._offsets is not None
            try:
                if complete and self._still_stuck():
                    complete = False  # said once, when it was found
                targets = (
                    high_watermarks(self._offsets, self.topic, list(self._next))
                    if complete
                    else None
                )
                # Folded as read: a state topic not yet compacted holds every commit
                # since its last cleaning, and only each key's newest record is kept. A
                # read that fails part way starts again from `_next`: putting the same
                # records again in the same order leaves the same newest ones.
                try:
                    _, ends = read_ranges(
                        self._reader,
                        self.topic,
                        self._next,
                        self.config,
                        timeout=self._hanging_s if complete else READ_TIMEOUT_S,
                        stable_ends=targets,
                        each=self._keep,
                        stop=stop,
                    )
                except EndNotReached as exc:
                    self._report_hanging(exc.positions)
                    _, ends = read_ranges(
                        self._reader,
                        self.topic,
                        self._next,
                        self.config,
                        each=self._keep,
                        stop=stop,
                    )
            except BaseException:
                # New clients for the next refresh (it goes on from where this one started):
                # after the whole cluster was away, one kept answering "Unknown partition".
                self._close_clients()
                raise
            read = sum(ends[p] - self._next[p] for p in ends)
            self._next.update(ends)
            log.debug(
                "state followed topic=%s offsets_read=%d ms=%.0f",
                self.topic,
                read,
                (time.monotonic() - started) * 1e3,
            )
            # Those that decode: `problems` names the others, `latest` stops on its own.
            return self._records.entries()

    def _keep(self, record: ReadRecord) -> None:
        if record.key is None:
            log.warning("state record without key topic=%s offset=%d", self.topic, record.offset)
            return
        self._records.put(record.key.decode(), record.offset, record.value)

    def _still_stuck(self) -> bool:
        """True while a partition's stable offset stays where a hanging transaction was
        found (checked by ListOffsets; forgotten once it moves)."""
        assert self._reader is not None
        for partition, offset in list(self._stuck.items()):
            if low_high(self._reader, self.topic, partition)[1] > offset:
                del self._stuck[partition]
        return bool(self._stuck)

    def _report_hanging(self, positions: Mapping[int, int]) -> None:
        self._stuck.update(positions)
        for partition, offset in positions.items():
            log.error(
                "a transaction has stayed open on the state topic %s [%d] at offset %d for "
                "%.0f s: one no coordinator will end (a hanging transaction). Streams start "
                "from the positions committed before it; a stream whose newest commit lies "
                "after it may write again what it wrote since. Abort it: "
                "kafka-transactions.sh --bootstrap-server ... abort --topic %s --partition %d "
                "--start-offset %d",
                self.topic,
                partition,
                offset,
                self._hanging_s,
                self.topic,
                partition,
                offset,
            )

    def latest(
        self, stream_id: str, complete: bool = True, stop: threading.Event | None = None
    ) -> StateEntry | None:
        """The stream's newest committed position, as of now (None: none stored); see
        `refresh` for `complete` and `stop`. A quick look has a reader of its own: it
        never queues behind a complete read, which may wait up to the transaction timeout
        for a transaction the quick look's caller is about to end (a stream's start looks
        for its previous owner before its `init_transactions()`: a bench run deadlocked so
        for 65 s)."""
        if not complete and self._glances is not None:
            return self._glances.latest(stream_id, False, stop)
        self.refresh(complete, stop)
        # Only this stream's record is decoded strictly (StateRecordError when it
        # cannot be used): a bad one stops this stream, not every stream.
        with self._lock:
            return self._records.entry(stream_id, now_us())

    def problems(self) -> dict[str, str]:
        """Per key whose record cannot be used, as of the last refresh: the error its
        stream stops with."""
        with self._lock:
            return self._records.problems(now_us())

    def close(self) -> None:
        with self._lock:
            self._close_clients()
            if self._glances is not None:
                self._glances.close()

    def _close_clients(self) -> None:
        for client in (self._reader, self._offsets):
            if client is not None:
                client.close()
        self._reader = self._offsets = None
