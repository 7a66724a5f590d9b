"""A hanging transaction (a batch open on a partition that its coordinator does not know
of) is ended, aborted, by the next start of its transactional id, and no stream's start
waits for it.

Seen under a broker SIGSTOP on a loaded machine: the broker's own controller fenced it when
it resumed, the transaction coordinator could not find the leaders of a committing
transaction's partitions ("Couldn't find leader endpoint ... while trying to send
transaction markers"), resigned and came back with the transaction complete, and the
state topic kept the stream's state record as an open transaction: every stream's start
then waited for it. librdkafka has no KIP-890 support, so a late produce request can leave
the same. Here the batch is appended by hand (`tests.kafka_wire`) on a broker of the
test's own that does not verify transactional writes, which is the state both leave.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import pytest

from bridge.embedded import EmbeddedBroker
from bridge.eos.positions import PositionStore
from bridge.eos.transactions import Transactions
from bridge.kafka.producer import SETTLE_KEY, TransactionalProducer
from bridge.kafka.readback import high_watermarks, low_high, open_offsets_reader, open_reader
from bridge.kafka.state import STATE_SCHEMA, encode_state
from bridge.records import Position
from bridge.serde.avro import Serializer, SingleObjectFormat
from tests.kafka_fixture import create_topic, read_all
from tests.kafka_wire import Wire, transactional_batch

SER = Serializer(STATE_SCHEMA, SingleObjectFormat().prefix(STATE_SCHEMA, "state"))
TIMEOUT_S = 2.0
"""The transaction timeout the position store assumes: it waits 7 s for an open one."""


def _state(stream: str, token: bytes) -> bytes:
    return encode_state(stream, "dropcopy", Position(resume_token=token), "me", 1, SER)


def _stable_and_high(config: dict[str, str], topic: str) -> tuple[int, int]:
    reader, offsets = open_reader(config), open_offsets_reader(config)
    try:
        return low_high(reader, topic, 0)[1], high_watermarks(offsets, topic, [0])[0]
    finally:
        reader.close()
        offsets.close()


@pytest.mark.slow(40)
def test_a_hanging_transaction_is_aborted_by_its_ids_next_start(
    tmp_path, unique_name: Callable[[str], str], caplog: pytest.LogCaptureFixture
) -> None:
    settings = {"transaction.partition.verification.enable": "false"}
    with EmbeddedBroker(log_path=tmp_path / "kafka.log", settings=settings) as broker:
        config = {"bootstrap.servers": broker.bootstrap_servers}
        state = create_topic(
            broker.bootstrap_servers, unique_name("state"), 1, {"cleanup.policy": "compact"}
        )
        data = create_topic(broker.bootstrap_servers, unique_name("data"), 3)
        topics = (data, state)
        hung_id, other_id = unique_name("app.hung"), unique_name("app.other")

        # The hung stream's earlier producer: its state record left open on the state topic.
        wire = Wire("127.0.0.1", broker.port)
        try:
            producer_id, epoch = wire.init_producer_id(hung_id)
            batch = transactional_batch(producer_id, epoch, 0, b"hung", _state("hung", b"never"))
            assert wire.produce(hung_id, state, 0, batch) == 0
        finally:
            wire.close()

        loop = asyncio.new_event_loop()

        def start(transactional_id: str, stream: str) -> Transactions:
            txns = Transactions(
                stream, lambda: TransactionalProducer(config, transactional_id, stream), topics
            )
            loop.run_until_complete(txns.start())
            return txns

        other = hung = None
        try:
            # Another stream commits its position after the open batch.
            other = start(other_id, "other")
            loop.run_until_complete(other.put(state, b"other", _state("other", b"o-1")))
            loop.run_until_complete(other.commit())
            stable, high = _stable_and_high(config, state)
            assert stable < high, "the batch is not open on the state topic"

            # Until the hung stream starts again, a start waits for it, then reads only the
            # stable view: the other stream's commit is out of sight.
            with caplog.at_level(logging.ERROR, logger="bridge.eos.positions"):
                before = PositionStore(config, state, TIMEOUT_S).latest("other")
            assert before is None
            assert "hanging transaction" in caplog.text

            hung = start(hung_id, "hung")  # init, then the settling transaction
            assert _stable_and_high(config, state)[0] == _stable_and_high(config, state)[1]
            began = time.monotonic()
            store = PositionStore(config, state, TIMEOUT_S)
            seen = store.latest("other")
            waited = time.monotonic() - began
            assert seen is not None and seen.position.resume_token == b"o-1"
            assert store.latest("hung") is None  # the open batch ended aborted
            assert waited < TIMEOUT_S, f"the start waited {waited:.1f} s"

            # What the settling transactions wrote is aborted: read_committed sees none of it.
            for topic in topics:
                assert all(
                    row[0] != SETTLE_KEY for row in read_all(broker.bootstrap_servers, topic)
                )
            settles = read_all(broker.bootstrap_servers, data, isolation="read_uncommitted")
            assert sum(row[0] == SETTLE_KEY for row in settles) == 6  # 3 partitions x 2 ids
        finally:
            for txns in (other, hung):
                if txns is not None:
                    loop.run_until_complete(txns.aclose())
            loop.close()
