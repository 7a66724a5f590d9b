"""Every stream's committed position, kept in memory and followed from the state topic.

The state topic is compacted with one partition; its newest record per key (the stream id)
is that stream's position (a tombstone: none). Like Kafka Connect's offset store
(`KafkaBasedLog`), one read_committed reader per process reads the topic from the beginning
once, then on every `refresh()` only what was appended since, up to the current end. A
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

from bridge.kafka.readback import open_reader, partitions_of, read_ranges
from bridge.kafka.state import StateEntry, decode_state

log = logging.getLogger(__name__)


class PositionStore:
    """The newest committed `StateEntry` per stream id. Thread-safe (pipelines refresh it
    from worker threads)."""

    def __init__(self, config: Mapping[str, Any], topic: str) -> None:
        self.config = dict(config)
        self.topic = topic
        self._entries: dict[str, StateEntry] = {}
        self._next: dict[int, int] = {}
        """Per partition: the offset after the last one read (where the next read starts)."""
        self._reader: Consumer | None = None
        self._lock = threading.Lock()

    def refresh(self) -> dict[str, StateEntry]:
        """Read what was committed since the last refresh; every stream's newest entry."""
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
                self._next = dict.fromkeys(parts, 0)  # offset 0: from the beginning
            records, ends = read_ranges(self._reader, self.topic, self._next, self.config)
            newest: dict[str, bytes | None] = {}
            for record in records:
                if record.key is None:
                    log.warning(
                        "state record without key topic=%s offset=%d", self.topic, record.offset
                    )
                    continue
                newest[record.key.decode()] = record.value
            for stream_id, value in newest.items():
                if value is None:
                    self._entries.pop(stream_id, None)
                else:
                    self._entries[stream_id] = decode_state(value)
            self._next.update(ends)
            log.debug(
                "state followed topic=%s new_records=%d ms=%.0f",
                self.topic,
                len(records),
                (time.monotonic() - started) * 1e3,
            )
            return dict(self._entries)

    def latest(self, stream_id: str) -> StateEntry | None:
        """The stream's newest committed position, as of now (None: none stored)."""
        return self.refresh().get(stream_id)

    def close(self) -> None:
        with self._lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
