"""DropCopySource against the simulator (no Kafka): a silent-but-open stream is resumed
after `silence_timeout_s`, and a maintenance window is waited out calmly, logged once,
then resumed from the token. Every record arrives exactly once, in order."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

import grpc
import pytest

from bridge.maintenance import MaintenanceSchedule
from bridge.mapping.dropcopy import DropCopyMapper
from bridge.records import Batch
from bridge.serde.avro import SingleObjectFormat
from bridge.sim.dropcopy import DropCopySimulator, SimConfig
from bridge.sim.market import DEFAULT_FIRMS
from bridge.sources.backoff import Backoff
from bridge.sources.dropcopy.source import DropCopySource
from bridge.streams.kinds import KINDS
from bridge.verify import expected_dropcopy_rows
from tests.bridge_harness import until

STREAM_ID = "dropcopy.executions"
KIND = KINDS["executions"]


class _NoToken:
    async def token(self) -> str:
        return "unused"  # the simulator runs without auth here

    def invalidate(self) -> None:
        pass


def _source(sim: DropCopySimulator, channel: grpc.aio.Channel, **options: Any) -> DropCopySource:
    topic = "t.executions"
    return DropCopySource(
        kind=KIND,
        stream_id=STREAM_ID,
        channel=channel,
        tokens=_NoToken(),
        mapper=DropCopyMapper(
            KIND, STREAM_ID, topic, SingleObjectFormat().prefix(KIND.schema, topic)
        ),
        participant_id=f"{DEFAULT_FIRMS[0]}/users/alice",
        firms=DEFAULT_FIRMS,
        first_start_time_us=0,
        backoff=Backoff(0.01, 0.05),
        **options,
    )


def _truth(sim: DropCopySimulator) -> list[tuple[bytes | None, str]]:
    return expected_dropcopy_rows("executions", STREAM_ID, sim.ground_truth("executions"))


def _run(test: Callable[[DropCopySimulator, grpc.aio.Channel], Coroutine[Any, Any, None]]) -> None:
    async def main() -> None:
        config = SimConfig(seed=11, prefill=900, batch=50, heartbeat_s=0.05, auth=False)
        sim = DropCopySimulator(config)
        await sim.start()
        try:
            async with grpc.aio.insecure_channel(sim.address) as channel:
                await asyncio.wait_for(test(sim, channel), 60)
        finally:
            await sim.stop()

    asyncio.run(main())


async def _collect(
    source: DropCopySource,
    sim: DropCopySimulator,
    on_batch: Callable[[int, Batch], Coroutine[Any, Any, None]] | None = None,
) -> list[tuple[bytes | None, str]]:
    """Rows of the source's batches until it delivered as many as the ground truth holds."""
    rows: list[tuple[bytes | None, str]] = []
    stream = source.stream(None)
    try:
        count = 0
        async for batch in stream:
            count += 1
            rows += [(r.key, r.event_id) for r in batch.records]
            if on_batch is not None:
                await on_batch(count, batch)
            if len(rows) >= len(_truth(sim)):
                return rows
    finally:
        await stream.aclose()
    raise AssertionError("the stream ended")


def test_silent_open_stream_is_resumed_after_the_timeout_losing_and_doubling_nothing() -> None:
    async def test(sim: DropCopySimulator, channel: grpc.aio.Channel) -> None:
        sim.faults.silent_after_responses = 4
        source = _source(sim, channel, silence_timeout_s=0.5)
        started = time.monotonic()
        rows = await _collect(source, sim)
        elapsed = time.monotonic() - started
        assert rows == _truth(sim)  # resumed after the last response: no loss, no repeat
        assert set(source.reconnects) == {"silence"}, source.reconnects
        # ~300 executions, 50 a response, silent after 4 responses: every call but the
        # last went silent and was resumed (the last may go silent after the test is done).
        silences = source.reconnects["silence"]
        assert silences >= 1 and silences in (sim.stats.silenced, sim.stats.silenced - 1)
        assert sim.stats.calls["executions"] == silences + 1
        # Each silent call was given up after about the timeout, not after keepalive
        # (the connection itself is healthy) or never.
        assert elapsed < silences * (0.5 + 2.0), elapsed
        assert not source.maintenance

    _run(test)


def test_backpressure_is_not_silence() -> None:
    async def test(sim: DropCopySimulator, channel: grpc.aio.Channel) -> None:
        source = _source(sim, channel, silence_timeout_s=0.3)

        async def slow_consumer(count: int, batch: Batch) -> None:
            if count in (2, 5):
                # The pipeline takes longer than the timeout to accept a batch (Kafka is
                # slow): the exchange is not silent, nothing must be resumed.
                await asyncio.sleep(0.8)

        assert await _collect(source, sim, slow_consumer) == _truth(sim)
        assert dict(source.reconnects) == {}

    _run(test)


def test_maintenance_window_is_waited_out_calmly_logged_once_and_resumed_from_the_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def test(sim: DropCopySimulator, channel: grpc.aio.Channel) -> None:
        # The source's clock jumps into an announced window when the test says so; the
        # simulator refuses over the same real-time span (reopening a little early, as an
        # exchange may: a refusal after the window would be an ordinary reconnect).
        window_start = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)
        schedule = MaintenanceSchedule(
            None, [(window_start, window_start + dt.timedelta(seconds=2.0))]
        )
        offset = [dt.timedelta(0)]
        source = _source(
            sim,
            channel,
            maintenance=schedule,
            maintenance_retry_s=0.3,
            clock=lambda: dt.datetime.now(dt.UTC) + offset[0],
        )
        states: list[bool] = []  # source.maintenance whenever a batch arrives
        waited: list[bool] = []

        async def watch() -> None:
            await until(lambda: source.maintenance, 30)
            waited.append(True)

        async def enter_window(count: int, batch: Batch) -> None:
            states.append(source.maintenance)
            if count == 3:
                real = time.time()
                offset[0] = window_start - dt.datetime.fromtimestamp(real, dt.UTC)
                sim.faults.maintenance = ((real, real + 1.8),)
                # Records the exchange generates while it is closed arrive afterwards.
                await sim.generate(400)

        watcher = asyncio.create_task(watch())
        with caplog.at_level(logging.DEBUG, logger="bridge.sources.dropcopy.source"):
            rows = await _collect(source, sim, enter_window)
        await watcher
        assert rows == _truth(sim)  # resumed from the token: no gap, no repeat
        assert sim.stats.maintenance_refusals >= 2  # the open call was closed, calls refused
        assert set(source.reconnects) == {"maintenance"}, source.reconnects
        # Calm: one attempt per 0.3 s over about 2 s, not a backoff's rapid retries.
        assert 2 <= source.reconnects["maintenance"] <= 10, source.reconnects
        assert waited == [True] and not any(states)  # waiting, then delivering again
        assert not source.maintenance and source.maintenance_ended_at is not None
        entered = [
            r for r in caplog.records if r.levelno >= logging.WARNING and "maintenance" in r.msg
        ]
        assert len(entered) == 1, [r.getMessage() for r in caplog.records]
        assert "2100-01-01T00:00:02+00:00" in entered[0].getMessage()
        over = [r.getMessage() for r in caplog.records if "maintenance over" in r.msg]
        assert len(over) == 1 and "accepts the stream again" in over[0]

    _run(test)


def test_refusals_outside_a_window_are_ordinary_reconnects() -> None:
    async def test(sim: DropCopySimulator, channel: grpc.aio.Channel) -> None:
        window_start = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)
        schedule = MaintenanceSchedule(None, [(window_start, window_start + dt.timedelta(1))])
        source = _source(sim, channel, maintenance=schedule, maintenance_retry_s=30)
        sim.faults.fail_next_calls = 3
        assert await _collect(source, sim) == _truth(sim)
        assert dict(source.reconnects) == {"unavailable": 3}
        assert source.maintenance_ended_at is None

    _run(test)
