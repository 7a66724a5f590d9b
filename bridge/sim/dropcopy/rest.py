"""The exchange's REST history in the DropCopy simulator: Report API searches and the ledger.

Served from the simulator's journals (the same records its streams send), on loopback HTTP:

- `POST /v1/report/executions/search` -> `{"executions": [...], "nextPageToken", "eof"}`
- `POST /v1/report/trades/search` -> `{"trade": [...], "nextPageToken"}` (singular key, no eof)
- `GET /v1/positions/ledger` -> `{"entries": [...], "nextPageToken", "eof"}`

Wire conventions (the exchange's JSON mapping of its protos): lowerCamelCase names (request
bodies and ledger query parameters are accepted in snake_case too), int64 as strings,
Timestamps as RFC 3339, enums by name, zero-valued enums (and every other default value)
omitted, errors `{"code": <gRPC code>, "message", "details": []}`. Auth: `Authorization:
Bearer` (401 / code 16 when missing or bad), scope `read:reports` for the searches and
`read:positions` for the ledger (403 / code 7), `x-participant-id: firms/<F>/users/<U>`
required (400 / code 3), a token bound to another participant is 403 / code 7.

Searches have no firm filter: they return the records of the caller's firm (the firm of
`x-participant-id`), narrowed by `symbol`, `accounts`, ids and states; `startTime` /
`endTime` are inclusive, on the record's event time (the journal's time). Sort: oldest
first, `newestFirst` reverses. Page size: default 100, at most 1000 (more is 400 / code 3;
the real maximum is not published).

Rate limits (per firm and endpoint, as documented): searches 12 requests per 60 s (sliding
window), the ledger a token bucket of 0.5/s with burst 5. Over the limit: HTTP 429
`{"code":8,"message":"rate limit exceeded","details":[]}`; `Retry-After` only when the
`retry_after_s` fault knob asks for it. `RestConfig` scales or disables the limits.

Retention (the exchange documents none: "retained according to regulatory requirements"):
`RestConfig.retention_s` hides records older than that from REST, on top of whatever the
journal itself has dropped. Decision: a window reaching before the retention horizon is
*clamped* by default (only retained records are returned, nothing says some are missing:
the documentation warns that an empty answer is no proof of no activity);
`retention_refuse=True` answers such a search 400 / code 11 OUT_OF_RANGE instead. The
ledger's history starts at `ledger_start` (2026-05-01T00:00:00Z on the real exchange):
earlier `startTime`s are clamped.

Rows and ledger entries are rendered by `bridge.sim.dropcopy.rest_rows`.

Fault knobs: `sim.rest.faults` (`bridge.sim.rest.RestFaults`): 429 storms, 5xx, slow pages,
short pages, history that ends early.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import timestamp_pb2

from bridge.sim.dropcopy.rest_rows import ReportRow, report_rows, rfc3339, row_position
from bridge.sim.journal import Journal
from bridge.sim.market import EXECUTIONS, POSITION_CHANGES, TRADE_CAPTURES
from bridge.sim.rest import (
    BucketLimit,
    HttpRequest,
    HttpResponse,
    HttpServer,
    Limiter,
    PageToken,
    RestFaults,
    WindowLimit,
    page_of,
)
from bridge.sim.tokens import AccessTokenError, AccessTokens
from polymarket.v1 import enums_pb2

EXECUTIONS_PATH = "/v1/report/executions/search"
TRADES_PATH = "/v1/report/trades/search"
LEDGER_PATH = "/v1/positions/ledger"
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
LEDGER_START_US = int(dt.datetime(2026, 5, 1, tzinfo=dt.UTC).timestamp() * 1_000_000)
_PARTICIPANT = re.compile(r"(firms/[^/]+)/users/[^/]+")
_ACCOUNT = re.compile(r"(firms/[^/]+)/accounts/[^/]+")


@dataclass
class RestConfig:
    """REST side of the DropCopy simulator."""

    enabled: bool = True
    port: int = 0
    search_limit: tuple[int, float] | None = (12, 60.0)
    """(requests, per seconds) per firm and search endpoint; None: unlimited."""
    ledger_limit: tuple[float, int] | None = (0.5, 5)
    """(requests per second, burst) per firm; None: unlimited."""
    retention_s: float | None = None
    """Records older than this are not served by REST; None: whatever the journal holds."""
    retention_refuse: bool = False
    """A window reaching before the retention horizon: 400 OUT_OF_RANGE instead of clamping."""
    ledger_start_us: int = LEDGER_START_US
    faults: RestFaults = field(default_factory=RestFaults)


class _Error(Exception):
    """An error answer: HTTP `status` and the body's gRPC `code`."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def _error_body(code: int, message: str) -> dict[str, Any]:
    """The exchange's error body (`google.rpc.Status` in JSON)."""
    return {"code": code, "message": message, "details": []}


RATE_LIMITED = _error_body(8, "rate limit exceeded")


def _snake_to_camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _camel(body: dict[str, Any]) -> dict[str, Any]:
    return {_snake_to_camel(k): v for k, v in body.items()}


def _parse_time(value: Any, name: str) -> int | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise _Error(400, 3, f"{name} must be an RFC 3339 string")
    ts = timestamp_pb2.Timestamp()
    try:
        ts.FromJsonString(value)
    except ValueError as exc:
        raise _Error(400, 3, f"{name}: {exc}") from exc
    return ts.ToMicroseconds()


class ExchangeRest:
    """The REST endpoints of one `DropCopySimulator` (started by it; see module docstring)."""

    def __init__(
        self,
        journals: dict[str, Journal],
        access: AccessTokens,
        *,
        auth: bool,
        host: str,
        config: RestConfig,
        now_us: Callable[[], int],
    ) -> None:
        self.config = config
        self.faults = config.faults
        self._access = access
        self._auth = auth
        self.now_us = now_us
        """Wall clock of retention (tests may pin it)."""
        self._server = HttpServer(self._handle, host, config.port)
        self._limits: dict[tuple[str, str], Limiter] = {}
        self._indexes = report_rows(journals)

    async def start(self) -> None:
        await self._server.start()

    async def stop(self) -> None:
        await self._server.stop()

    def warm(self) -> None:
        """Render every journal record as REST JSON now (it is otherwise done lazily, on
        the first request after records arrive): benchmarks time the client, not this."""
        for index in self._indexes.values():
            index.rows()

    @property
    def url(self) -> str:
        """Base URL, e.g. `http://127.0.0.1:PORT` (paths as on the exchange)."""
        return self._server.url

    # -- HTTP ------------------------------------------------------------------------------

    async def _handle(self, request: HttpRequest) -> HttpResponse:
        faults = self.faults
        faults.requests += 1
        try:
            route = {
                ("POST", EXECUTIONS_PATH): ("read:reports", self._search_executions),
                ("POST", TRADES_PATH): ("read:reports", self._search_trades),
                ("GET", LEDGER_PATH): ("read:positions", self._ledger),
            }.get((request.method, request.path))
            if route is None:
                raise _Error(404, 5, f"no route {request.method} {request.path}")
            scope, serve = route
            firm = self._authorize(request, scope)
            wait = faults.throttle(self._admit(request.path, firm))
            if wait is not None:
                headers = faults.retry_after_headers(wait)
                return HttpResponse(429, RATE_LIMITED, headers, faults.slow_page_s)
            status = faults.injected_failure()
            if status is not None:
                # gRPC codes of the gateway's 5xx: DEADLINE_EXCEEDED, UNAVAILABLE, INTERNAL
                code = 4 if status == 504 else 14 if status in (502, 503) else 13
                raise _Error(status, code, "simulated server error")
            return HttpResponse(200, serve(request, firm), {}, faults.slow_page_s)
        except _Error as exc:
            return HttpResponse(exc.status, _error_body(exc.code, str(exc)), {}, faults.slow_page_s)

    def _authorize(self, request: HttpRequest, scope: str) -> str:
        """The caller's firm, or raise."""
        participant = request.headers.get("x-participant-id", "")
        if self._auth:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise _Error(401, 16, "missing bearer access token")
            try:
                claims = self._access.verify(token.strip())
            except AccessTokenError as exc:
                raise _Error(401, 16, str(exc)) from exc
            if scope not in claims.scopes:
                raise _Error(403, 7, f"missing scope {scope}")
            if claims.participant not in (None, participant):
                raise _Error(403, 7, "access token is not valid for this participant")
        match = _PARTICIPANT.fullmatch(participant)
        if match is None:
            raise _Error(400, 3, "x-participant-id (firms/<firm>/users/<user>) is required")
        return match.group(1)

    def _admit(self, path: str, firm: str) -> float | None:
        key = (path, firm)
        limiter = self._limits.get(key)
        if limiter is None:
            if path == LEDGER_PATH:
                if self.config.ledger_limit is None:
                    return None
                limiter = BucketLimit(*self.config.ledger_limit)
            else:
                if self.config.search_limit is None:
                    return None
                limiter = WindowLimit(*self.config.search_limit)
            self._limits[key] = limiter
        return limiter.admit()

    def _body(self, request: HttpRequest) -> dict[str, Any]:
        try:
            body = json.loads(request.body or b"{}")
        except ValueError as exc:
            raise _Error(400, 3, "body is not JSON") from exc
        if not isinstance(body, dict):
            raise _Error(400, 3, "body must be a JSON object")
        return _camel(body)

    def _window(self, start_us: int | None, end_us: int | None) -> tuple[int, int | None]:
        """(first event time served, last) after retention."""
        low = start_us if start_us is not None else 0
        if self.config.retention_s is not None:
            horizon = self.now_us() - int(self.config.retention_s * 1_000_000)
            if low < horizon:
                if self.config.retention_refuse:
                    raise _Error(
                        400, 11, f"startTime is older than the retention ({rfc3339(horizon)})"
                    )
                low = horizon
        return low, end_us

    def _page(
        self,
        stream: str,
        body: dict[str, Any],
        firm: str,
        accept: Callable[[ReportRow], bool],
        not_before_us: int = 0,
    ) -> tuple[list[dict[str, Any]], str, bool]:
        """(rows, nextPageToken, eof) of one page of `stream` for the request `body`
        (camelCase: time window, page size and token, order); `not_before_us` clamps the
        window's start (the ledger's first day)."""
        size = body.get("pageSize") or DEFAULT_PAGE_SIZE
        try:
            size = int(size)
        except (TypeError, ValueError) as exc:
            raise _Error(400, 3, "pageSize must be an integer") from exc
        if not 0 < size <= MAX_PAGE_SIZE:
            raise _Error(400, 3, f"pageSize must be 1..{MAX_PAGE_SIZE}")
        start_us = _parse_time(body.get("startTime"), "startTime")
        if not_before_us:
            start_us = max(start_us or 0, not_before_us)
        low, high = self._window(start_us, _parse_time(body.get("endTime"), "endTime"))
        query = json.dumps(
            {k: v for k, v in sorted(body.items()) if k not in ("pageToken", "pageSize")}
        )
        token = self._token(body.get("pageToken") or "", query)

        def wanted(row: ReportRow) -> bool:
            if row.time_us < low or (high is not None and row.time_us > high):
                return False
            return firm in row.firms and accept(row)

        rows, after = page_of(
            self._indexes[stream].rows(),
            row_position,
            token,
            query=query,
            size=size,
            newest_first=body.get("newestFirst") in (True, "true", "True", "1"),
            faults=self.faults,
            accept=wanted,
        )
        next_token = after.encode() if after is not None else ""
        return [row.json for row in rows], next_token, not next_token

    @staticmethod
    def _token(text: str, query: str) -> PageToken | None:
        if not text:
            return None
        try:
            token = PageToken.decode(text)
        except ValueError as exc:
            raise _Error(400, 3, "invalid pageToken") from exc
        if token.query != query:
            raise _Error(400, 3, "pageToken belongs to another query")
        return token

    def _common(self, body: dict[str, Any]) -> Callable[[ReportRow], bool]:
        symbol = body.get("symbol") or ""
        accounts = body.get("accounts") or []
        if not isinstance(accounts, list):
            raise _Error(400, 3, "accounts must be a list")
        wanted = set(accounts)

        def accept(row: ReportRow) -> bool:
            if symbol and row.symbol != symbol:
                return False
            return not wanted or not wanted.isdisjoint(row.accounts)

        return accept

    def _search_executions(self, request: HttpRequest, firm: str) -> dict[str, Any]:
        body = self._body(request)
        common = self._common(body)
        exact = {k: body.get(k) for k in ("orderId", "clordId", "parentOrderId")}
        exact |= {k: body.get(k) for k in ("clientAccountId", "clientParticipantId")}
        exec_ids = set(body.get("execIds") or [])
        types = {
            t if isinstance(t, str) else enums_pb2.ExecutionType.Name(t)
            for t in body.get("types") or []
        }

        def accept(row: ReportRow) -> bool:
            if not common(row):
                return False
            if any(v and row.keys[k] != v for k, v in exact.items()):
                return False
            if exec_ids and row.keys["execId"] not in exec_ids:
                return False
            return not types or row.keys["type"] in types

        rows, token, eof = self._page(EXECUTIONS, body, firm, accept)
        return {"executions": rows, "nextPageToken": token, "eof": eof}

    def _search_trades(self, request: HttpRequest, firm: str) -> dict[str, Any]:
        body = self._body(request)
        common = self._common(body)
        order_id, exec_id = body.get("orderId"), body.get("execId")
        trade_id, link = body.get("tradeId"), body.get("tradeLinkId")
        states = {
            s if isinstance(s, str) else enums_pb2.TradeState.Name(s)
            for s in body.get("states") or []
        }

        def accept(row: ReportRow) -> bool:
            k = row.keys
            if not common(row):
                return False
            if order_id and order_id not in k["orderIds"]:
                return False
            if exec_id and exec_id not in k["execIds"]:
                return False
            if (trade_id and k["tradeId"] != trade_id) or (link and k["tradeLinkId"] != link):
                return False
            return not states or k["state"] in states

        rows, token, _eof = self._page(TRADE_CAPTURES, body, firm, accept)
        return {"trade": rows, "nextPageToken": token}

    def _ledger(self, request: HttpRequest, firm: str) -> dict[str, Any]:
        query = {_snake_to_camel(k): v[-1] for k, v in request.query.items() if v}
        account = query.get("account") or ""
        if not account:
            raise _Error(400, 3, "account is required")
        match = _ACCOUNT.fullmatch(account)
        if match is None:
            raise _Error(400, 3, "account must look like firms/<firm>/accounts/<id>")
        if match.group(1) != firm:
            raise _Error(403, 7, "the account belongs to another firm")
        symbol = query.get("symbol") or ""

        def accept(row: ReportRow) -> bool:
            return account in row.accounts and (not symbol or row.symbol == symbol)

        start = self.config.ledger_start_us
        rows, token, eof = self._page(POSITION_CHANGES, query, firm, accept, start)
        return {"entries": rows, "nextPageToken": token, "eof": eof}
