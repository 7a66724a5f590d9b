"""Make before break for a source that cannot replay (Predexon): the next owner subscribes
first and waits for the previous owner's live time to pass its ack before it fences it;
the previous owner, revoked, goes on committing every heartbeat until it is fenced. Fakes
from `test_eos_pipeline` (Kafka's transaction rules in memory)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from bridge.cluster.runner import StreamRunner
from bridge.errors import KafkaError
from bridge.kafka.state import decode_state, encode_state
from bridge.records import Batch, Gap, OpensAhead, Position
from bridge.sources.predexon.liveness import HURRY_PING_S, Liveness
from bridge.sources.predexon.source import PredexonSource
from bridge.sources.predexon.subscription import Acked, Frame, Handle, SubscriptionSpec
from bridge.timeutil import now_us
from tests.unit.test_eos_pipeline import SIDE, STATE, STREAM, FakeKafka, _pipeline


class AheadSource:
    """Opens ahead (acked at `acked_us`), then yields a heartbeat batch every 20 ms."""

    stream_id = STREAM

    def __init__(self, kafka: FakeKafka, acked_us: int) -> None:
        self.kafka = kafka
        self.acked_us = acked_us
        self.opened_at: float | None = None
        self.closed = False
        self.hurried: float | None = None

    async def open(self, timeout_s: float) -> int | None:
        self.opened_at = time.monotonic()
        return self.acked_us

    def handing_over(self, seconds: float) -> None:
        self.hurried = seconds

    def close(self) -> None:
        self.closed = True

    async def stream(self, start: Position | None) -> AsyncIterator[Batch]:
        while True:
            yield Batch([], Position(live_time_us=now_us()))
            await asyncio.sleep(0.02)


def _commit_state(kafka: FakeKafka, owner: str, live_us: int, committed_at_us: int) -> None:
    value = encode_state(
        STREAM,
        "predexon",
        Position(live_time_us=live_us),
        owner,
        committed_at_us,
        SIDE.state_serializer,
    )
    kafka.committed.append((STATE, STREAM.encode(), value, []))


def _init_at(kafka: FakeKafka) -> float:
    return next(at for _, what, at in kafka.calls if what == "init")


async def _start(kafka: FakeKafka, source: AheadSource, **settings: float) -> Any:
    pipeline, _ = _pipeline(kafka, source, **settings)
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(stop))
    return pipeline, stop, task


async def _until(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


def test_the_source_opens_before_the_fence_and_waits_for_the_previous_owner() -> None:
    """The previous owner (another instance, committing) is behind the new subscription's
    ack: no init (which fences it) until it committed a live time past the ack."""

    async def body() -> tuple[float, float, float]:
        kafka = FakeKafka()
        acked = now_us()
        _commit_state(kafka, "other.7.aa", acked - 500_000, now_us())
        source = AheadSource(kafka, acked)
        _, stop, task = await _start(kafka, source)
        await asyncio.sleep(0.3)  # the time the previous owner takes to commit again
        assert not kafka.calls, "fenced the previous owner before it caught up"
        caught_up_at = time.monotonic()
        _commit_state(kafka, "other.7.aa", acked + 1, now_us())
        await _until(lambda: kafka.calls)
        stop.set()
        await asyncio.wait_for(task, 5)
        assert source.closed
        assert source.opened_at is not None
        return source.opened_at, caught_up_at, _init_at(kafka)

    opened, caught_up, init = asyncio.run(body())
    assert opened < caught_up <= init


def test_a_previous_owner_that_stopped_committing_is_not_waited_for() -> None:
    """Its last commit is older than a handing-over owner's would be: it is gone (killed),
    and the new owner fences at once; so is its own earlier run (same instance name)."""
    for owner, committed_ago_s in (("other.7.aa", 10.0), ("me.99.bb", 0.0)):
        kafka = FakeKafka()
        acked = now_us()
        _commit_state(kafka, owner, acked - 500_000, now_us() - int(committed_ago_s * 1e6))
        source = AheadSource(kafka, acked)

        async def body(kafka: FakeKafka = kafka, source: AheadSource = source) -> None:
            _, stop, task = await _start(kafka, source)
            await _until(lambda: kafka.calls, timeout=1.0)
            stop.set()
            await asyncio.wait_for(task, 5)

        asyncio.run(body())
        assert source.opened_at is not None
        assert _init_at(kafka) - source.opened_at < 0.5, owner


def test_a_previous_owner_that_never_catches_up_is_fenced_after_handover_s() -> None:
    async def body() -> float:
        kafka = FakeKafka()
        acked = now_us()

        async def committing() -> None:  # alive, but its live time stays behind
            while True:
                _commit_state(kafka, "other.7.aa", acked - 500_000, now_us())
                await asyncio.sleep(0.05)

        keeper = asyncio.create_task(committing())
        source = AheadSource(kafka, acked)
        pipeline, _ = _pipeline(kafka, source)
        pipeline._handover_s = 0.5
        stop = asyncio.Event()
        started = time.monotonic()
        task = asyncio.create_task(pipeline.run(stop))
        await _until(lambda: kafka.calls)
        keeper.cancel()
        stop.set()
        await asyncio.wait_for(task, 5)
        return _init_at(kafka) - started

    waited = asyncio.run(body())
    assert 0.5 <= waited < 1.5, waited


def test_handing_over_commits_every_heartbeat_and_ends_quietly_when_fenced() -> None:
    """Before: one heartbeat commit per 60 s. Handing over: every heartbeat commits (the
    next owner waits for a live time past its ack). Fenced then: the run ends without an
    error, and is not counted as a fencing."""

    async def body() -> tuple[int, int, int]:
        kafka = FakeKafka()
        source = AheadSource(kafka, now_us())
        pipeline, stop, task = await _start(kafka, source, heartbeat_commit_interval_s=60)
        await _until(lambda: kafka.ops().count("commit") == 1)
        await asyncio.sleep(0.2)
        before = kafka.ops().count("commit")
        assert pipeline.hand_over()
        assert source.hurried == 10.0  # the live time reported often while handing over
        await asyncio.sleep(0.2)
        during = kafka.ops().count("commit") - before
        kafka.epochs["app." + STREAM] += 1  # the next owner's init
        await asyncio.wait_for(task, 5)
        assert not stop.is_set()
        return before, during, pipeline.stats.fenced

    before, during, fenced = asyncio.run(body())
    assert before == 1
    assert during >= 4, during  # a heartbeat every 20 ms, each committed
    assert fenced == 0


def test_a_pipeline_not_started_or_not_opening_ahead_does_not_hand_over() -> None:
    kafka = FakeKafka()
    pipeline, _ = _pipeline(kafka, AheadSource(kafka, now_us()))
    assert not pipeline.hand_over()  # not started: nothing committed to hand over


class FakeManager:
    """Hands out one handle whose subscription was acked at `acked_us`."""

    def __init__(self, acked_us: int) -> None:
        self.acked_us = acked_us
        self.registered: list[Handle] = []
        self.unregistered: list[Handle] = []

    def register(self, spec: SubscriptionSpec) -> Handle:
        handle = Handle(spec, 100)
        handle.push(Acked("sub_1", self.acked_us))
        handle.push(Frame(b"not json", None, self.acked_us + 10, None))
        self.registered.append(handle)
        return handle

    def unregister(self, handle: Handle) -> None:
        self.unregistered.append(handle)


def _first_batch_gaps(acked_us: int, previous_live_us: int) -> tuple[list[Gap], FakeManager]:
    manager = FakeManager(acked_us)
    source = PredexonSource.create(
        manager,  # type: ignore[arg-type]
        "predexon.orders",
        "orders",
        {"users": ["0xabc"]},
        prefix=b"",
    )
    assert isinstance(source, OpensAhead)

    async def body() -> list[Gap]:
        assert await source.open(1.0) == acked_us
        batches = source.stream(Position(live_time_us=previous_live_us))
        first = await anext(batches)
        await batches.aclose()
        return first.gaps

    gaps = asyncio.run(body())
    return gaps, manager


def test_a_subscription_acked_before_the_previous_owners_live_time_writes_no_gap() -> None:
    gaps, manager = _first_batch_gaps(acked_us=1_000_000, previous_live_us=1_500_000)
    assert gaps == []
    assert len(manager.registered) == 1  # stream() went on with the opened subscription
    assert manager.unregistered == manager.registered


def test_a_subscription_acked_after_the_previous_owners_live_time_writes_the_gap() -> None:
    gaps, _ = _first_batch_gaps(acked_us=2_000_000, previous_live_us=1_500_000)
    assert [(g.from_us, g.to_us, g.reason) for g in gaps] == [(1_500_000, 2_000_000, "restarted")]


def test_a_connection_hurried_pings_every_tenth_of_a_second_until_its_time_is_up() -> None:
    liveness = Liveness(ping_interval_s=1.0, ping_timeout_s=10.0)
    assert liveness._interval() == 1.0
    liveness.hurry(60.0)
    assert liveness.ping_due.is_set()  # the first ping at once
    assert liveness._interval() == HURRY_PING_S == 0.1
    liveness.hurry(0.0)
    assert liveness._interval() == 1.0


def test_handover_s_0_is_break_before_make() -> None:
    """No subscription before the fence, and a revoked stream stops at once."""

    async def body() -> tuple[AheadSource, bool]:
        kafka = FakeKafka()
        source = AheadSource(kafka, now_us())
        pipeline, _ = _pipeline(kafka, source)
        pipeline._handover_s = 0.0
        stop = asyncio.Event()
        task = asyncio.create_task(pipeline.run(stop))
        await _until(lambda: kafka.ops().count("commit") >= 1)
        handed = pipeline.hand_over()
        stop.set()
        await asyncio.wait_for(task, 5)
        return source, handed

    source, handed = asyncio.run(body())
    assert source.opened_at is None
    assert not handed


def test_a_stopping_stream_commits_a_live_time_past_its_stop_first() -> None:
    """Its restart gap starts at the live time it committed last: the stop waits for a
    live time past the stop request (pinged for at once), within a second, instead of
    ending on the newest one it happened to have (up to a ping interval old)."""

    async def body() -> tuple[int, int, float, AheadSource]:
        kafka = FakeKafka()
        source = AheadSource(kafka, now_us())
        _, stop, task = await _start(kafka, source, heartbeat_commit_interval_s=60)
        await _until(lambda: kafka.ops().count("commit") == 1)
        await asyncio.sleep(0.1)  # heartbeats held back: one commit per 60 s
        stop_us, stopped = now_us(), time.monotonic()
        stop.set()
        await asyncio.wait_for(task, 5)
        took = time.monotonic() - stopped
        states = [v for t, _, v, _ in kafka.committed if t == STATE]
        last = decode_state(states[-1]).position.live_time_us
        assert last is not None
        return stop_us, last, took, source

    stop_us, last_live_us, took, source = asyncio.run(body())
    assert last_live_us >= stop_us
    assert took < 0.5, took  # one heartbeat (20 ms here), not the 1 s bound
    assert source.hurried == 1.0  # and asked for fresh evidence at once


def test_a_stream_handing_over_does_not_start_a_new_producer_after_a_kafka_error() -> None:
    """Its new producer's init would fence the next owner, which may have fenced this one
    and not committed yet: a Kafka error while handing over ends the run instead."""

    async def body() -> list[str]:
        kafka = FakeKafka()
        source = AheadSource(kafka, now_us())
        pipeline, _, task = await _start(kafka, source, heartbeat_commit_interval_s=60)
        await _until(lambda: kafka.ops().count("commit") == 1)
        kafka.commit_failures.append(KafkaError("broker away", retriable=True))
        assert pipeline.hand_over()
        await asyncio.wait_for(task, 5)
        return kafka.ops()

    ops = asyncio.run(body())
    assert ops.count("init") == 1, ops
    assert "abort" in ops


class HandingPipeline:
    """Runs until its stop, or until the next owner fences it (`fenced`)."""

    def __init__(self) -> None:
        self.handing_over = False
        self.fenced = asyncio.Event()

    def hand_over(self) -> bool:
        self.handing_over = True
        return True

    async def run(self, stop: asyncio.Event) -> None:
        waits = [asyncio.create_task(stop.wait()), asyncio.create_task(self.fenced.wait())]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for wait in waits:
            wait.cancel()


def test_a_revoked_runner_runs_on_until_fenced_or_its_linger_ends() -> None:
    async def body() -> tuple[bool, bool, float]:
        fenced = HandingPipeline()
        runner = StreamRunner("s", lambda stats: fenced)  # type: ignore[arg-type,return-value]
        runner.start()
        assert runner.hand_over(linger_s=30.0)
        await asyncio.sleep(0.05)
        still_running = runner.running  # the revocation returned, the stream runs on
        fenced.fenced.set()
        await asyncio.wait_for(runner.handed_over(), 5)
        released = not runner.owned

        lingering = StreamRunner("t", lambda stats: HandingPipeline())  # type: ignore[arg-type,return-value]
        lingering.start()
        started = time.monotonic()
        assert lingering.hand_over(linger_s=0.3)
        await asyncio.wait_for(lingering.handed_over(), 5)
        return still_running, released, time.monotonic() - started

    still_running, released, lingered = asyncio.run(body())
    assert still_running and released
    assert 0.3 <= lingered < 1.5, lingered
