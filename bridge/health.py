"""The operations endpoint: `/metrics`, `/healthz` and `/readyz` on `[metrics] host/port`.

Served by a tiny HTTP/1.0 server on the bridge's own event loop (asyncio streams), not a
thread: scrapes then read the pipelines' counters between two steps of the loop, so a
scrape never sees a half-updated commit, and a /healthz answer proves the loop is alive
(a wedged loop stops answering, which is what a liveness probe should notice).

- `/healthz`: 200 while the process serves requests.
- `/readyz`: 200 when every stream this instance runs has its pipeline running and has
  committed upstream progress within `ready_window_s` (2 x heartbeat_commit_interval_s +
  max_latency_ms + a grace), and the instance is a member of the stream group (a standby
  that runs no stream is ready); else 503 with a JSON body naming what is not ready and why.
  A stream the exchange refuses during a maintenance window (its source's
  `status().maintenance` is True) is listed under "maintenance" instead, and is not a
  failure; after the window it gets one readiness window to commit again.
- `/metrics`: Prometheus text format (`bridge.metrics`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry

from bridge.config import Settings
from bridge.errors import ConfigError
from bridge.metrics import StreamView, make_registry, render
from bridge.records import SourceStatus

log = logging.getLogger(__name__)

READY_GRACE_S = 1.0
"""Added to the readiness window: a commit itself takes time (tens of ms on a healthy
broker), and a probe landing just as the heartbeat commit is due must not flap."""
# A request that has not sent its headers within this long is dropped: probes and
# scrapers send them at once, and a stuck client must not hold a connection forever.
_REQUEST_TIMEOUT_S = 5.0
# Header lines read at most per request (probes send a handful).
_MAX_HEADER_LINES = 100


def ready_window_s(settings: Settings) -> float:
    """How recent a stream's last commit must be for /readyz: an idle stream still
    commits its position every heartbeat interval, so two missed heartbeats mean stuck."""
    pipeline = settings.pipeline
    return (
        2 * pipeline.heartbeat_commit_interval_s + pipeline.max_latency_ms / 1000 + (READY_GRACE_S)
    )


def not_ready(
    views: Sequence[StreamView], window_s: float, now: float | None = None
) -> dict[str, str]:
    """Streams this instance runs that are not ready, each with the reason (empty: all
    ready). A stream is ready once its pipeline committed upstream progress (records, gaps
    or heartbeats) since it started here, and stays ready while commits keep coming."""
    mono = time.monotonic() if now is None else now
    reasons: dict[str, str] = {}
    for view in views:
        stats = view.stats
        if not view.owned:
            continue  # another instance of the stream group runs it
        status = _status(view)
        ended_at = status.maintenance_ended_at
        if not stats.running:
            reasons[view.stream_id] = "pipeline not running"
        elif status.maintenance is True or (ended_at is not None and mono - ended_at <= window_s):
            continue  # expected refusals (see in_maintenance), or just back from them
        elif stats.first_commit_at is None or stats.last_commit_at is None:
            reasons[view.stream_id] = "no upstream progress committed yet"
        elif mono - stats.last_commit_at > window_s:
            reasons[view.stream_id] = (
                f"last commit {mono - stats.last_commit_at:.1f}s ago (window {window_s:.1f}s)"
            )
    return reasons


def in_maintenance(views: Sequence[StreamView]) -> dict[str, str]:
    """Running streams the exchange refuses during a maintenance window, with the window's
    end: reported by /readyz as "maintenance", not as a failure."""
    found: dict[str, str] = {}
    for view in views:
        status = _status(view)
        if view.stats.running and status.maintenance is True:
            until = status.maintenance_until
            found[view.stream_id] = "maintenance" + (f" until {until}" if until else "")
    return found


def _status(view: StreamView) -> SourceStatus:
    return view.source.status() if view.source is not None else SourceStatus()


@dataclass(frozen=True, slots=True)
class _Response:
    status: int
    content_type: str
    body: bytes


_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class HealthServer:
    """Serves the three endpoints for a set of streams (see module docstring)."""

    def __init__(
        self,
        streams: Callable[[], Sequence[StreamView]],
        window_s: float,
        registry: CollectorRegistry | None = None,
        group: Callable[[], str | None] = lambda: None,
    ) -> None:
        self._streams = streams
        self._group = group
        self._window_s = window_s
        self.registry = registry or make_registry(streams)
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when configured as an ephemeral port in tests)."""
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._handle, host, port)
        log.info("metrics and health endpoint listening on http://%s:%s", host, self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    def respond(self, path: str) -> _Response:
        """The response for GET `path` (no I/O; also used directly by tests)."""
        if path == "/metrics":
            return _Response(200, CONTENT_TYPE_LATEST, render(self.registry))
        if path == "/healthz":
            return _Response(200, "text/plain; charset=utf-8", b"ok\n")
        if path == "/readyz":
            streams = self._streams()
            reasons = not_ready(streams, self._window_s)
            group = self._group()
            if group is not None:
                reasons["stream-group"] = group
            owned = [view for view in streams if view.owned]
            body = {
                "ready": not reasons and bool(streams),
                "streams": len(owned),
                "standby": sorted(view.stream_id for view in streams if not view.owned),
                "not_ready": reasons,
                "maintenance": in_maintenance(streams),
            }
            status = 200 if body["ready"] else 503
            return _Response(status, "application/json", json.dumps(body).encode() + b"\n")
        return _Response(404, "text/plain; charset=utf-8", b"not found\n")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_REQUEST_TIMEOUT_S):
                request_line = await reader.readline()
            for _ in range(_MAX_HEADER_LINES):
                async with asyncio.timeout(_REQUEST_TIMEOUT_S):
                    line = await reader.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
            parts = request_line.decode("latin-1").split()
            if len(parts) < 2:
                return
            method, target = parts[0], parts[1]
            if method not in ("GET", "HEAD"):
                response = _Response(405, "text/plain; charset=utf-8", b"GET only\n")
            else:
                response = self.respond(target.split("?", 1)[0])
            head = (
                f"HTTP/1.0 {response.status} {_REASONS.get(response.status, '')}\r\n"
                f"Content-Type: {response.content_type}\r\n"
                f"Content-Length: {len(response.body)}\r\n"
                "Connection: close\r\n\r\n"
            ).encode("latin-1")
            writer.write(head if method == "HEAD" else head + response.body)
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def serve(
    settings: Settings,
    streams: Callable[[], Sequence[StreamView]],
    group: Callable[[], str | None] = lambda: None,
) -> HealthServer | None:
    """Start the endpoint when `[metrics] port` is set (0 disables it)."""
    if not settings.metrics.port:
        return None
    metrics = settings.metrics
    server = HealthServer(streams, ready_window_s(settings), group=group)
    try:
        await server.start(metrics.host, metrics.port)
    except OSError as exc:
        raise ConfigError(
            f"metrics.port {metrics.port}: cannot listen on {metrics.host}:{metrics.port} "
            f"({exc.strerror or exc})"
        ) from None
    return server
