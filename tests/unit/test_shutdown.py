"""A stop ends a stream within its grace period, even if its pipeline is stuck."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from bridge.cluster.runner import StreamRunner
from bridge.eos.contract import PipelineStats


class _Pipeline:
    def __init__(self, honours_stop: bool, cleanup_s: float = 0.0) -> None:
        self.honours_stop = honours_stop
        self.cleanup_s = cleanup_s
        self.ended_at: float | None = None

    async def run(self, stop: asyncio.Event) -> None:
        try:
            if self.honours_stop:
                await stop.wait()
            else:
                await _ignores()
        finally:
            # Like a producer's close waiting for its commit still running in a thread.
            await asyncio.shield(asyncio.sleep(self.cleanup_s))
            self.ended_at = time.monotonic()


async def _ignores() -> None:
    await asyncio.Event().wait()  # a defect: waits on something that never happens


def _runner(name: str, honours_stop: bool) -> StreamRunner:
    return StreamRunner(name, lambda stats: _Pipeline(honours_stop))  # type: ignore[arg-type,return-value]


def test_a_stuck_pipeline_is_cancelled_after_the_grace_period_and_its_place_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def body() -> tuple[BaseException | None, BaseException | None, float]:
        good, stuck = _runner("good", True), _runner("stuck", False)
        good.start()
        stuck.start()
        await asyncio.sleep(0)
        started = time.monotonic()
        errors = await asyncio.gather(
            good.stop(timeout=0.3, cancel_after=0.2), stuck.stop(timeout=0.3, cancel_after=0.2)
        )
        return errors[0], errors[1], time.monotonic() - started

    with caplog.at_level(logging.ERROR):
        good_error, stuck_error, took = asyncio.run(body())
    assert good_error is None
    assert isinstance(stuck_error, TimeoutError)
    assert 0.5 <= took < 2.0
    (message,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert message.startswith("stream=stuck did not stop within 0.5 s")
    assert "_ignores" in message  # where it was stuck


def test_a_cancelled_pipeline_has_ended_before_stop_returns() -> None:
    """The stream's next pipeline may start as soon as stop() returns: the cancelled one
    must have finished its clean-up (its producer's call in flight) by then."""
    pipeline = _Pipeline(honours_stop=False, cleanup_s=0.5)

    async def body() -> float:
        runner = StreamRunner("s", lambda stats: pipeline)  # type: ignore[arg-type,return-value]
        runner.start()
        await asyncio.sleep(0)
        await runner.stop(timeout=0.05, cancel_after=0.05)
        assert not runner.owned
        return time.monotonic()

    returned_at = asyncio.run(body())
    assert pipeline.ended_at is not None, "stop() returned before the pipeline ended"
    assert pipeline.ended_at <= returned_at


def test_counters_and_hand_overs_outlive_each_pipeline() -> None:
    async def body() -> StreamRunner:
        runner = _runner("s", True)
        for _ in range(3):
            runner.start()
            runner.stats.commits += 1
            assert runner.owned
            assert await runner.stop() is None
            assert not runner.owned
        return runner

    runner = asyncio.run(body())
    assert runner.stats.commits == 3
    assert runner.handovers.acquired == runner.handovers.released == 3
    assert isinstance(runner.stats, PipelineStats)
