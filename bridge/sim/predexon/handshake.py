"""The Predexon WebSocket handshake: the API key from the URL, and the documented refusals
(401 unknown or revoked key, 403 plan without WebSocket access, 429 connection limit,
503 at capacity)."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from bridge.sim.predexon.config import PLANS, SimConfig
from bridge.sim.predexon.connections import SimConnection


class Handshake:
    """`process_request` for `websockets.serve`; an accepted handshake leaves its (key, plan)
    for the connection handler to `take`."""

    def __init__(
        self,
        config: SimConfig,
        revoked: set[str],
        connections: Callable[[], list[SimConnection]],
    ) -> None:
        self._config = config
        self._revoked = revoked
        self._connections = connections
        self._accepted: dict[int, tuple[str | None, str]] = {}
        self.handshakes: Counter[int] = Counter()
        """HTTP status of every handshake answered (101 = accepted)."""
        self.handshake_log: list[tuple[float, int]] = []
        """(monotonic time the handshake request arrived, HTTP status answered), in order."""

    def take(self, ws: ServerConnection) -> tuple[str | None, str]:
        """(API key or None when keyless, plan) of an accepted connection."""
        return self._accepted.pop(id(ws))

    def process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        key: str | None = None
        if parts.path.startswith("/v1/") and len(parts.path) > 4:
            key = parts.path[4:]
        elif "api_key" in parse_qs(parts.query):
            key = parse_qs(parts.query)["api_key"][0]
        if self._config.capacity_full:
            return self._refuse(HTTPStatus.SERVICE_UNAVAILABLE, "server at capacity")
        if key is None:
            if self._config.allow_keyless and parts.path.rstrip("/") == "/v1":
                self._accepted[id(ws)] = (None, "pro")
                self._answered(101)
                return None
            return self._refuse(HTTPStatus.UNAUTHORIZED, "missing API key")
        plan = self._config.keys.get(key)
        if plan is None or key in self._revoked:
            return self._refuse(HTTPStatus.UNAUTHORIZED, "invalid API key")
        if plan not in PLANS:
            return self._refuse(HTTPStatus.FORBIDDEN, "plan has no WebSocket access")
        open_for_key = sum(1 for c in self._connections() if c.key == key)
        if open_for_key >= PLANS[plan].connections:
            return self._refuse(HTTPStatus.TOO_MANY_REQUESTS, "connection limit for plan")
        self._accepted[id(ws)] = (key, plan)
        self._answered(101)
        return None

    def _answered(self, status: int) -> None:
        self.handshakes[status] += 1
        self.handshake_log.append((time.monotonic(), status))

    def _refuse(self, status: HTTPStatus, message: str) -> Response:
        self._answered(status.value)
        body = json.dumps({"error": message}).encode()
        headers = Headers([("Content-Type", "application/json")])
        return Response(status.value, status.phrase, headers, body)
