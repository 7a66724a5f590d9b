"""One configured stream on this instance: a pipeline while the group assigns it, none
while another instance runs it. Counters outlive the pipelines, so /metrics and /readyz see
one stream whatever its hand-overs."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from bridge.backfill.task import BackfillStats, BackfillTask
from bridge.eos.contract import PipelineStats
from bridge.eos.pipeline import Pipeline
from bridge.records import Gap

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 30.0
"""How long a revoked stream may take to commit what is complete and stop before it is
said to be slow: a healthy commit takes milliseconds."""

CANCEL_AFTER_S = 120.0
"""How much longer a stopping stream is waited for before it is cancelled as stuck: above
its longest bounded wait (a commit resumed while pending for up to the 60 s transaction
timeout, then an abort of up to 30 s)."""


@dataclass(slots=True)
class Handovers:
    """Hand-over counters and durations of one stream on this instance (for /metrics)."""

    acquired: int = 0
    released: int = 0
    start_seconds: float | None = None
    """Last assignment -> the stream's first commit on this instance."""
    stop_seconds: float | None = None
    """Last revocation -> the stream's pipeline stopped (what the next owner waited)."""


class StreamRunner:
    def __init__(
        self,
        stream_id: str,
        build: Callable[[PipelineStats], Pipeline],
        backfill: Callable[[BackfillStats], BackfillTask] | None = None,
    ) -> None:
        self.stream_id = stream_id
        self.stats = PipelineStats()
        self.backfill_stats = BackfillStats()
        self.backfill: BackfillTask | None = None
        """The stream's gap filler, running beside its pipeline (`[backfill] enabled`)."""
        self._build_backfill = backfill
        self._backfill_task: asyncio.Task[None] | None = None
        self._moves = Handovers()
        self.pipeline: Pipeline | None = None
        self._build = build
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._acquired_at = 0.0
        self._handover: asyncio.Task[None] | None = None
        """Releases the stream once its hand-over ended (`hand_over`)."""

    @property
    def backfills(self) -> bool:
        """True when the stream fills its gaps (`[backfill] enabled`)."""
        return self._build_backfill is not None

    @property
    def owned(self) -> bool:
        return self._task is not None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    def start(self) -> asyncio.Task[None]:
        """Build a pipeline for the stream and run it (on the event loop)."""
        assert self._task is None, f"{self.stream_id} already running"
        self._acquired_at = time.monotonic()
        self.stats.first_commit_at = None
        self._moves.acquired += 1
        if self._build_backfill is not None:
            self.backfill = self._build_backfill(self.backfill_stats)
        self.pipeline = self._build(self.stats)
        self._stop = stop = asyncio.Event()
        self._task = asyncio.create_task(
            self.pipeline.run(self._stop), name=f"stream={self.stream_id}"
        )
        if self.backfill is not None:
            self._backfill_task = asyncio.create_task(
                self.backfill.run(stop), name=f"backfill={self.stream_id}"
            )
            # The backfill runs only while the stream does.
            self._task.add_done_callback(lambda _: stop.set())
        return self._task

    def notify_gaps(self, gaps: list[Gap]) -> None:
        """The pipeline committed `gaps`: hand them to the backfill task, if any."""
        if self.backfill is not None:
            self.backfill.notify(gaps)

    @property
    def handovers(self) -> Handovers:
        """The counters, with the running pipeline's start time once it committed."""
        first = self.stats.first_commit_at
        if first is None or self._task is None:
            return self._moves
        return dataclasses.replace(self._moves, start_seconds=first - self._acquired_at)

    def hand_over(self, linger_s: float) -> bool:
        """Revoked: keep a stream whose source opens ahead (Predexon) running until its
        next owner, subscribed already, fences it, or for `linger_s` at most (make before
        break; `Pipeline.hand_over`). False: nothing to hand over live, stop it instead.
        `stop()` cuts the linger; `handed_over()` waits for its end."""
        pipeline, stop, task = self.pipeline, self._stop, self._task
        if pipeline is None or stop is None or task is None or task.done():
            return False
        if not pipeline.hand_over():
            return False
        deadline = asyncio.get_running_loop().call_later(linger_s, stop.set)
        task.add_done_callback(lambda _: deadline.cancel())
        self._handover = asyncio.create_task(self._release_after(task))
        return True

    async def _release_after(self, task: asyncio.Task[None]) -> None:
        """Release the stream once its pipeline handing over has ended (fenced by its next
        owner, or the linger is over), unless a `stop()` released it first. Its error, if
        any, was reported when it ended."""
        await asyncio.wait([task])
        if self._task is task:
            await self.stop()

    async def handed_over(self) -> None:
        """Once the stream handing over (if any) has ended and been released."""
        if self._handover is not None:
            await self._handover

    async def stop(
        self, timeout: float = STOP_TIMEOUT_S, cancel_after: float = CANCEL_AFTER_S
    ) -> BaseException | None:
        """Stop the pipeline (it commits what is complete); its error, if it failed.

        Returns only once the pipeline has ended, so the stream's next pipeline (here or
        after a rebalance) never starts while this one may still act. A pipeline waiting
        on Kafka (a commit while the broker is away) is not cancelled half way: each of
        its calls is bounded, and a commit's outcome is only known when it returns."""
        task, stop = self._task, self._stop
        if task is None or stop is None:
            return None
        started = time.monotonic()
        stop.set()
        done, _ = await asyncio.wait([task], timeout=timeout)
        if not done:
            log.warning(
                "stream=%s still stopping after %g s (waiting for Kafka); at most %g s more",
                self.stream_id,
                timeout,
                cancel_after,
            )
            done, _ = await asyncio.wait([task], timeout=cancel_after)
        if not done:
            # Only a defect gets here (every Kafka call is bounded): say where it waits.
            where = io.StringIO()
            task.print_stack(file=where)
            log.error(
                "stream=%s did not stop within %g s of the stop signal; cancelling it. %s",
                self.stream_id,
                timeout + cancel_after,
                where.getvalue().strip(),
            )
            task.cancel()
            # Its producer's close waits for the call in flight (bounded by its timeout).
            await asyncio.wait([task])
        backfill, self._backfill_task = self._backfill_task, None
        if backfill is not None:
            # Between two transactions it sees the stop; a REST page in flight is dropped.
            done, _ = await asyncio.wait([backfill], timeout=timeout)
            if not done:
                backfill.cancel()
                await asyncio.wait([backfill], timeout=5.0)
        self._moves = dataclasses.replace(self.handovers, released=self._moves.released + 1)
        self._moves.stop_seconds = time.monotonic() - started
        self._task = self._stop = None
        if task.cancelled():
            return TimeoutError(f"stream {self.stream_id} did not stop within {timeout:g} s")
        return task.exception()
