"""A producer whose call outlives its cancelled task is released only once that call has
returned: the stream's next producer (same transactional id) must not start before."""

from __future__ import annotations

import asyncio
import contextlib
import time

from bridge.embedded import free_port
from bridge.errors import KafkaError
from bridge.kafka.producer import TransactionalProducer


def test_aclose_waits_for_the_call_its_cancelled_task_left_running() -> None:
    async def body() -> tuple[float, float, bool]:
        producer = TransactionalProducer(
            {"bootstrap.servers": f"127.0.0.1:{free_port()}"}, "t.s", "s"
        )
        init = asyncio.create_task(producer.init(timeout=1.5))
        deadline = time.monotonic() + 5
        while producer._in_flight is None:  # the call has reached its worker thread
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        started = time.monotonic()
        init.cancel()
        with contextlib.suppress(asyncio.CancelledError, KafkaError):
            await init
        await producer.aclose()
        in_flight = producer._in_flight
        return started, time.monotonic(), in_flight is not None and in_flight.done()

    started, closed, call_done = asyncio.run(body())
    assert call_done, "closed while init_transactions was still running"
    assert closed - started >= 1.0  # it waited for the bounded call (1.5 s) to return


def test_a_transaction_timeout_below_a_minute_is_accepted() -> None:
    """kafka.transaction_timeout_ms under 60 s: the message timeout follows it down
    (librdkafka refuses message.timeout.ms above transaction.timeout.ms)."""
    producer = TransactionalProducer(
        {"bootstrap.servers": f"127.0.0.1:{free_port()}", "transaction.timeout.ms": 20_000},
        "t.s",
        "s",
    )
    producer.close()
