"""The transactional producer's state machine: the moves it allows and the ones it refuses."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from confluent_kafka import KafkaError as LibKafkaError
from confluent_kafka import KafkaException as LibKafkaException

from bridge.errors import KafkaError
from bridge.kafka.producer import TRANSITIONS, CommitPending, TransactionalProducer, TxnState


def _producer() -> TransactionalProducer:
    # No broker is contacted until init(); nothing here calls it.
    return TransactionalProducer({"bootstrap.servers": "127.0.0.1:1"}, "app.s", "s")


def test_the_happy_path_is_allowed_and_everything_can_close() -> None:
    path = [TxnState.READY, TxnState.OPEN, TxnState.COMMITTING, TxnState.READY, TxnState.OPEN]
    for state, following in itertools.pairwise(path):
        assert following in TRANSITIONS[state]
    for state in TxnState:
        assert state is TxnState.CLOSED or TxnState.CLOSED in TRANSITIONS[state]


def test_broken_and_fenced_only_close() -> None:
    assert TRANSITIONS[TxnState.BROKEN] == {TxnState.CLOSED}
    assert TRANSITIONS[TxnState.FENCED] == {TxnState.CLOSED}
    assert TRANSITIONS[TxnState.CLOSED] == frozenset()


def test_an_illegal_move_is_refused_as_a_bug() -> None:
    producer = _producer()
    try:
        assert producer.state is TxnState.NEW
        with pytest.raises(KafkaError, match="cannot go from new to open"):
            producer._move(TxnState.OPEN)
        assert producer.state is TxnState.NEW
    finally:
        producer.close()
    assert producer.state is TxnState.CLOSED


def test_abort_without_an_open_transaction_does_nothing() -> None:
    producer = _producer()
    try:
        asyncio.run(producer.abort())
        assert producer.state is TxnState.NEW and not producer.in_transaction
    finally:
        producer.close()


def test_give_up_leaves_a_producer_that_must_be_replaced() -> None:
    producer = _producer()
    try:
        producer.state = TxnState.COMMITTING  # as after a commit that timed out
        producer.give_up()
        assert producer.broken
        with pytest.raises(KafkaError):
            producer._move(TxnState.READY)
    finally:
        producer.close()


class _RefusingCommit:
    """librdkafka's producer, as far as commit() uses it: the commit fails with `error`."""

    def __init__(self, error: LibKafkaError) -> None:
        self.error = error

    def commit_transaction(self, timeout: float) -> None:
        raise LibKafkaException(self.error)


@pytest.mark.parametrize(
    ("error", "pending"),
    [
        # "Commit again": the coordinator may already hold the commit.
        (LibKafkaError(LibKafkaError._TIMED_OUT, "timed out", retriable=True), True),
        (LibKafkaError(LibKafkaError._TRANSPORT, "broker down", retriable=True), True),
        (LibKafkaError(LibKafkaError.NOT_COORDINATOR, "moved", retriable=True), True),
        # "Abort": the transaction did not commit.
        (
            LibKafkaError(
                LibKafkaError._MSG_TIMED_OUT, "undelivered", retriable=True, txn_requires_abort=True
            ),
            False,
        ),
    ],
)
def test_a_retriable_commit_error_is_committed_again_not_aborted(
    error: LibKafkaError, pending: bool
) -> None:
    producer = _producer()
    real = producer._producer
    try:
        producer._producer = _RefusingCommit(error)  # type: ignore[assignment]
        producer.state = TxnState.OPEN
        with pytest.raises(KafkaError) as raised:
            asyncio.run(producer.commit(timeout=0.1))
        assert isinstance(raised.value, CommitPending) is pending, raised.value
        assert raised.value.retriable
    finally:
        producer._producer = real
        producer.close()
