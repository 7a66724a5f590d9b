"""The exactly-once loop on its own: a fake transactional producer over an in-memory log
with Kafka's transaction rules (commit or nothing; a newer init fences the older), and a
fake source that resumes after a position and re-sends a little, as the exchange does."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from bridge.config import PipelineSettings
from bridge.eos.contract import SideTopics
from bridge.eos.pipeline import Pipeline
from bridge.eos.repeats import RecentIds
from bridge.eos.side_records import SideRecords
from bridge.errors import FencedError, KafkaError
from bridge.kafka.producer import CommitPending
from bridge.kafka.readback import ReadStopped
from bridge.kafka.state import StateEntry, decode_state
from bridge.records import EVENT_ID_HEADER, Batch, Position, Record
from bridge.serde.avro import Serializer, SingleObjectFormat

STREAM = "dropcopy.executions"
STATE = "state"


def _serializer(schema: str) -> Serializer:
    return Serializer(schema, SingleObjectFormat().prefix(schema, "t"))


SIDE = SideTopics(
    STATE,
    "dlq",
    "gaps",
    _serializer("polybridge.State"),
    _serializer("polybridge.DeadLetter"),
    _serializer("polybridge.Gap"),
)

Produced = tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]


@dataclass
class FakeKafka:
    """Committed records, transactional epochs, and failures to inject into commits."""

    committed: list[Produced] = field(default_factory=list)
    epochs: Counter[str] = field(default_factory=Counter)
    commit_failures: list[BaseException] = field(default_factory=list)
    pending_outcome: list[Produced] | None = None
    """A transaction whose commit timed out; the next init of its id commits it."""
    abort_failures: list[BaseException] = field(default_factory=list)
    ghost_inits: int = 0
    """Producers to fence right after their init, as a late init of an earlier producer
    of the id would (the epoch taken back before the settling transaction)."""
    producers: int = 0
    transactions: list[int] = field(default_factory=list)
    """Data records per committed transaction."""
    calls: list[tuple[int, str, float]] = field(default_factory=list)
    """Every call the producers got, in order: (producer number from 1, what, monotonic
    time); what is init, begin, produce, commit, commit refused (it raised), abort, close."""
    sent: list[tuple[str, float]] = field(default_factory=list)
    """(event id, monotonic time) of every record a `FakeSource` yielded."""
    produce_s: float = 0.0
    """How long each produce() holds the thread (the CPU a record costs)."""
    commit_s: float = 0.0
    """How long each commit waits for the broker (without holding the thread)."""

    def ops(self, producer: int | None = None) -> list[str]:
        """What the producers (or producer number `producer`) were asked, in order."""
        return [what for n, what, _ in self.calls if producer is None or n == producer]

    def data(self) -> list[str]:
        return [dict(h)[EVENT_ID_HEADER].decode() for t, _, _, h in self.committed if t == "data"]


class FakeProducer:
    def __init__(self, kafka: FakeKafka, transactional_id: str) -> None:
        self.kafka = kafka
        self.transactional_id = transactional_id
        self.epoch = 0
        self.broken = False
        self.open: list[Produced] | None = None
        kafka.producers += 1
        self.number = kafka.producers

    def _call(self, what: str) -> None:
        self.kafka.calls.append((self.number, what, time.monotonic()))

    def _check_epoch(self) -> None:
        if self.kafka.epochs[self.transactional_id] != self.epoch:
            raise FencedError("fenced (fake)")

    async def init(self) -> None:
        self._call("init")
        if self.kafka.pending_outcome is not None:  # init settles the earlier transaction
            self.kafka.committed.extend(self.kafka.pending_outcome)
            self.kafka.pending_outcome = None
        self.kafka.epochs[self.transactional_id] += 1
        self.epoch = self.kafka.epochs[self.transactional_id]

    async def settle(self, topics: object) -> None:
        self._call("settle")
        if self.kafka.ghost_inits:
            self.kafka.ghost_inits -= 1
            self.kafka.epochs[self.transactional_id] += 1
        self._check_epoch()

    def begin(self) -> None:
        self._call("begin")
        assert self.open is None, "begin inside an open transaction"
        self.open = []

    def produce(
        self, topic: str, key: bytes | None, value: bytes | None, headers: object = None
    ) -> None:
        self._call("produce")
        assert self.open is not None, "produce outside a transaction"
        if self.kafka.produce_s:
            time.sleep(self.kafka.produce_s)
        self.open.append((topic, key, value, list(headers or [])))  # type: ignore[call-overload]

    async def commit(self) -> None:
        self._call("commit")
        assert self.open is not None
        if self.kafka.commit_s:
            await asyncio.sleep(self.kafka.commit_s)
        try:
            self._check_epoch()
        except FencedError:
            self._call("commit refused")
            raise
        if self.kafka.commit_failures:
            failure = self.kafka.commit_failures.pop(0)
            if isinstance(failure, CommitPending) or failure.args[0] == "held":
                # The coordinator holds the commit; the next init of this id completes it.
                self.kafka.pending_outcome = self.open
                await asyncio.sleep(0.02)  # a commit call that runs into its timeout
            elif isinstance(failure, KafkaError) and failure.args[0] == "fatal":
                self.broken = True
            self._call("commit refused")
            raise failure
        self.kafka.pending_outcome = None  # a resumed commit that went through
        self.kafka.committed.extend(self.open)
        self.kafka.transactions.append(sum(1 for p in self.open if p[0] == "data"))
        self.open = None

    def give_up(self) -> None:
        self.broken = True

    async def abort(self) -> None:
        self._call("abort")
        self.open = None
        if self.kafka.abort_failures:
            raise self.kafka.abort_failures.pop(0)

    def close(self) -> None:
        self._call("close")
        self.open = None

    async def aclose(self) -> None:
        self.close()


class FakePositions:
    def __init__(self, kafka: FakeKafka) -> None:
        self.kafka = kafka

    def latest(
        self, stream_id: str, complete: bool = True, stop: threading.Event | None = None
    ) -> StateEntry | None:
        values = [
            v
            for t, k, v, _ in self.kafka.committed
            if t == STATE and k == b"%s" % stream_id.encode()
        ]
        return decode_state(values[-1]) if values and values[-1] else None


class FakeSource:
    """Records 0..total-1, `per_batch` a batch; resumes after the position's token (the
    index of the last record), re-sending `resend` records before it (at least once)."""

    stream_id = STREAM

    def __init__(
        self,
        total: int,
        per_batch: int = 1,
        resend: int = 0,
        pause_s: float = 0.0,
        kafka: FakeKafka | None = None,
    ):
        self.total, self.per_batch, self.resend, self.pause_s = total, per_batch, resend, pause_s
        self.kafka = kafka
        """Where to note each yielded record's time (`FakeKafka.sent`), if given."""
        self.starts: list[int] = []

    async def stream(self, start: Position | None) -> AsyncIterator[Batch]:
        after = int(start.resume_token or b"-1") if start else -1
        first = max(0, after + 1 - self.resend) if start else 0
        self.starts.append(first)
        for i in range(first, self.total, self.per_batch):
            ids = range(i, min(i + self.per_batch, self.total))
            records = [Record("data", b"k", b"v", str(n), None) for n in ids]
            if self.kafka is not None:
                self.kafka.sent += [(str(n), time.monotonic()) for n in ids]
            yield Batch(records, Position(resume_token=str(ids[-1]).encode()))
            if self.pause_s:
                await asyncio.sleep(self.pause_s)
        while True:  # live: nothing more, as a quiet upstream
            await asyncio.sleep(3600)


def _pipeline(
    kafka: FakeKafka, source: object, **settings: float
) -> tuple[Pipeline, list[FakeProducer]]:
    made: list[FakeProducer] = []

    def producer() -> FakeProducer:
        made.append(FakeProducer(kafka, "app." + STREAM))
        return made[-1]

    pipeline = Pipeline(
        stream_id=STREAM,
        upstream="dropcopy",
        source=source,  # type: ignore[arg-type]
        topic="data",
        producer=producer,
        positions=FakePositions(kafka),
        side=SIDE,
        settings=PipelineSettings(**settings),  # type: ignore[arg-type]
        repeats=lambda: RecentIds(1_000),
        read_back=lambda: [
            Record("data", k, v or b"", dict(h)[EVENT_ID_HEADER].decode(), None)
            for t, k, v, h in kafka.committed
            if t == "data"
        ],
        instance_id="me",
        pending_commit_limit_s=0.2,
    )
    return pipeline, made


async def _run_until(pipeline: Pipeline, done: object, timeout: float = 10.0) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(stop))
    deadline = time.monotonic() + timeout
    try:
        while not done():  # type: ignore[operator]
            if task.done():
                task.result()
                raise AssertionError("the pipeline ended early")
            assert time.monotonic() < deadline, "condition not reached"
            await asyncio.sleep(0.005)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def _all_once(kafka: FakeKafka, total: int) -> bool:
    return sorted(kafka.data(), key=int) == [str(i) for i in range(total)]


def test_commits_when_the_transaction_holds_max_batch_records() -> None:
    """All 95 records are queued before the first commit (a backlog): transactions of 10."""
    kafka = FakeKafka()
    pipeline, _ = _pipeline(
        kafka, FakeSource(95), max_batch_records=10, max_latency_ms=60_000, queue_max_batches=100
    )
    asyncio.run(_run_until(pipeline, lambda: len(kafka.data()) >= 95))
    assert kafka.transactions == [10] * 9 + [5]
    assert _all_once(kafka, 95)


LATENCY_MARGIN_S = 0.2
"""How late past its due time a commit may start: the event loop's own delay, 0.4-2 ms on
an idle machine, up to 113 ms measured over 80 runs beside other test runs (load average
52 on 2 cores)."""


def test_a_lone_record_commits_at_once() -> None:
    """Group commit: nothing else queued and no commit running, so nothing to wait for (the
    60 s max_latency is never reached)."""
    kafka = FakeKafka()
    source = FakeSource(1, kafka=kafka)
    pipeline, _ = _pipeline(kafka, source, max_batch_records=1_000, max_latency_ms=60_000)
    asyncio.run(_run_until(pipeline, lambda: kafka.data() == ["0"]))
    ((_, yielded_at),) = kafka.sent
    commits = [at for _, what, at in kafka.calls if what == "commit"]
    assert commits[0] - yielded_at <= LATENCY_MARGIN_S, commits[0] - yielded_at
    assert kafka.transactions[0] == 1


def test_records_that_arrive_during_a_commit_share_the_next_one() -> None:
    """A record every 5 ms, commits of 50 ms: the first transaction holds one record, the
    later ones what arrived while the one before committed (about ten each)."""
    kafka = FakeKafka(commit_s=0.05)
    source = FakeSource(200, pause_s=0.005, kafka=kafka)
    pipeline, _ = _pipeline(kafka, source, max_batch_records=1_000, max_latency_ms=60_000)
    asyncio.run(_run_until(pipeline, lambda: len(kafka.data()) >= 200))
    assert _all_once(kafka, 200)
    assert kafka.transactions[0] == 1
    assert len(kafka.transactions) <= 200 / 4, kafka.transactions  # grouped, not one each
    assert max(kafka.transactions) < 200 / 2, kafka.transactions  # not one big one


MAX_LATENCY_S = 0.3


def test_commits_when_the_oldest_record_waited_max_latency() -> None:
    """A backlog that takes 1 s to produce (100 records, 10 ms each): the first commit comes
    when the oldest record has waited max_latency, not when the backlog is through. A
    deadline long enough for the margin to stay below it tells a deadline kept (0.3-0.5 s)
    from one ignored (1 s)."""
    kafka = FakeKafka(produce_s=0.01)
    source = FakeSource(100, kafka=kafka)
    pipeline, _ = _pipeline(
        kafka,
        source,
        max_batch_records=1_000,
        max_latency_ms=int(MAX_LATENCY_S * 1000),
        queue_max_batches=100,
    )
    asyncio.run(_run_until(pipeline, lambda: len(kafka.data()) >= 100))
    first_produce = next(at for _, what, at in kafka.calls if what == "produce")
    first_commit = next(at for _, what, at in kafka.calls if what == "commit")
    waited = first_commit - first_produce
    assert MAX_LATENCY_S <= waited <= MAX_LATENCY_S + LATENCY_MARGIN_S, waited
    assert kafka.transactions[0] < 60, kafka.transactions


def test_heartbeats_alone_commit_at_most_every_interval() -> None:
    class Heartbeats(FakeSource):
        async def stream(self, start: Position | None) -> AsyncIterator[Batch]:
            for n in range(10_000):
                yield Batch([], Position(resume_token=str(n).encode()))
                await asyncio.sleep(0.002)

    kafka = FakeKafka()
    pipeline, _ = _pipeline(kafka, Heartbeats(0), heartbeat_commit_interval_s=0.1)
    started = time.monotonic()
    asyncio.run(_run_until(pipeline, lambda: pipeline.stats.commits >= 4))
    elapsed = time.monotonic() - started
    # the first heartbeat commits at once, the next ones one interval apart
    assert elapsed >= 0.3
    assert pipeline.stats.commits <= elapsed / 0.1 + 2


def test_a_retriable_commit_error_aborts_and_resumes_after_the_last_committed_record() -> None:
    """Each failure: abort, a new producer (its epoch fences requests of the aborted
    transaction still under way; it settles before producing), the position read back."""
    kafka = FakeKafka(commit_failures=[KafkaError("broker hiccup", retriable=True)] * 2)
    source = FakeSource(200, per_batch=7, resend=3)
    pipeline, made = _pipeline(kafka, source, max_batch_records=20, max_latency_ms=1)
    asyncio.run(_run_until(pipeline, lambda: len(kafka.data()) >= 200))
    assert _all_once(kafka, 200)
    assert len(made) == 3 and pipeline.stats.aborts == 2
    for number in (1, 2, 3):
        assert kafka.ops(number)[:2] == ["init", "settle"], kafka.ops(number)
    assert source.starts[:3] == [0, 0, 0]  # nothing was committed before the failures


def test_a_broken_producer_is_replaced_and_the_stream_goes_on() -> None:
    kafka = FakeKafka()
    source = FakeSource(300, per_batch=10, resend=5, pause_s=0.001)
    pipeline, made = _pipeline(kafka, source, max_batch_records=50, max_latency_ms=1)

    def inject() -> bool:
        if len(kafka.data()) >= 100 and not made[-1].broken and len(made) == 1:
            kafka.commit_failures.append(KafkaError("fatal", retriable=True))
        return len(kafka.data()) >= 300

    asyncio.run(_run_until(pipeline, inject))
    assert _all_once(kafka, 300)
    assert len(made) == 2
    assert source.starts[1] > 0  # resumed from the committed position, not the start


def test_a_commit_pending_past_the_limit_is_settled_by_the_next_producer() -> None:
    """The commit kept timing out, then succeeded inside the broker: the new producer's
    init settles it, the committed position is read back, and nothing is written twice."""
    kafka = FakeKafka()
    source = FakeSource(200, per_batch=10, resend=10, pause_s=0.001)
    pipeline, made = _pipeline(kafka, source, max_batch_records=40, max_latency_ms=1)

    injected = False

    def inject() -> bool:
        nonlocal injected
        if len(kafka.data()) >= 80 and not injected:
            # 15 x 20 ms: past the 0.2 s limit, so the producer is given up and replaced
            kafka.commit_failures += [CommitPending("slow", retriable=True)] * 15
            injected = True
        return len(kafka.data()) >= 200

    asyncio.run(_run_until(pipeline, inject))
    assert _all_once(kafka, 200)
    assert len(made) == 2


def test_a_commit_whose_outcome_is_unknown_is_learnt_from_kafka_before_producing_again() -> None:
    """The commit failed, the abort was refused (the coordinator held the commit): the
    stream replaces its producer, whose init settles the transaction, and resumes from the
    position read back from Kafka, not from the one it remembers."""
    kafka = FakeKafka()
    source = FakeSource(100, per_batch=10, pause_s=0.001)
    pipeline, made = _pipeline(kafka, source, max_batch_records=10, max_latency_ms=1)
    injected = False

    def inject() -> bool:
        nonlocal injected
        if len(kafka.data()) >= 30 and not injected:
            kafka.commit_failures.append(KafkaError("held", retriable=True))
            kafka.abort_failures.append(KafkaError("INVALID_TXN_STATE", retriable=True))
            injected = True
        return len(kafka.data()) >= 100

    asyncio.run(_run_until(pipeline, inject))
    assert len(made) == 2  # replaced, so that its init settled the held commit
    assert _all_once(kafka, 100)
    held_last = int(kafka.data()[source.starts[1] - 1])
    # Resumed right after the held transaction (it landed), not after the remembered one.
    assert source.starts[1] == held_last + 1
    assert source.starts[1] >= 40


def test_fencing_ends_the_stream_and_its_open_transaction_never_lands() -> None:
    """A successor fences the stream's producer: the pipeline learns it from the refused
    commit, and from then on produces, commits and begins nothing, starts no new producer,
    and ends with `FencedError`; Kafka keeps exactly what it committed before."""
    kafka = FakeKafka()
    pipeline, made = _pipeline(
        kafka, FakeSource(10_000, pause_s=0.001), max_batch_records=5, max_latency_ms=1
    )

    async def run() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(pipeline.run(stop))
        while len(kafka.data()) < 20:
            await asyncio.sleep(0.005)
        successor = FakeProducer(kafka, "app." + STREAM)
        await successor.init()
        with pytest.raises(FencedError):
            await asyncio.wait_for(task, 10)

    asyncio.run(run())
    assert len(made) == 1  # no new producer to take the stream back
    ops = kafka.ops(producer=1)
    assert ops.count("commit refused") == 1, ops[-10:]
    after = ops[ops.index("commit refused") + 1 :]
    assert set(after) <= {"abort", "close"}, after  # nothing produced or committed after it
    assert after[-1:] == ["close"]
    committed = kafka.data()
    assert committed == [str(i) for i in range(len(committed))]


def test_a_start_fenced_by_the_streams_own_earlier_producer_starts_again() -> None:
    """Fenced right after init, twice, with no other instance in the state topic: a late
    init of a producer this stream gave up. The stream starts again, each time with a new
    producer, and writes everything once."""
    kafka = FakeKafka(ghost_inits=2)
    pipeline, made = _pipeline(kafka, FakeSource(50, per_batch=5), max_latency_ms=1)
    asyncio.run(_run_until(pipeline, lambda: len(kafka.data()) >= 50))
    assert _all_once(kafka, 50)
    assert len(made) == 3


def test_a_start_fenced_while_another_instance_owns_the_stream_ends_it() -> None:
    """The state topic names another owner: its fencing is a hand-over, not a ghost."""
    kafka = FakeKafka(ghost_inits=1)
    theirs = SideRecords(STREAM, "dropcopy", SIDE).state(Position(resume_token=b"9"), "other")
    kafka.committed.append((STATE, STREAM.encode(), theirs, []))
    pipeline, made = _pipeline(kafka, FakeSource(20), max_latency_ms=1)

    async def run() -> None:
        with pytest.raises(FencedError):
            await asyncio.wait_for(pipeline.run(asyncio.Event()), 10)

    asyncio.run(run())
    assert len(made) == 1 and kafka.data() == []


def test_a_non_retriable_error_ends_the_stream() -> None:
    kafka = FakeKafka(commit_failures=[KafkaError("authorization failed", retriable=False)])
    pipeline, _ = _pipeline(kafka, FakeSource(10), max_latency_ms=1)

    async def run() -> None:
        with pytest.raises(KafkaError, match="authorization"):
            await asyncio.wait_for(pipeline.run(asyncio.Event()), 10)

    asyncio.run(run())
    assert kafka.data() == []


def test_a_restart_resumes_after_the_committed_position_and_drops_resent_repeats() -> None:
    kafka = FakeKafka()
    first, _ = _pipeline(kafka, FakeSource(50), max_latency_ms=1)
    asyncio.run(_run_until(first, lambda: len(kafka.data()) >= 50))
    source = FakeSource(120, resend=10)
    second, _ = _pipeline(kafka, source, max_latency_ms=1)
    asyncio.run(_run_until(second, lambda: len(kafka.data()) >= 120))
    assert _all_once(kafka, 120)
    assert source.starts == [40]  # after token 49, ten re-sent: all dropped as repeats
    assert second.stats.repeats_dropped == 10


def test_a_stop_ends_a_start_that_waits_for_the_state_topic() -> None:
    """A start reads the position up to the high watermark and may wait up to the
    transaction timeout for another stream's open transaction. A stop (the group lost the
    stream, or SIGTERM) must end that wait, not sit it out: a broker-kill test saw SIGTERM
    ignored for 60 s while six starts waited there."""

    class Waiting(FakePositions):
        def latest(
            self, stream_id: str, complete: bool = True, stop: threading.Event | None = None
        ) -> StateEntry | None:
            assert stop is not None
            if stop.wait(30):  # the open transaction never ends in this test
                raise ReadStopped("asked to stop")
            raise AssertionError("the stop never reached the read")

    kafka = FakeKafka()
    pipeline, _ = _pipeline(kafka, FakeSource(10))
    pipeline._positions = Waiting(kafka)

    async def run() -> float:
        stop = asyncio.Event()
        task = asyncio.create_task(pipeline.run(stop))
        while not any(what == "settle" for _, what, _ in kafka.calls):
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # the read has begun waiting
        stopped = time.monotonic()
        stop.set()
        await asyncio.wait_for(task, 10)
        return time.monotonic() - stopped

    assert asyncio.run(run()) < 2.0
    assert kafka.data() == []  # it never started
