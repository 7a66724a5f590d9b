"""What the simulators' REST endpoints share: a tiny HTTP/1.1 server on asyncio streams,
rate limiters, REST fault knobs and the walk through one page of sorted rows.

Used by `bridge.sim.dropcopy.rest` and `bridge.sim.predexon.rest`. The server runs on the
simulator's own event loop, so handlers read the simulator's journals and ground truth
without locks (the stdlib `http.server` the token endpoint uses runs in a thread and could
not). It speaks just enough HTTP/1.1 for JSON APIs: one request per read, `Content-Length`
bodies (no chunked requests), keep-alive.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, TypeVar
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

    def throttle(self, wait_s: float | None) -> float | None:
        """The rate limiter's verdict (`wait_s`; None: admitted) with the 429 storm knob
        applied: seconds to answer 429 with (counted), or None to go on."""
        if self.rate_limit_next > 0:
            self.rate_limit_next -= 1
            wait_s = wait_s or 1.0
        if wait_s is not None:
            self.rate_limited += 1
        return wait_s

    def injected_failure(self) -> int | None:
        """The status to fail this request with (`fail_next`, counted); None: serve it."""
        if self.fail_next <= 0:
            return None
        self.fail_next -= 1
        self.failed += 1
        return self.fail_status

    def retry_after_headers(self, wait_s: float | None) -> dict[str, str]:
        """Headers of a 429: `Retry-After` only when the `retry_after_s` knob asks for it."""
        if self.retry_after_s is None:
            return {}
        seconds = max(self.retry_after_s, wait_s or 0.0)
        return {"Retry-After": str(max(1, int(-(-seconds // 1))))}


# -- pagination ------------------------------------------------------------------------------

Row = TypeVar("Row")


@dataclass(frozen=True, slots=True)
class PageToken:
    """Where a pagination stands (an opaque token to clients): rows served so far (for the
    `truncate_after_rows` knob), the sort position of the last row served, and the query
    it belongs to."""

    served: int
    after: tuple[int, ...]
    query: str = ""

    def encode(self) -> str:
        raw = json.dumps([self.served, list(self.after), self.query]).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @staticmethod
    def decode(text: str) -> PageToken:
        """The token of `text`; `ValueError` when it is not one."""
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            served, after, query = json.loads(raw)
            return PageToken(int(served), tuple(int(a) for a in after), str(query))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"not a page token: {text!r}") from exc


def page_of(
    rows: Sequence[Row],
    position: Callable[[Row], tuple[int, ...]],
    token: PageToken | None,
    *,
    query: str,
    size: int,
    newest_first: bool,
    faults: RestFaults,
    accept: Callable[[Row], bool],
) -> tuple[list[Row], PageToken | None]:
    """One page of the accepted `rows` (sorted by `position`) after `token`, and the token
    of the next page (None: this is the last). Applies the `short_pages` and
    `truncate_after_rows` knobs."""
    if faults.short_pages:
        size = max(1, size // 2)
    served = token.served if token is not None else 0
    ordered: Iterable[Row]
    # Rows are sorted: start right after the token's position.
    if token is None:
        ordered = reversed(rows) if newest_first else rows
    elif newest_first:
        ordered = reversed(rows[: bisect.bisect_left(rows, token.after, key=position)])
    else:
        ordered = rows[bisect.bisect_right(rows, token.after, key=position) :]
    truncate = faults.truncate_after_rows
    out: list[Row] = []
    for row in ordered:
        if not accept(row):
            continue
        if truncate is not None and served + len(out) >= truncate:
            return out, None  # history "ends" here although rows remain
        if len(out) >= size:
            return out, PageToken(served + len(out), position(out[-1]), query)
        out.append(row)
    return out, None
