"""Run an asyncio server object on its own event loop in a daemon thread.

Synchronous tests and the demo drive the simulators this way: the server keeps serving while
the test thread blocks on a subprocess or a Kafka consumer. Anything that touches the server's
state must run on its loop (`call` for plain functions, `run` for coroutines).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any, Generic, Protocol, Self, TypeVar

T = TypeVar("T")


class AsyncServer(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


S = TypeVar("S", bound=AsyncServer)


class LoopThread(Generic[S]):
    """`server` started and stopped on a private event loop, run by a daemon thread.

    Use as a context manager, or `start()` / `stop()` (stop is safe to call twice).
    Deadlines: `start_timeout_s` and `stop_timeout_s` bound the server's own start / stop,
    `join_timeout_s` the thread's exit (None = wait), `call_timeout_s` each `call`.
    """

    def __init__(
        self,
        server: S,
        *,
        name: str,
        start_timeout_s: float = 60.0,
        stop_timeout_s: float = 60.0,
        join_timeout_s: float | None = None,
        call_timeout_s: float = 60.0,
    ) -> None:
        self.server = server
        self._start_timeout_s = start_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._join_timeout_s = join_timeout_s
        self._call_timeout_s = call_timeout_s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)

    def start(self) -> Self:
        self._thread.start()
        self.run(self.server.start(), self._start_timeout_s)
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self.run(self.server.stop(), self._stop_timeout_s)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(self._join_timeout_s)
        self._loop.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def run(self, coroutine: Awaitable[T], timeout_s: float | None = None) -> T:
        """Await `coroutine` on the server's loop; its result (or exception) comes back here."""

        async def wrapper() -> T:  # run_coroutine_threadsafe wants a coroutine, not any awaitable
            return await coroutine

        future = asyncio.run_coroutine_threadsafe(wrapper(), self._loop)
        return future.result(self._call_timeout_s if timeout_s is None else timeout_s)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on the server's loop and return its result (or raise its error)."""
        done: Future[T] = Future()

        def run() -> None:
            try:
                done.set_result(fn(*args))
            except BaseException as exc:  # handed back to the calling thread
                done.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return done.result(self._call_timeout_s)
