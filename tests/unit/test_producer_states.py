"""The transactional producer's state machine: the moves it allows and the ones it refuses."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from bridge.errors import KafkaError
from bridge.kafka.producer import TRANSITIONS, TransactionalProducer, TxnState


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
