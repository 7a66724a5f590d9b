"""Running this instance's streams: every configured stream (alone), or the ones the stream
group assigns (with others). A stream that ends with an error (fenced, credentials refused)
stays stopped and is logged; the instance ends, with exit code 1, once it has such a stream
and none running (in a group its streams then move to the others). A stop signal stops
every stream, committing what is complete."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from bridge.cluster.membership import Membership
from bridge.cluster.runner import STOP_TIMEOUT_S, StreamRunner
from bridge.errors import BridgeError

log = logging.getLogger(__name__)


class Failures:
    """Errors that ended streams, and an event set on the first one."""

    def __init__(self) -> None:
        self.errors: dict[str, BaseException] = {}
        self.any = asyncio.Event()
        self.fatal: BaseException | None = None
        """An error that ends the instance whatever still runs (the stream group failed)."""

    def add(self, stream_id: str, error: BaseException, fatal: bool = False) -> None:
        if self.errors.get(stream_id) is error:
            return  # reported when the stream ended, and again by its stop
        self.errors.setdefault(stream_id, error)
        if fatal and self.fatal is None:
            self.fatal = error
        if isinstance(error, BridgeError):
            log.error("stream=%s stopped: %s", stream_id, error)
        else:
            log.error("stream=%s crashed", stream_id, exc_info=error)
        self.any.set()


def _watch(runner: StreamRunner, failures: Failures) -> None:
    """Report the pipeline's error when it ends by itself (not by a stop)."""
    task = runner.task
    assert task is not None

    def done(finished: asyncio.Task[None]) -> None:
        if finished.cancelled():
            return
        error = finished.exception()
        if error is not None:
            failures.add(runner.stream_id, error)

    task.add_done_callback(done)


async def _stop_all(
    runners: Mapping[str, StreamRunner],
    failures: Failures,
    timeout: float = STOP_TIMEOUT_S,
    stuck_is_failure: bool = True,
) -> None:
    """Stop the owned streams of `runners`; their errors are failures (a stream that had to
    be cancelled too, at shutdown: that is a defect, not a hand-over)."""
    owned = [r for r in runners.values() if r.owned]
    errors = await asyncio.gather(*(r.stop(timeout) for r in owned))
    for runner, error in zip(owned, errors, strict=True):
        if error is not None and (stuck_is_failure or not isinstance(error, TimeoutError)):
            failures.add(runner.stream_id, error)


async def run_alone(
    runners: Mapping[str, StreamRunner], stop: asyncio.Event, failures: Failures
) -> None:
    """Run every stream until `stop` or a stream's failure."""
    for runner in runners.values():
        runner.start()
        _watch(runner, failures)
    await _until(stop, failures, runners)
    await _stop_all(runners, failures)


async def run_in_group(
    runners: Mapping[str, StreamRunner],
    membership: Callable[..., Membership],
    stop: asyncio.Event,
    failures: Failures,
    handover_s: float = 10.0,
) -> Membership:
    """Join the stream group and run what it assigns until `stop` or a failure; then
    stop every stream and leave the group (the others take the streams over at once).

    A revoked stream whose source opens ahead (Predexon) runs on until its next owner
    takes it, within `handover_s` (`StreamRunner.hand_over`); the others stop at once."""
    loop = asyncio.get_running_loop()

    async def start(ids: list[str]) -> None:
        for stream_id in ids:
            runner = runners[stream_id]
            if runner.owned:  # assigned back while handing it over: start afresh
                await _stop_all({stream_id: runner}, failures, stuck_is_failure=False)
            runner.start()
            _watch(runner, failures)

    async def release(ids: list[str]) -> None:
        rest = {i: runners[i] for i in ids if not runners[i].hand_over(handover_s)}
        await _stop_all(rest, failures, stuck_is_failure=False)

    async def lose(ids: list[str]) -> None:
        # The session expired, most often because the broker is away: a commit in flight
        # is waited for, never cut (its outcome would be unknown). If another instance
        # took the stream meanwhile, its fencing ends ours.
        await _stop_all({i: runners[i] for i in ids}, failures, stuck_is_failure=False)

    def on_fatal(error: BaseException) -> None:
        loop.call_soon_threadsafe(failures.add, "stream-group", error, True)

    member = membership(
        on_assign=lambda ids: asyncio.run_coroutine_threadsafe(start(ids), loop).result(),
        on_revoke=lambda ids: asyncio.run_coroutine_threadsafe(release(ids), loop).result(),
        on_lost=lambda ids: asyncio.run_coroutine_threadsafe(lose(ids), loop).result(),
        on_fatal=on_fatal,
    )
    await asyncio.to_thread(member.start)
    try:
        await _until(stop, failures, runners)
    finally:
        # Leaving revokes every owned stream through on_revoke (the loop must stay free);
        # the streams handed over live end once their next owners took them.
        await asyncio.to_thread(member.close)
        await asyncio.gather(*(r.handed_over() for r in runners.values()))
        await _stop_all(runners, failures)  # whatever a failed membership left running
    return member


async def _until(
    stop: asyncio.Event, failures: Failures, runners: Mapping[str, StreamRunner]
) -> None:
    """Until `stop`, or a failed stream with none left running."""
    while not stop.is_set():
        waits = [asyncio.create_task(stop.wait()), asyncio.create_task(failures.any.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        if failures.any.is_set():
            failures.any.clear()
            if failures.fatal is not None or not any(r.running for r in runners.values()):
                return
