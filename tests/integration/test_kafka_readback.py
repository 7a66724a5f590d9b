"""Read-back: partition tails (dedupe seed) with their bounds, stream filter and control
markers; where a read ends."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from bridge.kafka.producer import TransactionalProducer
from bridge.kafka.readback import (
    low_high,
    open_reader,
    read_ranges,
    read_topic,
    recent_records,
)
from bridge.records import STREAM_HEADER
from tests.bridge_harness import wait_until
from tests.kafka_fixture import create_topic


def _fill(
    bootstrap: str, txn_id: str, topic: str, per_txn: list[list[tuple[int, str, str]]]
) -> None:
    """Commit one transaction per inner list of (partition key index, stream, value)."""

    async def run() -> None:
        producer = TransactionalProducer({"bootstrap.servers": bootstrap}, txn_id, "fill")
        await producer.init()
        for txn in per_txn:
            producer.begin()
            for part, stream, value in txn:
                producer._producer.produce(
                    topic,
                    value.encode(),
                    b"k",
                    partition=part,
                    headers=[(STREAM_HEADER, stream.encode())],
                )
            await producer.commit()
        producer.close()

    asyncio.run(run())
    # Each transaction ends with a marker on every partition it wrote to; the broker writes
    # the markers just after the commit returns. Reads start once they are there.
    ends: dict[int, int] = {}
    for txn in per_txn:
        for part in {part for part, _, _ in txn}:
            ends[part] = ends.get(part, 0) + sum(1 for p, _, _ in txn if p == part) + 1
    reader = open_reader({"bootstrap.servers": bootstrap})
    try:
        wait_until(
            lambda: all(low_high(reader, topic, p)[1] == end for p, end in ends.items()),
            10,
            "the commit markers",
        )
    finally:
        reader.close()


def test_reads_the_committed_tail_of_each_partition_for_one_stream(
    kafka_bootstrap: str, make_topic: Callable[..., str], unique_name: Callable[[str], str]
) -> None:
    topic = make_topic(partitions=3)
    # Partition 0: 10 single-record transactions (each followed by a commit marker),
    # partition 1: one 10-record transaction, partition 2: empty. Streams interleave.
    txns = [[(0, "a" if i % 2 else "b", f"p0-{i}")] for i in range(10)]
    txns.append([(1, "a", f"p1-{i}") for i in range(10)])
    _fill(kafka_bootstrap, unique_name("txn"), topic, txns)
    config = {"bootstrap.servers": kafka_bootstrap}

    # Partition 0 holds offsets 0..19 (record, marker, ...), end 20: its last 6 offsets are
    # records 7, 8, 9. Partition 1 holds 0..9 and a marker at 10, end 11: last 6 = 5..9.
    rows = recent_records(config, topic, "a", 6)
    values = [r.value for r in rows]
    assert values == [b"p0-7", b"p0-9"] + [f"p1-{i}".encode() for i in range(5, 10)]
    assert all((STREAM_HEADER, b"a") in r.headers for r in rows)

    assert [r.value for r in recent_records(config, topic, "b", 6)] == [b"p0-8"]
    everything = recent_records(config, topic, "a", 1000)
    assert len(everything) == 15
    assert recent_records(config, topic, "nobody", 1000) == []
    assert recent_records(config, topic, "a", 0) == []


def test_read_topic_reads_every_partition_to_its_end(
    kafka_bootstrap: str, make_topic: Callable[..., str], unique_name: Callable[[str], str]
) -> None:
    topic = make_topic(partitions=2)
    _fill(kafka_bootstrap, unique_name("txn"), topic, [[(0, "s", "x"), (0, "s", "y")]])
    records = read_topic({"bootstrap.servers": kafka_bootstrap}, topic)
    assert [(r.partition, r.offset, r.value) for r in records] == [(0, 0, b"x"), (0, 1, b"y")]


def test_offsets_are_asked_again_while_a_partition_has_no_leader_yet(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    """Right after a broker restarts or a leader moves, ListOffsets answers "not leader" or
    "unknown partition" for a while (two CI runs failed on that); a read asks again
    instead of failing. A partition whose topic appears a second after the question stands
    in for a leader that appears a second later."""
    topic = unique_name("late")
    timer = threading.Timer(1.0, lambda: create_topic(kafka_bootstrap, topic, partitions=2))
    reader = open_reader({"bootstrap.servers": kafka_bootstrap})
    timer.start()
    try:
        assert low_high(reader, topic, 1) == (0, 0)
    finally:
        timer.join()
        reader.close()


def test_a_read_ends_where_the_partition_ended_when_it_began(
    kafka_bootstrap: str, make_topic: Callable[..., str], unique_name: Callable[[str], str]
) -> None:
    """A writer that keeps committing (a busy state topic) does not keep a read going; each
    read resumes where the last ended, so together they see every record once, in order."""
    topic = make_topic()
    config = {"bootstrap.servers": kafka_bootstrap}
    committed = 0
    stop = threading.Event()

    async def write() -> None:
        nonlocal committed
        producer = TransactionalProducer(config, unique_name("txn"), "busy")
        await producer.init()
        while not stop.is_set():
            producer.begin()
            producer.produce(topic, b"k", str(committed).encode())
            await producer.commit()
            committed += 1
        producer.close()

    writer = threading.Thread(target=asyncio.run, args=(write(),))
    reader = open_reader(config)
    writer.start()
    try:
        wait_until(lambda: committed >= 50, timeout=30, what="the writer's first commits")
        values: list[bytes | None] = []
        starts = {0: 0}
        for _ in range(5):
            records, starts = read_ranges(reader, topic, starts, config, timeout=10)
            values += [r.value for r in records]
        assert len(values) >= 50
        assert values == [str(i).encode() for i in range(len(values))]
    finally:
        stop.set()
        writer.join(30)
        reader.close()


def test_a_read_ends_before_an_open_transaction_and_after_a_trailing_abort(
    kafka_bootstrap: str, make_topic: Callable[..., str], unique_name: Callable[[str], str]
) -> None:
    topic = make_topic()
    config = {"bootstrap.servers": kafka_bootstrap}
    _fill(kafka_bootstrap, unique_name("txn"), topic, [[(0, "s", "x")]])  # x, marker

    async def leave_open() -> tuple[TransactionalProducer, TransactionalProducer]:
        aborted = TransactionalProducer(config, unique_name("txn"), "aborted")
        await aborted.init()
        aborted.begin()
        aborted.produce(topic, b"k", b"aborted")
        await asyncio.to_thread(aborted._producer.flush, 10)
        await aborted.abort()  # offsets 2 (record) and 3 (abort marker)
        still_open = TransactionalProducer(config, unique_name("txn"), "open")
        await still_open.init()
        still_open.begin()
        still_open.produce(topic, b"k", b"open")
        await asyncio.to_thread(still_open._producer.flush, 10)  # offset 4, never committed
        return aborted, still_open

    reader = open_reader(config)
    aborted, still_open = asyncio.run(leave_open())
    try:
        # The coordinator writes the abort marker after abort() returns.
        wait_until(lambda: low_high(reader, topic, 0)[1] == 4, 10, "the abort marker")
        records, ends = read_ranges(reader, topic, {0: 0}, config, timeout=10)
        assert [r.value for r in records] == [b"x"]
        assert ends == {0: 4}  # the last stable offset: the open transaction's first record
        assert read_ranges(reader, topic, ends, config, timeout=10) == ([], ends)
    finally:
        aborted.close()
        still_open.close()
        reader.close()
