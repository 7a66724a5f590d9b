"""The transactional producer against a real broker: visibility, errors, fencing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from confluent_kafka import KafkaException as LibKafkaException

from bridge.errors import FencedError, KafkaError
from bridge.kafka.producer import TransactionalProducer, TxnState
from tests.kafka_fixture import Row, read_all

HEADERS = [("polybridge.stream", b"s1")]


def _producer(bootstrap: str, txn_id: str, **extra: str | int) -> TransactionalProducer:
    return TransactionalProducer({"bootstrap.servers": bootstrap, **extra}, txn_id, "s1")


def test_committed_records_are_visible_to_read_committed_readers(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    read_topic: Callable[[str], list[Row]],
    unique_name: Callable[[str], str],
) -> None:
    data, state = make_topic(partitions=2), make_topic(config={"cleanup.policy": "compact"})

    async def run() -> TransactionalProducer:
        producer = _producer(kafka_bootstrap, unique_name("txn"))
        await producer.init()
        producer.begin()
        for i in range(100):
            producer.produce(data, f"k{i}".encode(), f"v{i}".encode(), HEADERS)
        producer.produce(state, b"s1", b"position", HEADERS)
        await producer.commit()
        producer.close()
        return producer

    producer = asyncio.run(run())
    rows = read_topic(data)
    assert sorted(r[1] for r in rows if r[1]) == sorted(f"v{i}".encode() for i in range(100))
    assert rows[0][2] == HEADERS
    assert [r[1] for r in read_topic(state)] == [b"position"]
    assert producer.delivered_records == 101
    assert producer.delivered_bytes > 101 * 3


def test_aborted_records_are_invisible_to_read_committed_readers(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    read_topic: Callable[[str], list[Row]],
    unique_name: Callable[[str], str],
) -> None:
    topic = make_topic()

    async def run() -> None:
        producer = _producer(kafka_bootstrap, unique_name("txn"))
        await producer.init()
        producer.begin()
        producer.produce(topic, b"k", b"aborted", HEADERS)
        await producer.abort()
        producer.begin()
        producer.produce(topic, b"k", b"committed", HEADERS)
        await producer.commit()
        producer.close()

    asyncio.run(run())
    assert [r[1] for r in read_topic(topic)] == [b"committed"]


def test_an_open_transaction_holds_back_what_follows_it_until_committed(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    read_topic: Callable[[str], list[Row]],
    unique_name: Callable[[str], str],
) -> None:
    """Behind an open transaction even another producer's committed records wait (the last
    stable offset); a read_uncommitted reader sees them all."""
    topic = make_topic()

    def values(rows: list[Row]) -> list[bytes | None]:
        return [row[1] for row in rows]

    async def run() -> None:
        first = _producer(kafka_bootstrap, unique_name("txn"))
        second = _producer(kafka_bootstrap, unique_name("txn"))
        await first.init()
        await second.init()
        first.begin()
        first.produce(topic, b"k", b"first", HEADERS)
        await first.commit()
        first.begin()
        first.produce(topic, b"k", b"pending", HEADERS)
        await asyncio.to_thread(first._producer.flush, 5)
        second.begin()
        second.produce(topic, b"k", b"behind", HEADERS)
        await second.commit()
        assert values(read_topic(topic)) == [b"first"]
        uncommitted = read_all(kafka_bootstrap, topic, isolation="read_uncommitted")
        assert values(uncommitted) == [b"first", b"pending", b"behind"]
        await first.commit()
        assert values(read_topic(topic)) == [b"first", b"pending", b"behind"]
        first.close()
        second.close()

    asyncio.run(run())


def test_unreachable_broker_gives_a_clear_bounded_error() -> None:
    producer = _producer("127.0.0.1:1", "nobody")
    started = time.monotonic()
    with pytest.raises(
        KafkaError, match=r"cannot reach Kafka at 127\.0\.0\.1:1 within 2 s"
    ) as info:
        asyncio.run(producer.init(timeout=2))
    assert time.monotonic() - started < 6
    assert info.value.retriable
    producer.close()


async def _fenced_pair(
    bootstrap: str, topic: str, txn_id: str
) -> tuple[TransactionalProducer, TransactionalProducer]:
    """A producer with a transaction open and flushed, then a successor with the same
    transactional id whose init_transactions fenced it."""
    zombie = _producer(bootstrap, txn_id)
    await zombie.init()
    zombie.begin()
    zombie.produce(topic, b"k", b"zombie-1", HEADERS)
    await asyncio.to_thread(zombie._producer.flush, 5)
    successor = _producer(bootstrap, txn_id)
    await successor.init(timeout=30)
    return zombie, successor


def test_a_second_producer_with_the_same_id_fences_the_first(
    kafka_bootstrap: str, make_topic: Callable[..., str], unique_name: Callable[[str], str]
) -> None:
    """The zombie cannot commit and learns it as fencing (PRODUCER_FENCED /
    INVALID_PRODUCER_EPOCH -> FencedError), within a bounded time; its transaction, aborted
    by the successor's init_transactions, stays invisible."""
    topic, txn_id = make_topic(), unique_name("txn")

    async def run() -> tuple[BaseException, float]:
        zombie, successor = await _fenced_pair(kafka_bootstrap, topic, txn_id)

        started = time.monotonic()
        try:
            zombie.produce(topic, b"k", b"zombie-2", HEADERS)
            await zombie.commit(timeout=5)
        except KafkaError as exc:
            error: BaseException = exc
        else:
            raise AssertionError("a fenced producer committed")
        took = time.monotonic() - started
        assert zombie.state is TxnState.FENCED

        successor.begin()
        successor.produce(topic, b"k", b"successor", HEADERS)
        await successor.commit()
        successor.close()
        zombie.close()
        return error, took

    error, took = asyncio.run(run())
    assert took < 7
    assert isinstance(error, FencedError), repr(error)
    assert "s1" in str(error) and "fenced" in str(error)
    assert [r[1] for r in read_all(kafka_bootstrap, topic)] == [b"successor"]


def test_a_fenced_idle_producer_commit_ends_within_its_timeout(
    kafka_bootstrap: str, make_topic: Callable[..., str], unique_name: Callable[[str], str]
) -> None:
    """Nothing left to send when fenced: the commit fails as fencing, promptly."""
    topic, txn_id = make_topic(), unique_name("txn")

    async def run() -> tuple[KafkaError, float]:
        zombie, successor = await _fenced_pair(kafka_bootstrap, topic, txn_id)
        started = time.monotonic()
        with pytest.raises(KafkaError) as info:
            await zombie.commit(timeout=3)
        took = time.monotonic() - started
        zombie.close()
        successor.close()
        return info.value, took

    error, took = asyncio.run(run())
    assert took < 5
    assert isinstance(error, FencedError), repr(error)
    assert read_all(kafka_bootstrap, topic) == []


def test_a_fence_learnt_in_the_background_is_still_reported_as_fencing(
    kafka_bootstrap: str, make_topic: Callable[..., str], unique_name: Callable[[str], str]
) -> None:
    """Once librdkafka has raised the fence (`_FENCED`) from one call, it answers every
    later call with a bare `_FATAL`; the producer still reports that as fencing."""
    topic, txn_id = make_topic(), unique_name("txn")

    async def run() -> BaseException:
        zombie, successor = await _fenced_pair(kafka_bootstrap, topic, txn_id)
        zombie._producer.produce(topic, b"zombie-2", b"k")
        with pytest.raises(LibKafkaException):  # the fence, raised where nobody reads it
            await asyncio.to_thread(zombie._producer.flush, 10)
        zombie._txn_error = None  # as if its delivery report had been served elsewhere
        with pytest.raises(KafkaError) as info:
            zombie.produce(topic, b"k", b"zombie-3", HEADERS)
        successor.close()
        zombie.close()
        return info.value

    error = asyncio.run(run())
    assert isinstance(error, FencedError), repr(error)
    assert [r[1] for r in read_all(kafka_bootstrap, topic)] == []
