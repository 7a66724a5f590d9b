"""The HTTP client every REST history client shares: timeouts, retries, rate limits, errors.

Built on `httpx2` (already a dependency: the Schema Registry client's HTTP library), async.

Rules (from the upstreams' documentation):
- 15 s per call (the exchange's client guidance; requests over 30 s are 504 server-side).
- Documented limits are paced client-side (`Pacer`, per endpoint), so a lone client does not
  run into them; 429s still happen when other clients share the firm's or key's budget.
- HTTP 429 with `Retry-After`: wait what it says (at least `min_429_wait_s`, plus up to a
  tenth more so that clients sharing a budget do not return together): the server knows when
  its window frees. Without it (the exchange's pages disagree on whether it is sent): back
  off exponentially with full jitter, never below `min_429_wait_s` (1 s).
- 5xx, timeouts and connection errors: retried with exponential backoff and jitter.
- 401 once: the token provider is told (`on_unauthorized`) and the call is retried with a
  new token; a second 401, or 403, raises `AuthError`.
- Any other 4xx is not retried: 401/403 raise `AuthError`, the rest `RestError`.
- After `max_attempts` failed attempts (429s counted apart, up to `max_rate_limited`: a
  12-per-minute window can take a minute to free) the call raises `RestError` naming the
  URL, the last status and the upstream's message.

Error bodies are read in every documented form: the exchange's `{"code", "message",
"details"}`, Predexon's `{"error", "message"}` and its SDK's `{"detail": {"error",
"message"}}` (and FastAPI's `{"detail": "..."}` or `{"detail": [...]}`).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx2

from bridge.errors import AuthError, UpstreamError

log = logging.getLogger(__name__)

CALL_TIMEOUT_S = 15.0


class RestError(UpstreamError):
    """A REST call failed for good; `status` is the last HTTP status (None: no answer)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None,
        reason: str,
        retriable: bool = False,
        upstream_code: int | str | None = None,
    ) -> None:
        super().__init__(message, reason=reason, retriable=retriable)
        self.status = status
        self.upstream_code = upstream_code
        """The body's `code` (exchange: a gRPC code number) or `error` (Predexon), if any."""


class RestAuthError(AuthError):
    """401 / 403: bad credentials, missing scope, another firm's account."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message, reason=f"http_{status}")
        self.status = status


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 8
    """Attempts per call ending in 5xx / transport errors (the first included) before giving
    up."""
    max_rate_limited: int = 30
    """429 answers per call before giving up (their waits grow to `cap_s`)."""
    initial_s: float = 0.5
    cap_s: float = 30.0
    min_429_wait_s: float = 1.0
    """Floor of every wait after a 429 (documented: at least 1 s)."""
    timeout_s: float = CALL_TIMEOUT_S


DEFAULT_POLICY = RetryPolicy()


@dataclass
class ClientStats:
    """Counters (benchmarks, tests)."""

    requests: int = 0
    rate_limited: int = 0
    server_errors: int = 0
    transport_errors: int = 0
    waits: list[float] = field(default_factory=list)
    """Every backoff wait, in seconds."""


def error_message(body: bytes) -> str:
    """The upstream's message from an error body of any documented shape."""
    try:
        data = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace")
    if isinstance(data, dict):
        detail = data.get("detail")
        if isinstance(detail, dict):
            data = detail
        elif isinstance(detail, str):
            return detail
        elif isinstance(detail, list):
            return json.dumps(detail)[:300]
        parts = [str(data[k]) for k in ("code", "error", "message") if data.get(k) is not None]
        if parts:
            return ": ".join(parts)
    return json.dumps(data)[:300]


def error_code(body: bytes) -> int | str | None:
    """The body's `code` (exchange) or `error` (Predexon, either shape), if any."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if isinstance(data, dict) and isinstance(data.get("detail"), dict):
        data = data["detail"]
    if not isinstance(data, dict):
        return None
    code = data.get("code", data.get("error"))
    return code if isinstance(code, int | str) and not isinstance(code, bool) else None


def retry_after_s(value: str | None) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class Pacer:
    """Client-side pacing: at most `requests` calls per sliding `period_s`.

    `acquire()` waits (with the injectable `sleep`) until a call fits, then counts it.
    """

    def __init__(
        self,
        requests: int,
        period_s: float,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.requests = requests
        self.period_s = period_s
        self._sleep = sleep
        self._clock = clock
        self._times: deque[float] = deque()
        self._lock = asyncio.Lock()
        self.waited_s = 0.0

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = self._clock()
                while self._times and self._times[0] <= now - self.period_s:
                    self._times.popleft()
                if len(self._times) < self.requests:
                    self._times.append(now)
                    return
                wait = self._times[0] + self.period_s - now
                self.waited_s += wait
                await self._sleep(wait)


class RestClient:
    """One upstream's base URL, headers and retry policy; `request()` returns parsed JSON.

    `headers` is called before every attempt (a bearer token is re-minted as it expires).
    `sleep` and `rng` are injectable so tests can observe the waits without waiting.
    """

    def __init__(
        self,
        base_url: str,
        headers: Callable[[], Awaitable[Mapping[str, str]]] | None = None,
        *,
        policy: RetryPolicy = DEFAULT_POLICY,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
        parse: Callable[[bytes], Any] = json.loads,
        transport: httpx2.AsyncBaseTransport | None = None,
        on_unauthorized: Callable[[], None] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.policy = policy
        self.stats = ClientStats()
        self._headers = headers
        self._sleep = sleep
        self._rng = rng
        self._parse = parse
        self._on_unauthorized = on_unauthorized
        self._client = httpx2.AsyncClient(
            timeout=httpx2.Timeout(policy.timeout_s), transport=transport
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> RestClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.policy.cap_s, self.policy.initial_s * 2.0**attempt)
        return ceiling * self._rng()

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        body: Mapping[str, Any] | None = None,
        pacer: Pacer | None = None,
    ) -> Any:
        url = self.base_url + path
        policy = self.policy
        last = "no attempt"
        status: int | None = None
        reauthorized = False
        attempt = limited = 0
        while attempt < policy.max_attempts and limited <= policy.max_rate_limited:
            if pacer is not None:
                await pacer.acquire()
            headers = dict(await self._headers()) if self._headers else {}
            if body is not None:
                headers.setdefault("Content-Type", "application/json")
            self.stats.requests += 1
            try:
                response = await self._client.request(
                    method,
                    url,
                    params=params,
                    content=None if body is None else json.dumps(body).encode(),
                    headers=headers,
                )
            except httpx2.TransportError as exc:  # timeouts, refused and reset connections
                self.stats.transport_errors += 1
                status, last = None, f"{type(exc).__name__}: {exc}"
                wait = self._backoff(attempt)
                attempt += 1
            else:
                status = response.status_code
                if status < 300:
                    try:
                        return self._parse(response.content)
                    except ValueError as exc:
                        raise RestError(
                            f"{method} {url}: response is not JSON: {exc}",
                            status=status,
                            reason="bad_response",
                        ) from exc
                last = error_message(response.content)
                if status == 429:
                    self.stats.rate_limited += 1
                    told = retry_after_s(response.headers.get("retry-after"))
                    if told is not None:
                        wait = max(policy.min_429_wait_s, told) * (1.0 + 0.1 * self._rng())
                    else:
                        wait = max(policy.min_429_wait_s, self._backoff(limited))
                    limited += 1
                elif status >= 500:
                    self.stats.server_errors += 1
                    wait = self._backoff(attempt)
                    attempt += 1
                elif status == 401 and self._on_unauthorized and not reauthorized:
                    # The token expired between minting and use: mint a new one, once.
                    self._on_unauthorized()
                    reauthorized = True
                    wait = 0.0
                elif status in (401, 403):
                    raise RestAuthError(f"{method} {url}: HTTP {status}: {last}", status=status)
                else:
                    raise RestError(
                        f"{method} {url}: HTTP {status}: {last}",
                        status=status,
                        reason=f"http_{status}",
                        upstream_code=error_code(response.content),
                    )
            if attempt < policy.max_attempts and limited <= policy.max_rate_limited:
                log.info(
                    "REST call retried url=%s status=%s failures=%d rate_limited=%d "
                    "wait_s=%.2f: %s",
                    url,
                    status,
                    attempt,
                    limited,
                    wait,
                    last,
                )
                self.stats.waits.append(wait)
                await self._sleep(wait)
        raise RestError(
            f"{method} {url}: gave up after {attempt} failed attempts and {limited} rate "
            f"limited ones; last: HTTP {status}: {last}",
            status=status,
            reason="retries_exhausted" if status is None else f"http_{status}",
            retriable=True,
        )
