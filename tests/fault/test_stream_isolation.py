"""A stream whose Kafka writes stall never holds up another stream's commits.

Two pipelines share one event loop, as every stream of a bridge process does. Stream A
writes to a broker behind a proxy that is throttled to a trickle: its commit waits, its
producer queue fills, and its records wait for room. Stream B writes to another broker
and must go on committing at its own pace meanwhile. Before `wait_for_room`, a full queue
was waited out by polling on the event loop, and every stream stopped with the slow one.
Afterwards both streams hold every record once.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from bridge.config import PipelineSettings
from bridge.embedded import EmbeddedBroker, free_port
from bridge.eos.contract import SideTopics
from bridge.eos.pipeline import Pipeline
from bridge.eos.positions import PositionStore
from bridge.eos.repeats import RecentIds
from bridge.kafka.admin import STATE_TOPIC_CONFIG, TopicSpec, ensure_topics
from bridge.kafka.producer import TransactionalProducer
from bridge.kafka.readback import header, read_topic
from bridge.records import EVENT_ID_HEADER, Batch, Position, Record
from bridge.serde.avro import Serializer, SingleObjectFormat
from tests.fault.tcp_proxy import TcpProxy

RATE_BATCHES_S = 100
"""Batches per second each source yields (20 records each: 2,000 records/s)."""
PER_BATCH = 20
QUEUED_RECORDS = 50
"""Stream A's librdkafka queue: smaller than what one transaction collects in 50 ms, so it
fills once A's link crawls."""
THROTTLE_BYTES_S = 100
THROTTLE_S = 6.0
B_COMMIT_GAP_S = 1.0
"""The longest stream B may go without a commit while A is stalled. Its commits take
milliseconds; the margin is the event loop's own delay on a loaded 2-core machine (up to
113 ms measured) many times over. Blocked with A, it would wait the whole throttle."""


class TickSource:
    """Event ids 0, 1, 2, ...: `PER_BATCH` a batch, `RATE_BATCHES_S` batches a second;
    resumes after the position's token (the last id committed)."""

    def __init__(self, stream_id: str, topic: str) -> None:
        self.stream_id = stream_id
        self.topic = topic
        self.yielded = 0

    async def stream(self, start: Position | None) -> AsyncIterator[Batch]:
        n = int(start.resume_token) + 1 if start and start.resume_token else 0
        while True:
            ids = range(n, n + PER_BATCH)
            records = [Record(self.topic, b"k", b"v" * 100, str(i), None) for i in ids]
            n += PER_BATCH
            self.yielded = max(self.yielded, n)
            yield Batch(records, Position(resume_token=str(n - 1).encode()))
            await asyncio.sleep(1 / RATE_BATCHES_S)


class WatchedProducer(TransactionalProducer):
    """Notes when each commit returned and when a produce waited for queue room."""

    def __init__(self, config: dict[str, str | int], txn_id: str, stream_id: str) -> None:
        super().__init__(config, txn_id, stream_id)
        self.commits: list[float] = []
        self.room_waits: list[float] = []

    async def commit(self, timeout: float | None = None) -> None:
        await super().commit(timeout)
        self.commits.append(time.monotonic())

    async def wait_for_room(self) -> None:
        self.room_waits.append(time.monotonic())
        await super().wait_for_room()


def _serializer(schema: str) -> Serializer:
    return Serializer(schema, SingleObjectFormat().prefix(schema, "t"))


class Stream:
    """One pipeline and what the test watches of it."""

    def __init__(self, name: str, bootstrap: str, extra: dict[str, str | int]) -> None:
        self.config: dict[str, str | int] = {"bootstrap.servers": bootstrap}
        self.topic = f"{name}.data"
        side = SideTopics(
            f"{name}.state",
            f"{name}.dlq",
            f"{name}.gaps",
            _serializer("polybridge.State"),
            _serializer("polybridge.DeadLetter"),
            _serializer("polybridge.Gap"),
        )
        ensure_topics(
            self.config,
            [
                TopicSpec(self.topic, 1, 1),
                TopicSpec(side.state, 1, 1, STATE_TOPIC_CONFIG),
                TopicSpec(side.dead_letters, 1, 1),
                TopicSpec(side.gaps, 1, 1),
            ],
        )
        self.producers: list[WatchedProducer] = []

        def producer() -> WatchedProducer:
            made = WatchedProducer({**self.config, **extra}, f"{name}.txn", name)
            self.producers.append(made)
            return made

        self.source = TickSource(name, self.topic)
        self.positions = PositionStore(self.config, side.state)
        self.pipeline = Pipeline(
            stream_id=name,
            upstream="test",
            source=self.source,
            topic=self.topic,
            producer=producer,
            positions=self.positions,
            side=side,
            settings=PipelineSettings(),
            repeats=lambda: RecentIds(10_000),
            read_back=lambda: [],
            instance_id="me",
        )

    def commits(self) -> list[float]:
        return sorted(t for p in self.producers for t in p.commits)

    def room_waits(self) -> list[float]:
        return [t for p in self.producers for t in p.room_waits]

    def ids_in_kafka(self) -> list[int]:
        records = read_topic(self.config, self.topic)
        return [int(header(r.headers, EVENT_ID_HEADER) or b"-1") for r in records]


async def _until(what: str, done: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.05)


@pytest.mark.slow(40)
def test_a_stream_whose_kafka_writes_stall_does_not_delay_another_streams_commits(
    tmp_path: Path, kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    port = free_port()
    with (
        TcpProxy(port) as proxy,
        EmbeddedBroker(port=port, log_path=tmp_path / "kafka.log", advertised=proxy.address),
    ):
        slow = Stream(
            unique_name("slow"), proxy.address, {"queue.buffering.max.messages": QUEUED_RECORDS}
        )
        fast = Stream(unique_name("fast"), kafka_bootstrap, {})

        async def run() -> tuple[float, float]:
            stop = asyncio.Event()
            tasks = [asyncio.create_task(s.pipeline.run(stop)) for s in (slow, fast)]
            try:
                await _until("both streams commit", lambda: slow.commits() and fast.commits(), 60)
                proxy.throttle(THROTTLE_BYTES_S)
                throttled = time.monotonic()
                await _until("stream A waits for queue room", slow.room_waits, 30)
                await asyncio.sleep(THROTTLE_S)  # the stall's duration
                lifted = time.monotonic()
                proxy.throttle(None)
                caught_up = slow.source.yielded
                await _until(
                    "stream A catches up", lambda: slow.pipeline.stats.records > caught_up, 60
                )
                for task in tasks:
                    assert not task.done(), task
            finally:
                stop.set()
                await asyncio.wait_for(asyncio.gather(*tasks), 30)
            return throttled, lifted

        try:
            throttled, lifted = asyncio.run(run())
        finally:
            slow.positions.close()
            fast.positions.close()

        during = [t for t in fast.commits() if throttled <= t <= lifted]
        edges = [throttled, *during, lifted]
        longest = max(b - a for a, b in itertools.pairwise(edges))
        assert longest <= B_COMMIT_GAP_S, (longest, len(during))
        slow_during = [t for t in slow.commits() if throttled <= t <= lifted]
        assert len(slow_during) < len(during) / 10, (len(slow_during), len(during))
        for stream in (slow, fast):
            ids = stream.ids_in_kafka()
            assert ids == list(range(len(ids))), stream.topic  # each once, in order
            assert len(ids) >= stream.pipeline.stats.records > 0
