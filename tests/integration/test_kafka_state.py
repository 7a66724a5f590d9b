"""State topic: newest position per stream, tombstones, transactional writes, topic checks."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import tracemalloc
from collections.abc import Callable

import pytest

from bridge.eos.positions import PositionStore
from bridge.errors import ConfigError, KafkaError
from bridge.kafka import admin, readback
from bridge.kafka.admin import TopicSpec, check_state_topic, ensure_topics, topic_config
from bridge.kafka.producer import TransactionalProducer
from bridge.kafka.state import STATE_SCHEMA, encode_state, write_state
from bridge.records import Position
from bridge.serde.avro import Serializer, SingleObjectFormat
from tests.bridge_harness import until, wait_until

COMPACT = {"cleanup.policy": "compact"}
SER = Serializer(STATE_SCHEMA, SingleObjectFormat().prefix(STATE_SCHEMA, "state"))


def _value(stream: str, token: bytes, owner: str = "me") -> bytes:
    return encode_state(stream, "dropcopy", Position(resume_token=token), owner, 1, SER)


def _token(store: PositionStore, stream: str) -> bytes | None:
    entry = store.latest(stream)
    return entry.position.resume_token if entry is not None else None


def test_load_returns_the_newest_committed_position_per_stream(
    kafka_bootstrap: str, make_topic: Callable[..., str], unique_name: Callable[[str], str]
) -> None:
    topic = make_topic(config={"cleanup.policy": "compact"})
    config = {"bootstrap.servers": kafka_bootstrap}

    async def run() -> None:
        producer = TransactionalProducer(config, unique_name("txn"), "many")
        await producer.init()
        for i in range(3):
            producer.begin()
            producer.produce(topic, b"a", _value("a", b"a%d" % i))
            producer.produce(topic, b"b", _value("b", b"b%d" % i))
            await producer.commit()
        producer.begin()
        producer.produce(topic, b"c", _value("c", b"c0"))
        producer.produce(topic, b"b", None)  # b reset: tombstone
        await producer.commit()
        producer.close()

    asyncio.run(run())
    store = PositionStore(config, topic)
    loaded = store.refresh()
    assert set(loaded) == {"a", "c"}
    assert loaded["a"].position.resume_token == b"a2"
    assert loaded["c"].position.resume_token == b"c0"
    assert store.latest("b") is None
    latest = store.latest("a")
    assert latest is not None and latest.owner == "me"


def test_load_of_an_empty_state_topic_is_empty(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    topic = make_topic(config={"cleanup.policy": "compact"})
    started = time.monotonic()
    assert PositionStore({"bootstrap.servers": kafka_bootstrap}, topic).refresh() == {}
    assert time.monotonic() - started < 5


def test_write_state_replaces_and_resets_a_position(
    kafka_bootstrap: str, make_topic: Callable[..., str], unique_name: Callable[[str], str]
) -> None:
    topic = make_topic(config={"cleanup.policy": "compact"})
    config = {"bootstrap.servers": kafka_bootstrap}
    txn = unique_name("app") + ".s"
    store = PositionStore(config, topic)
    asyncio.run(write_state(config, topic, txn, "s", _value("s", b"t1", owner="reset")))
    # The broker writes a transaction's commit marker just after the commit returns, so a
    # read_committed reader sees it moments later.
    wait_until(lambda: _token(store, "s") == b"t1", 10, "the written position")
    entry = store.latest("s")
    assert entry is not None and entry.owner == "reset"
    asyncio.run(write_state(config, topic, txn, "s", None))
    # The same store follows the topic: no re-read.
    wait_until(lambda: store.latest("s") is None, 10, "the tombstone")


def test_the_position_store_follows_the_topic_and_hides_open_transactions(
    kafka_bootstrap: str, make_topic: Callable[..., str], unique_name: Callable[[str], str]
) -> None:
    """Each refresh reads only what was appended since the last; a transaction still open
    (or aborted) is not a position, and a quick look (`complete=False`) does not wait for
    it."""
    topic = make_topic(config={"cleanup.policy": "compact"})
    config = {"bootstrap.servers": kafka_bootstrap}
    store = PositionStore(config, topic)

    async def run() -> None:
        producer = TransactionalProducer(config, unique_name("txn"), "s")
        await producer.init()
        for token in (b"t1", b"t2"):
            producer.begin()
            producer.produce(topic, b"s", _value("s", token))
            await producer.commit()
            await until(lambda t=token: _token(store, "s") == t)  # once its marker is written
        producer.begin()
        producer.produce(topic, b"s", _value("s", b"aborted"))
        await producer.abort()
        producer.begin()
        producer.produce(topic, b"s", _value("s", b"open"))
        await asyncio.to_thread(producer._producer.flush, 5)
        latest = await asyncio.to_thread(store.latest, "s", False)
        assert latest is not None and latest.position.resume_token == b"t2"
        await producer.commit()
        await until(lambda: _token(store, "s") == b"open")
        producer.close()

    try:
        asyncio.run(run())
    finally:
        store.close()


def test_ensure_topics_creates_missing_topics_once(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    config = {"bootstrap.servers": kafka_bootstrap}
    state = unique_name("state")
    specs = [
        TopicSpec(state, 1, 1, {"cleanup.policy": "compact"}),
        TopicSpec(unique_name("data"), 3, 1, {}),
    ]
    assert sorted(ensure_topics(config, specs)) == sorted(s.name for s in specs)
    assert ensure_topics(config, specs) == []
    assert topic_config(config, state)["cleanup.policy"] == "compact"
    check_state_topic(config, state)


def test_a_state_topic_that_is_not_compacted_is_refused(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    topic = make_topic(config={"cleanup.policy": "delete"})
    with pytest.raises(ConfigError, match=rf"state topic {topic} has cleanup.policy=delete"):
        check_state_topic({"bootstrap.servers": kafka_bootstrap}, topic)


def test_a_state_topic_the_metadata_shows_late_is_still_checked(
    kafka_bootstrap: str, unique_name: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Metadata trails a topic's creation: a check that took "not there yet" for "nothing to
    check" let a bridge without DESCRIBE_CONFIGS start in CI. A topic that appears a second
    after the check began stands in for the trailing metadata; one that never appears is an
    error naming it."""
    config = {"bootstrap.servers": kafka_bootstrap}
    late = unique_name("late")
    timer = threading.Timer(
        1.0, lambda: ensure_topics(config, [TopicSpec(late, 1, 1, {"cleanup.policy": "delete"})])
    )
    timer.start()
    try:
        with pytest.raises(ConfigError, match=rf"state topic {late} has cleanup.policy=delete"):
            check_state_topic(config, late)
    finally:
        timer.join()
    monkeypatch.setattr(admin, "ADMIN_TIMEOUT_S", 1.0)
    absent = unique_name("absent")
    with pytest.raises(KafkaError, match=rf"topic {absent} is not in the cluster's metadata"):
        check_state_topic(config, absent)


def test_unreachable_broker_gives_clear_bounded_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    # The production bounds are 10 s; shortened so the test stays quick.
    monkeypatch.setattr(readback, "CONNECT_TIMEOUT_S", 2.0)
    monkeypatch.setattr(admin, "ADMIN_TIMEOUT_S", 2.0)
    config = {"bootstrap.servers": "127.0.0.1:1"}
    expected = r"cannot reach Kafka at 127\.0\.0\.1:1 within 2 s"
    started = time.monotonic()
    with pytest.raises(KafkaError, match=expected) as info:
        PositionStore(config, "polybridge.state").refresh()
    assert info.value.retriable
    with pytest.raises(KafkaError, match=expected):
        ensure_topics(config, [TopicSpec("x")])
    with pytest.raises(KafkaError, match=expected):
        check_state_topic(config, "polybridge.state")
    assert time.monotonic() - started < 10


def test_a_store_asked_before_its_topic_exists_reads_it_once_created(
    kafka_bootstrap: str, make_topic: Callable[..., str], unique_name: Callable[[str], str]
) -> None:
    name = unique_name("later")
    config = {"bootstrap.servers": kafka_bootstrap}
    store = PositionStore(config, name)
    try:
        with pytest.raises(KafkaError, match=name):
            store.refresh()
        make_topic(name, config={"cleanup.policy": "compact"})
        asyncio.run(write_state(config, name, unique_name("txn"), "s", _value("s", b"t1")))
        entry = store.latest("s")
        assert entry is not None and entry.position.resume_token == b"t1"
    finally:
        store.close()


def test_a_start_holds_one_state_record_at_a_time_however_long_the_topic(
    kafka_bootstrap: str, make_topic: Callable[..., str], unique_name: Callable[[str], str]
) -> None:
    """Compaction cleans only closed segments, so a start may read a long history of one
    stream's positions: it keeps the newest, and its memory does not grow with the rest
    (a start that listed them all held 31 MB here, and hundreds in a soak)."""
    topic = make_topic(config={"cleanup.policy": "compact"})
    config = {"bootstrap.servers": kafka_bootstrap}
    history = 60_000

    def token(i: int) -> bytes:
        return b"token-%06d" % i + b"." * 200

    async def run() -> None:
        producer = TransactionalProducer(config, unique_name("txn"), "s")
        await producer.init()
        for start in range(0, history, 10_000):
            producer.begin()
            for i in range(start, start + 10_000):
                producer.produce(topic, b"s", _value("s", token(i)))
            await producer.commit()
        producer.close()

    asyncio.run(run())
    store = PositionStore(config, topic)
    try:
        tracemalloc.start()
        try:
            loaded = store.refresh()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    finally:
        store.close()
    assert loaded["s"].position.resume_token == token(history - 1)
    assert peak < 10 * 2**20, f"the read held {peak / 2**20:.1f} MB"


def test_the_state_topic_is_created_to_be_compacted_within_minutes(
    kafka_bootstrap: str, unique_name: Callable[[str], str], caplog: pytest.LogCaptureFixture
) -> None:
    """The bridge's own state topic rolls its segments every 10 minutes (compaction cleans
    only closed ones); an existing one that keeps Kafka's 7 days is used, with a warning
    that says how to fix it."""
    config = {"bootstrap.servers": kafka_bootstrap}
    ours, theirs = unique_name("state"), unique_name("state")
    ensure_topics(
        config,
        [TopicSpec(ours, 1, 1, admin.STATE_TOPIC_CONFIG), TopicSpec(theirs, 1, 1, COMPACT)],
    )
    assert topic_config(config, ours)["segment.ms"] == "600000"
    with caplog.at_level(logging.WARNING, logger="bridge.kafka.admin"):
        check_state_topic(config, ours)
        assert not caplog.records
        check_state_topic(config, theirs)
    assert [r.getMessage() for r in caplog.records] == [
        f"state topic {theirs} rolls its segments every 168.0 h (segment.ms=604800000): "
        "compaction only cleans closed segments, so each start reads every position committed "
        f"since. Set `kafka-configs --alter --entity-type topics --entity-name {theirs} "
        "--add-config segment.ms=600000`"
    ]
