"""Read-back of partition tails (dedupe seed): bounds, stream filter, control markers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from bridge.kafka.producer import TransactionalProducer
from bridge.kafka.readback import read_topic, recent_records
from bridge.records import STREAM_HEADER


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
