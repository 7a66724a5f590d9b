"""The transactional producer's state machine: the moves it allows and the ones it refuses."""

from __future__ import annotations

import asyncio
import itertools
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError as LibKafkaError
from confluent_kafka import KafkaException as LibKafkaException

from bridge.config import PipelineSettings
from bridge.eos.pipeline import Pipeline
from bridge.eos.repeats import RecentIds
from bridge.errors import KafkaError
from bridge.kafka.producer import SETTLE_KEY, TRANSITIONS, TransactionalProducer, TxnState
from tests.bridge_harness import run_within
from tests.unit.test_eos_pipeline import SIDE, STREAM, FakeSource, _run_until


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


class _ScriptedLibrdkafka:
    """librdkafka's transactional producer, as far as `TransactionalProducer` uses it: every
    call is recorded, and commits fail with the scripted errors first, then succeed."""

    def __init__(self, *commit_errors: LibKafkaError) -> None:
        self.commit_errors = list(commit_errors)
        self.calls: list[str] = []

    def init_transactions(self, timeout: float) -> None:
        self.calls.append("init")

    def begin_transaction(self) -> None:
        self.calls.append("begin")

    def produce(
        self, topic: str, value: bytes | None, key: bytes | None, *_: Any, **__: Any
    ) -> None:
        self.calls.append("produce settle" if key == SETTLE_KEY else f"produce {topic}")

    def list_topics(self, topic: str, timeout: float) -> Any:
        partitions = {0: object()}
        return SimpleNamespace(topics={topic: SimpleNamespace(error=None, partitions=partitions)})

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float = -1) -> int:
        return 0

    def commit_transaction(self, timeout: float = -1) -> None:
        self.calls.append("commit")
        if self.commit_errors:
            self.calls.append("refused")
            raise LibKafkaException(self.commit_errors.pop(0))

    def abort_transaction(self, timeout: float) -> None:
        self.calls.append("abort")

    def purge(self, **_: Any) -> None:
        pass

    def close(self) -> None:
        self.calls.append("close")

    def work(self) -> list[str]:
        """The calls without the settling transactions (begin, produce settle.., abort)."""
        calls, rest = [], iter(self.calls)
        for call in rest:
            calls.append(call)
            if calls[-2:] == ["begin", "produce settle"]:
                del calls[-2:]
                assert next(c for c in rest if c != "produce settle") == "abort"
        return calls

    def committed(self) -> int:
        """Commits that went through."""
        return sum(
            1 for a, b in itertools.pairwise([*self.calls, ""]) if a == "commit" and b != "refused"
        )


class _NoPositions:
    def latest(self, stream_id: str, complete: bool = True, stop: object = None) -> None:
        return None


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
    """A pipeline over a real `TransactionalProducer` whose librdkafka refuses the first
    commit with `error`, then accepts every call. "Commit again": the same transaction is
    committed a second time and nothing is aborted or produced twice. "Abort": one abort,
    then a new producer (its epoch fences requests of the aborted transaction still under
    way), and the records are produced again from the last committed position (none).
    Each producer's settling transaction is left out of the comparison."""
    lib = _ScriptedLibrdkafka(error)
    made: list[tuple[TransactionalProducer, Any]] = []

    def producer() -> TransactionalProducer:
        made.append((new := _producer(), new._producer))
        new._producer = lib  # type: ignore[assignment]
        return new

    source = FakeSource(20, per_batch=10)
    pipeline = Pipeline(
        stream_id=STREAM,
        upstream="dropcopy",
        source=source,
        topic="data",
        producer=producer,
        positions=_NoPositions(),
        side=SIDE,
        settings=PipelineSettings(max_batch_records=10, max_latency_ms=1),
        repeats=lambda: RecentIds(1_000),
        read_back=list,
        instance_id="me",
    )
    try:
        run_within(lambda: _run_until(pipeline, lambda: lib.committed() >= 2), 30)
    finally:
        for made_producer, real in made:
            made_producer._producer = real
            made_producer.close()
    calls = lib.work()
    first = calls[: calls.index("refused") + (3 if pending else 5)]
    data = calls.count("produce data")
    if pending:
        assert first[-3:] == ["refused", "commit", "begin"], calls  # committed again at once
        assert "abort" not in calls, calls
        assert data == 20, calls  # each record once: nothing resent after the failure
    else:
        assert first[-5:] == ["refused", "abort", "close", "init", "begin"], calls
        assert calls.count("abort") == 1, calls
        assert data == 30, calls  # the aborted ten again, from the start
        assert source.starts[:2] == [0, 0]
    assert calls.count("refused") == 1


def test_kafka_unreachable_while_settling_is_an_outage_not_the_end_of_the_stream() -> None:
    """A stream that settles just as its only broker dies gets `_TRANSPORT` from the
    metadata request: it is retried like any outage (a make test run saw two streams stop
    on it, and the bridge exit 1, while Kafka came back a moment later)."""
    producer = _producer()  # nothing listens on 127.0.0.1:1
    try:
        with pytest.raises(KafkaError) as raised:
            run_within(lambda: producer._partitions("topic", 2.0), 30)
    finally:
        producer.close()
    assert "_TRANSPORT" in str(raised.value)
    assert raised.value.retriable


def test_a_refused_certificate_is_not_taken_for_an_outage() -> None:
    producer = _producer()
    try:
        err = LibKafkaError(
            LibKafkaError._TRANSPORT, "SSL handshake failed: certificate verify failed"
        )
        assert not producer._error(err, "metadata of topic").retriable
    finally:
        producer.close()
