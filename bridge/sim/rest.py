"""A tiny HTTP/1.1 server on asyncio streams, rate limiters and REST fault knobs.

Shared by the simulators' REST endpoints (`bridge.sim.exchange_rest`,
`bridge.sim.predexon_rest`). It runs on the simulator's own event loop, so handlers read
the simulator's journals and ground truth without locks (the stdlib `http.server` the token
endpoint uses runs in a thread and could not). It speaks just enough HTTP/1.1 for JSON
APIs: one request per read, `Content-Length` bodies (no chunked requests), keep-alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger(__name__)

_MAX_HEADER_BYTES = 64 * 1024
_MAX_BODY_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    """Lower-case names."""
    body: bytes

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None


@dataclass(slots=True)
class HttpResponse:
    status: int
    body: Any = None
    """JSON-serialisable payload, or JSON already encoded as bytes (None: empty body)."""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    """Wait this long before answering (a slow page)."""


Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]


class HttpServer:
    """Serves `handler` on host:port (0 = a free port) until `stop()`."""

    def __init__(self, handler: Handler, host: str = "127.0.0.1", port: int = 0) -> None:
        self._handler = handler
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self.requests = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self._host, self._port)
        self._port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._conns):
                task.cancel()
            await asyncio.gather(*self._conns, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    return
                self.requests += 1
                try:
                    response = await self._handler(request)
                except Exception as exc:  # a handler bug is a 500, not a dead connection
                    log.exception("sim REST handler failed")
                    response = HttpResponse(500, {"code": 13, "message": str(exc), "details": []})
                if response.delay_s > 0:
                    await asyncio.sleep(response.delay_s)
                writer.write(_encode_response(response))
                await writer.drain()
                if request.headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        except asyncio.CancelledError:
            # stop(): end quietly (asyncio's stream callback logs a cancelled handler task).
            return
        finally:
            self._conns.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def _read_request(reader: asyncio.StreamReader) -> HttpRequest | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    except asyncio.LimitOverrunError as exc:
        raise ValueError("request head too large") from exc
    if len(head) > _MAX_HEADER_BYTES:
        raise ValueError("request head too large")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _version = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length") or 0)
    if length > _MAX_BODY_BYTES:
        raise ValueError("request body too large")
    body = await reader.readexactly(length) if length else b""
    parts = urlsplit(target)
    return HttpRequest(method.upper(), parts.path, parse_qs(parts.query), headers, body)


def _encode_response(response: HttpResponse) -> bytes:
    if isinstance(response.body, bytes):
        body = response.body
    else:
        body = b"" if response.body is None else json.dumps(response.body).encode()
    try:
        phrase = HTTPStatus(response.status).phrase
    except ValueError:
        phrase = "Status"
    head = [f"HTTP/1.1 {response.status} {phrase}", f"Content-Length: {len(body)}"]
    if body:
        head.append("Content-Type: application/json")
    head += [f"{k}: {v}" for k, v in response.headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


# -- rate limits -----------------------------------------------------------------------------


class WindowLimit:
    """At most `requests` per sliding `period_s` (the exchange's "12 requests/min")."""

    def __init__(self, requests: int, period_s: float, clock: Callable[[], float] = time.monotonic):
        self.requests = requests
        self.period_s = period_s
        self._clock = clock
        self._times: deque[float] = deque()

    def admit(self) -> float | None:
        """None when admitted (and counted); else seconds until a slot frees."""
        now = self._clock()
        while self._times and self._times[0] <= now - self.period_s:
            self._times.popleft()
        if len(self._times) >= self.requests:
            return self._times[0] + self.period_s - now
        self._times.append(now)
        return None


class BucketLimit:
    """A token bucket: `rate_per_s` refill, `burst` capacity (the ledger's 0.5/s, burst 5)."""

    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()

    def admit(self) -> float | None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate_per_s)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return None
        return (1.0 - self._tokens) / self.rate_per_s


Limiter = WindowLimit | BucketLimit


@dataclass
class RestFaults:
    """REST fault knobs, read on every request: mutate `sim.rest.faults` at runtime."""

    rate_limit_next: int = 0
    """The next N requests are answered 429 whatever the limiter says (a 429 storm)."""
    fail_next: int = 0
    """The next N requests (after rate limiting) are answered with `fail_status`."""
    fail_status: int = 503
    """500, 502, 503 or 504."""
    slow_page_s: float = 0.0
    """Every answer waits this long first (a slow page)."""
    short_pages: bool = False
    """Pages hold at most half the requested rows, yet pagination goes on (a client must
    follow the next-page token, not count rows)."""
    truncate_after_rows: int | None = None
    """History ends early: after this many rows of one pagination the last page says it is
    the end (no next token / eof) although rows remain: silent loss a client cannot see."""
    retry_after_s: float | None = None
    """Send `Retry-After` (whole seconds, rounded up) with every 429; None: no header
    (the exchange's docs disagree on whether it is sent)."""
    requests: int = 0
    """Requests answered (counter)."""
    rate_limited: int = 0
    """Requests answered 429 (counter)."""
    failed: int = 0
    """Requests answered with an injected 5xx (counter)."""


def retry_after_headers(faults: RestFaults, wait_s: float | None) -> dict[str, str]:
    if faults.retry_after_s is None:
        return {}
    seconds = max(faults.retry_after_s, wait_s or 0.0)
    return {"Retry-After": str(max(1, int(-(-seconds // 1))))}
