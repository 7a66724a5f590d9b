"""A stop signal ends the bridge within the grace period, even if a pipeline is stuck."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from bridge.app import stopped_within


async def _honours(stop: asyncio.Event) -> None:
    await stop.wait()


async def _ignores(stop: asyncio.Event) -> None:
    await asyncio.Event().wait()  # a defect: waits on something that never happens


def test_a_stuck_pipeline_is_cancelled_after_the_grace_period_and_its_place_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def body() -> tuple[list[asyncio.Task[None]], float]:
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(_honours(stop), name="stream=good"),
            asyncio.create_task(_ignores(stop), name="stream=stuck"),
        ]
        asyncio.get_running_loop().call_later(0.05, stop.set)
        started = time.monotonic()
        await stopped_within(stop, tasks, grace=0.3)
        return tasks, time.monotonic() - started

    with caplog.at_level(logging.ERROR):
        (good, stuck), took = asyncio.run(body())
    assert good.done() and not good.cancelled()
    assert stuck.cancelled()
    assert 0.3 <= took < 2.0
    (message,) = [r.getMessage() for r in caplog.records]
    assert message.startswith("stream=stuck did not stop within 0.3 s")
    assert "_ignores" in message  # where it was stuck


def test_without_a_stop_it_returns_when_every_pipeline_ends() -> None:
    async def body() -> None:
        stop = asyncio.Event()
        done = asyncio.create_task(asyncio.sleep(0.01))
        await asyncio.wait_for(stopped_within(stop, [done], grace=0.1), 2)  # type: ignore[list-item]

    asyncio.run(body())
