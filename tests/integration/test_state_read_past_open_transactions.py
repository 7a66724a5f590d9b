"""A stream's start reads its own newest position even while another stream's transaction
is open on the state topic.

The state topic is shared by every stream. A read_committed read that ends at the last
stable offset stops before the first record of any transaction still open there, so a
stream whose own newest commit lies after another stream's open transaction would read an
older position and write again what it had already committed (the duplicates a broker
kill left: every stream had a transaction open when the broker died)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from bridge.eos.positions import PositionStore
from bridge.kafka.producer import TransactionalProducer
from bridge.kafka.readback import ReadStopped
from bridge.kafka.state import STATE_SCHEMA, encode_state
from bridge.records import Position
from bridge.serde.avro import Serializer, SingleObjectFormat
from tests.bridge_harness import wait_until

SER = Serializer(STATE_SCHEMA, SingleObjectFormat().prefix(STATE_SCHEMA, "state"))


def _value(stream: str, token: bytes) -> bytes:
    return encode_state(stream, "dropcopy", Position(resume_token=token), "me", 1, SER)


def _commit_after_an_open_transaction(
    loop: asyncio.AbstractEventLoop,
    topic: str,
    other: TransactionalProducer,
    mine: TransactionalProducer,
) -> None:
    """`mine` commits token old, then `other` opens a transaction on the topic (its state
    record written, not committed: a commit in flight), then `mine` commits token new
    after it."""
    loop.run_until_complete(other.init())
    loop.run_until_complete(mine.init())
    mine.begin()
    mine.produce(topic, b"mine", _value("mine", b"old"))
    loop.run_until_complete(mine.commit())
    other.begin()
    other.produce(topic, b"other", _value("other", b"o1"))
    other._producer.flush(10)  # on the broker: the transaction is open there
    mine.begin()
    mine.produce(topic, b"mine", _value("mine", b"new"))
    loop.run_until_complete(mine.commit())


@dataclass(frozen=True)
class OpenTransaction:
    """A state topic on which `mine` committed token old, then `other` left a transaction
    open, then `mine` committed token new after it (`_commit_after_an_open_transaction`)."""

    config: dict[str, str]
    topic: str
    loop: asyncio.AbstractEventLoop
    other: TransactionalProducer


@contextlib.contextmanager
def _an_open_transaction(
    bootstrap: str, make_topic: Callable[..., str], unique_name: Callable[[str], str]
) -> Iterator[OpenTransaction]:
    topic = make_topic(config={"cleanup.policy": "compact"})
    config = {"bootstrap.servers": bootstrap}
    loop = asyncio.new_event_loop()
    other = TransactionalProducer(config, unique_name("other"), "other")
    mine = TransactionalProducer(config, unique_name("mine"), "mine")
    try:
        _commit_after_an_open_transaction(loop, topic, other, mine)
        yield OpenTransaction(config, topic, loop, other)
    finally:
        other.close()
        mine.close()
        loop.close()


def test_a_start_reads_its_own_commit_that_follows_another_streams_open_transaction(
    kafka_bootstrap: str, make_topic: Callable[..., str], unique_name: Callable[[str], str]
) -> None:
    with _an_open_transaction(kafka_bootstrap, make_topic, unique_name) as opened:
        read: dict[str, bytes | None] = {}
        reader = threading.Thread(
            target=lambda: read.update(
                mine=(
                    entry.position.resume_token
                    if (entry := PositionStore(opened.config, opened.topic).latest("mine"))
                    else None
                )
            )
        )
        reader.start()
        # The read may not end before the open transaction does: its end is unknown yet.
        reader.join(timeout=2.0)
        assert reader.is_alive(), f"the read ended on an open transaction with {read}"
        settled_at = time.monotonic()
        opened.loop.run_until_complete(opened.other.commit())
        reader.join(timeout=30.0)
        assert not reader.is_alive(), "the read did not end once the transaction ended"
        assert time.monotonic() - settled_at < 5.0
        assert read == {"mine": b"new"}


def test_a_transaction_open_past_the_transaction_timeout_is_reported_and_not_waited_for_again(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    unique_name: Callable[[str], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A transaction open longer than any transaction may be (a hanging one) would stop
    every stream's start: the wait ends, the error names the offset to abort, the start goes
    on from the stable view, and no later start waits for it again."""
    with (
        _an_open_transaction(kafka_bootstrap, make_topic, unique_name) as opened,
        contextlib.closing(
            PositionStore(opened.config, opened.topic, transaction_timeout_s=1.0)  # waits 6 s
        ) as store,
    ):
        with caplog.at_level(logging.ERROR, logger="bridge.eos.positions"):
            started = time.monotonic()
            first = store.latest("mine")
            waited = time.monotonic() - started
            started = time.monotonic()
            again = store.latest("mine")
            second = time.monotonic() - started
        assert 6.0 <= waited < 20.0
        assert first is not None and first.position.resume_token == b"old"  # the stable view
        assert again is not None and second < 3.0  # not waited for again
        (line,) = [r.getMessage() for r in caplog.records]
        assert "hanging transaction" in line and f"--topic {opened.topic} --partition 0" in line
        # Once it ends, starts read to the end again.
        opened.loop.run_until_complete(opened.other.commit())
        wait_until(lambda: _token(store) == b"new", 30, "the newest position after it ended")


def _token(store: PositionStore) -> bytes | None:
    entry = store.latest("mine")
    return entry.position.resume_token if entry is not None else None


def test_a_stop_ends_a_read_that_waits_for_an_open_transaction(
    kafka_bootstrap: str, make_topic: Callable[..., str], unique_name: Callable[[str], str]
) -> None:
    """The wait above may last the transaction timeout (60 s by default); a stream asked
    to stop meanwhile must not sit it out (a broker-kill test saw SIGTERM ignored 60 s)."""
    with (
        _an_open_transaction(kafka_bootstrap, make_topic, unique_name) as opened,
        contextlib.closing(PositionStore(opened.config, opened.topic)) as store,
    ):
        stop = threading.Event()
        reader, outcome = _complete_read(store, stop)
        reader.join(timeout=2.0)
        assert reader.is_alive(), f"the read ended on an open transaction: {outcome}"
        stopped_at = time.monotonic()
        stop.set()
        reader.join(timeout=30.0)
        assert not reader.is_alive(), "the stop did not end the read"
        assert time.monotonic() - stopped_at < 2.0
        assert len(outcome) == 1 and isinstance(outcome[0], ReadStopped), outcome


def test_a_quick_look_does_not_wait_behind_a_read_that_waits_for_an_open_transaction(
    kafka_bootstrap: str, make_topic: Callable[..., str], unique_name: Callable[[str], str]
) -> None:
    """One stream's start waits for the open transaction (complete read); another looks
    quickly (its previous owner, before its own init_transactions, which would end that
    very transaction). The look answers at once: queued behind the waiting read, the two
    starts deadlocked until the hanging-transaction timeout (65 s in a bench run)."""
    with (
        _an_open_transaction(kafka_bootstrap, make_topic, unique_name) as opened,
        contextlib.closing(PositionStore(opened.config, opened.topic)) as store,
    ):
        stop = threading.Event()
        waiting, _ = _complete_read(store, stop)
        try:
            waiting.join(timeout=2.0)
            assert waiting.is_alive(), "the complete read did not wait for the open transaction"
            asked = time.monotonic()
            entry = store.latest("mine", False)
            took = time.monotonic() - asked
            assert waiting.is_alive()  # the complete read still waits
            assert took < 5.0, took
            assert entry is not None  # the stable view: token old, before the open transaction
            assert entry.position.resume_token == b"old"
        finally:
            stop.set()
            waiting.join(timeout=30.0)


def _complete_read(
    store: PositionStore, stop: threading.Event
) -> tuple[threading.Thread, list[BaseException | None]]:
    """A stream's start reading its position (complete, waiting for open transactions)
    in a thread, started; what it ended with (None: a position) once it has."""
    outcome: list[BaseException | None] = []

    def read() -> None:
        try:
            store.latest("mine", True, stop)
            outcome.append(None)
        except BaseException as exc:  # the test inspects it
            outcome.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    return reader, outcome
