"""Reading our own topics back: partition ranges (the state topic) and partition tails (the
repeat filters' seed).

Every reader here is `isolation.level=read_committed` and uses `assign()` (no consumer
group, so no rebalance delay and no committed offsets). A read ends where each partition
ended when it began, like Kafka Connect's `readToEnd`: the last stable offset, asked by
ListOffsets, so open transactions are excluded and records committed during the read do not
keep it going. A reader that must see everything written before it began (the state topic,
shared by every stream: a stream's own newest position may lie after another stream's open
transaction) reads to the high watermark instead, and so waits for the transactions open
in that range to end. A partition is done once a record at or past that end is delivered, or once
librdkafka's partition-EOF event says the fetch position reached the end: transaction
control markers occupy offsets but are never delivered, so after a trailing marker only the
EOF event (compared with the fetch position) can say the end was reached.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka import KafkaError as LibKafkaError
from confluent_kafka import KafkaException as LibKafkaException

from bridge.errors import KafkaError
from bridge.kafka.acls import denied, is_denied
from bridge.kafka.client_log import client_log_config
from bridge.kafka.metadata import cluster_metadata
from bridge.records import STREAM_HEADER

T = TypeVar("T")
log = logging.getLogger(__name__)

READ_TIMEOUT_S = 30.0
"""Upper bound for reading a partition range: a compacted state topic or a tail of
`dedupe_window` records is read in well under a second; the rest is margin for a slow
broker."""

CONNECT_TIMEOUT_S = 10.0
"""How long to wait for the cluster to answer metadata before calling it unreachable."""

_POLL_S = 0.2
"""The longest wait for the next message: short so deadlines are honoured promptly."""

_BATCH = 10_000
"""Messages per consume() call: amortises the Python<->C crossing."""

Headers = list[tuple[str, bytes | None]]


class ReadStopped(Exception):
    """A read ended because its caller asked it to stop (see `read_ranges`)."""


async def unless_stopped(stop: asyncio.Event, read: Callable[[threading.Event], T]) -> T:
    """`read(halt)` in a worker thread, with `halt` set once `stop` is: a read that waits
    (`read_ranges`) then ends with `ReadStopped` instead of holding the stop."""
    halt = threading.Event()
    watcher = asyncio.create_task(stop.wait())
    watcher.add_done_callback(lambda _: halt.set())
    try:
        return await asyncio.to_thread(read, halt)
    finally:
        watcher.cancel()


class EndNotReached(KafkaError):
    """A read did not reach its end in time; `positions`: where each late partition's
    fetch stood (below the end: held back by a transaction still open there)."""

    def __init__(self, message: str, positions: Mapping[int, int]) -> None:
        super().__init__(message, retriable=True)
        self.positions = dict(positions)


@dataclass(frozen=True, slots=True)
class ReadRecord:
    """One record read back."""

    key: bytes | None
    value: bytes | None
    headers: Headers
    partition: int
    offset: int
    timestamp_ms: int = 0
    """The record's Kafka timestamp (CreateTime: when the producer produced it)."""


_READ_FETCH_WAIT_MS = 10
"""How long the broker may hold an empty fetch of a read that ends. librdkafka reports a
partition's EOF one fetch after its last records, and that fetch is empty: with Kafka's
default (500 ms) every read to an end took half a second longer."""


def about_placeholder_group(err: LibKafkaError | None) -> bool:
    """Whether a reader's consumer-level error is only its placeholder group.id denied:
    librdkafka looks up the coordinator of any consumer's group, even one that only
    assign()s, and reports the denial when the principal may not describe it. Readers never
    use the group, so the bridge needs no ACL for it (seen on the secured broker once a
    start's read of the state topic took more than one fetch)."""
    return err is not None and err.code() == LibKafkaError.GROUP_AUTHORIZATION_FAILED


def reader_config(config: Mapping[str, Any], follow: bool = False) -> dict[str, Any]:
    """A read_committed, group-less consumer config from the bridge's common client config;
    `follow` for a reader that waits for new records (keeps the default fetch wait)."""
    conf = {k: v for k, v in config.items() if not k.startswith(("transactional.", "linger."))}
    conf.update(
        {
            # group.id is mandatory for librdkafka consumers, but with assign() and no
            # offset commits it never joins or writes anything to the group coordinator.
            "group.id": "polybridge-reader",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            # Partition EOF is raised when the fetch position reaches the end (the LSO for
            # read_committed) a fetch response reported: past any trailing control marker.
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
        }
    )
    if not follow:
        conf["fetch.wait.max.ms"] = _READ_FETCH_WAIT_MS
    conf.update(client_log_config(conf))
    return conf


def bootstrap_of(config: Mapping[str, Any]) -> str:
    return str(config.get("bootstrap.servers", "?"))


def partitions_of(consumer: Consumer, topic: str, config: Mapping[str, Any]) -> list[int]:
    """The partition ids of `topic`, or a clear `KafkaError` within `CONNECT_TIMEOUT_S`."""
    meta = cluster_metadata(consumer, config, CONNECT_TIMEOUT_S).topics.get(topic)
    if meta is None or meta.error is not None:
        if meta is not None and meta.error.code() == LibKafkaError.UNKNOWN_TOPIC_OR_PART:
            raise KafkaError(f"topic {topic} does not exist", retriable=False)
        if meta is not None and is_denied(meta.error):  # Describe: implied by READ
            raise KafkaError(denied(config, meta.error, "READ", f"reading {topic}", topic))
        raise KafkaError(f"cannot describe topic {topic}: {meta.error if meta else 'absent'}")
    return sorted(meta.partitions)


def read_ranges(
    consumer: Consumer,
    topic: str,
    starts: Mapping[int, int],
    config: Mapping[str, Any],
    timeout: float = READ_TIMEOUT_S,
    stable_ends: Mapping[int, int] | None = None,
    each: Callable[[ReadRecord], None] | None = None,
    stop: threading.Event | None = None,
) -> tuple[list[ReadRecord], dict[int, int]]:
    """Read each partition from `starts[p]` to the end it had when the read began; the
    records and the offset each partition's next read starts from. The end is each
    partition's last stable offset, or `stable_ends[p]` when given: a caller that has just
    listed them passes them, and one that passes high watermarks (`high_watermarks`) waits
    until every transaction open below them has ended.

    Records come in partition order, then offset order; with `each`, they go to it as they
    arrive instead (in offset order per partition) and none is returned: a read of a long
    topic then holds one record at a time. `stop`, once set, ends a read that is waiting
    (`ReadStopped`).
    """
    deadline = time.monotonic() + timeout
    targets = dict(stable_ends or {p: low_high(consumer, topic, p)[1] for p in starts})
    ends = {p: start for p, start in starts.items() if start >= targets[p]}
    pending = {p: start for p, start in starts.items() if p not in ends}
    per_partition: dict[int, list[ReadRecord]] = {p: [] for p in starts}
    if not pending:
        return [], ends  # nothing was committed since: no fetch needed
    consumer.assign([TopicPartition(topic, p, o) for p, o in pending.items()])
    try:
        while pending:
            if stop is not None and stop.is_set():
                raise ReadStopped(f"reading {topic}: asked to stop")
            if time.monotonic() > deadline:
                missing = sorted(pending)
                positions = {
                    tp.partition: tp.offset
                    for tp in consumer.position([TopicPartition(topic, p) for p in missing])
                }
                raise EndNotReached(
                    f"reading {topic} partitions {missing} from {bootstrap_of(config)} did not "
                    f"reach offsets {[targets[p] for p in missing]} within {timeout:.0f} s "
                    f"({_where(consumer, topic, missing)}; a transaction still open there "
                    "ends when it commits, when its stream's next owner starts, or at the "
                    "broker's transaction.timeout.ms)",
                    positions,
                )
            for msg in next_messages(consumer):
                err = msg.error()
                part = msg.partition()
                offset = msg.offset()
                if part is None or offset is None:
                    if about_placeholder_group(err):
                        continue
                    if err is not None and is_denied(err):
                        raise KafkaError(denied(config, err, "READ", f"reading {topic}", topic))
                    if err is not None and (err.fatal() or not err.retriable()):
                        raise KafkaError(f"reading {topic}: {err.str()}")
                    continue
                if part not in pending:
                    continue  # fetched past the end of a partition that is done
                if err is not None:
                    if err.code() == LibKafkaError._PARTITION_EOF:
                        # Below the target: an open transaction holds the stable offset
                        # back; its records or markers follow once it ends.
                        if offset >= targets[part]:
                            ends[part] = offset
                            del pending[part]
                        continue
                    if is_denied(err):
                        raise KafkaError(denied(config, err, "READ", f"reading {topic}", topic))
                    if err.fatal() or not err.retriable():
                        raise KafkaError(f"reading {topic} [{part}]: {err.str()}")
                    log.debug("transient read error topic=%s error=%s", topic, err.str())
                    continue
                headers = _headers(msg.headers())
                stamp = msg.timestamp()[1]
                record = ReadRecord(msg.key(), msg.value(), headers, part, offset, stamp)
                if each is None:
                    per_partition[part].append(record)
                else:
                    each(record)
                if offset + 1 >= targets[part]:
                    ends[part] = offset + 1
                    del pending[part]
    finally:
        consumer.unassign()
    return [r for p in sorted(per_partition) for r in per_partition[p]], ends


def next_messages(consumer: Consumer, wait_s: float = _POLL_S) -> list[Any]:
    """What the consumer has ready (up to `_BATCH`), else the next message within `wait_s`.

    Not `consume(_BATCH, wait_s)`: that returns only once `_BATCH` messages are there or
    the whole `wait_s` has passed, so every read ending on a partial batch (every small
    read) would take `wait_s` longer.
    """
    ready: list[Any] = consumer.consume(_BATCH, 0)
    if ready:
        return ready
    msg = consumer.poll(wait_s)
    return [] if msg is None else [msg]


def _headers(raw: Any) -> Headers:
    """Message headers as (name, bytes) pairs (librdkafka hands us bytes values)."""
    if not raw:
        return []
    pairs = raw.items() if isinstance(raw, dict) else raw
    return [(k, v.encode() if isinstance(v, str) else v) for k, v in pairs]


def _where(consumer: Consumer, topic: str, partitions: list[int]) -> str:
    """Each partition's fetch position and the end the broker last reported, for errors."""
    where = []
    for tp in consumer.position([TopicPartition(topic, p) for p in partitions]):
        _, high = consumer.get_watermark_offsets(tp, cached=True)
        where.append(f"[{tp.partition}] at {tp.offset}, last fetch saw {high}")
    return ", ".join(where)


_MOVING_LEADER = frozenset(
    {
        LibKafkaError.NOT_LEADER_FOR_PARTITION,
        LibKafkaError.LEADER_NOT_AVAILABLE,
        LibKafkaError._UNKNOWN_PARTITION,
        LibKafkaError.UNKNOWN_TOPIC_OR_PART,
    }
)
"""ListOffsets answers while a leader moves or a broker has just come back and not yet
loaded its partitions: librdkafka refreshes its metadata on them, so asking again soon
succeeds."""

_RETRY_S = 0.1
"""Back-off between ListOffsets attempts while a leader moves."""


def low_high(consumer: Consumer, topic: str, partition: int) -> tuple[int, int]:
    """(low, high) by ListOffsets; for a read_committed reader `high` is the last stable
    offset, for a read_uncommitted one the high watermark. Asks again while the partition's
    leader moves, for up to `CONNECT_TIMEOUT_S`."""
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while True:
        left = deadline - time.monotonic()
        try:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=max(left, 0.1), cached=False
            )
            return int(low), int(high)
        except LibKafkaException as exc:
            err = exc.args[0]
            if err.code() not in _MOVING_LEADER or left <= _RETRY_S:
                raise KafkaError(
                    f"cannot list offsets of {topic} [{partition}]: {err}", retriable=True
                ) from exc
        time.sleep(_RETRY_S)


def open_reader(config: Mapping[str, Any], follow: bool = False) -> Consumer:
    return Consumer(reader_config(config, follow))


def open_offsets_reader(config: Mapping[str, Any]) -> Consumer:
    """A consumer that only lists offsets, read_uncommitted: its high offset is the high
    watermark (open transactions included), for `high_watermarks`."""
    conf = reader_config(config)
    conf["isolation.level"] = "read_uncommitted"
    return Consumer(conf)


def high_watermarks(offsets_reader: Consumer, topic: str, partitions: list[int]) -> dict[int, int]:
    """Each partition's high watermark (by ListOffsets through `open_offsets_reader`)."""
    return {p: low_high(offsets_reader, topic, p)[1] for p in partitions}


def header(headers: Headers, name: str) -> bytes | None:
    """The last value of header `name`, or None."""
    found: bytes | None = None
    for key, value in headers:
        if key == name:
            found = value
    return found


def recent_records(
    config: Mapping[str, Any], topic: str, stream_id: str, per_partition: int
) -> list[ReadRecord]:
    """The committed tail of every partition of `topic` that belongs to `stream_id`.

    For each partition, reads the offsets [max(low, end - per_partition), end) where `end` is
    the last stable offset (control markers count as offsets, so a tail of N offsets holds
    at most N records), keeps those whose `polybridge.stream` header equals `stream_id`, and
    returns them in partition order, then offset order. Seeds the repeat filters.
    """
    if per_partition <= 0:
        return []
    wanted = stream_id.encode()
    consumer = open_reader(config)
    try:
        starts, ends = {}, {}
        for p in partitions_of(consumer, topic, config):
            low, ends[p] = low_high(consumer, topic, p)
            starts[p] = max(low, ends[p] - per_partition)
        records, _ = read_ranges(consumer, topic, starts, config, stable_ends=ends)
        return [r for r in records if header(r.headers, STREAM_HEADER) == wanted]
    finally:
        consumer.close()


def read_topic(
    config: Mapping[str, Any], topic: str, timeout: float = READ_TIMEOUT_S
) -> list[ReadRecord]:
    """Every committed record of `topic`, all partitions, from the beginning to the end."""
    consumer = open_reader(config)
    try:
        bounds = {p: low_high(consumer, topic, p) for p in partitions_of(consumer, topic, config)}
        starts = {p: low for p, (low, _) in bounds.items()}
        ends = {p: high for p, (_, high) in bounds.items()}
        records, _ = read_ranges(consumer, topic, starts, config, timeout, stable_ends=ends)
        return records
    finally:
        consumer.close()
