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

Rows are the journal's records rendered with protobuf's JSON mapping of the compiled
contract: under `SimConfig.contract="newer"` the added fields (e.g. the execution's
`blockTradeIndicator`) are not rendered. The trades search returns every journaled state of
a trade (NEW, CLEARED, BUSTED: one row each, as the stream sends them); whether the real
search returns only a trade's current state is not documented.

Ledger entries are derived from the position-change journal: `id` is the journal sequence,
the `*Change` fields are differences from the previous state of the same account and symbol
(from zero for the first one seen), `netPosition`/`cost`/`realized` the state after it,
`updateTime` the change time, `updateBusinessDate` its UTC date, `description` "trade" or
"bust"-free wording ("position update").

Fault knobs: `sim.rest.faults` (`bridge.sim.rest.RestFaults`): 429 storms, 5xx, slow pages,
short pages, history that ends early.
"""

from __future__ import annotations

import base64
import bisect
import datetime as dt
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message

from bridge.sim.journal import Journal
from bridge.sim.market import EXECUTIONS, POSITION_CHANGES, TRADE_CAPTURES
from bridge.sim.rest import (
    BucketLimit,
    HttpRequest,
    HttpResponse,
    HttpServer,
    Limiter,
    RestFaults,
    WindowLimit,
    retry_after_headers,
)
from bridge.sim.tokens import AccessTokenError, AccessTokens
from polymarket.v1 import dropcopy_pb2, enums_pb2, orders_pb2, trading_pb2

EXECUTIONS_PATH = "/v1/report/executions/search"
TRADES_PATH = "/v1/report/trades/search"
LEDGER_PATH = "/v1/positions/ledger"
RATE_LIMITED = {"code": 8, "message": "rate limit exceeded", "details": []}
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
    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(slots=True)
class _Row:
    seq: int
    time_us: int
    symbol: str
    firms: tuple[str, ...]
    accounts: tuple[str, ...]
    json: dict[str, Any]
    keys: dict[str, Any]
    """Fields searches filter on (order id, trade id, execution type, ...)."""


def _seq(row: _Row) -> int:
    return row.seq


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


def _rfc3339(time_us: int) -> str:
    ts = timestamp_pb2.Timestamp()
    ts.FromMicroseconds(time_us)
    return ts.ToJsonString()


def _to_json(message: Message) -> dict[str, Any]:
    # The exchange's JSON mapping: camelCase names, int64 strings, enum names, defaults
    # (zero enums included) omitted.
    return json_format.MessageToDict(message)


def _encode_token(position: int, query: str) -> str:
    raw = json.dumps({"p": position, "q": query}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str, query: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        position = int(data["p"])
        same_query = data["q"] == query
    except (ValueError, KeyError, TypeError) as exc:
        raise _Error(400, 3, "invalid pageToken") from exc
    if not same_query:
        raise _Error(400, 3, "pageToken belongs to another query")
    return position


class _Index:
    """One stream's journal, parsed once into rows (incrementally, as it grows)."""

    def __init__(self, journal: Journal, convert: Callable[[int, int, bytes], _Row]) -> None:
        self._journal = journal
        self._convert = convert
        self._rows: list[_Row] = []
        self._last = 0

    def rows(self) -> list[_Row]:
        journal = self._journal
        if journal.head > self._last:
            for seq, time_us, payload in journal.records():
                if seq > self._last:
                    self._rows.append(self._convert(seq, time_us, payload))
            self._last = journal.head
        first = journal.first_retained
        if self._rows and self._rows[0].seq < first:
            self._rows = [r for r in self._rows if r.seq >= first]
        return self._rows


def _account_firm(account: str) -> str:
    return "/".join(account.split("/", 2)[:2])


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
        self._prev_state: dict[tuple[str, str], tuple[int, int, int]] = {}
        self._indexes = {
            EXECUTIONS: _Index(journals[EXECUTIONS], self._execution_row),
            TRADE_CAPTURES: _Index(journals[TRADE_CAPTURES], self._trade_row),
            POSITION_CHANGES: _Index(journals[POSITION_CHANGES], self._ledger_row),
        }
        self._journals = journals

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

    # -- rows ------------------------------------------------------------------------------

    @staticmethod
    def _execution_row(seq: int, time_us: int, payload: bytes) -> _Row:
        e = trading_pb2.Execution.FromString(payload)
        keys = {
            "orderId": e.order.id,
            "clordId": e.order.clord_id,
            "parentOrderId": e.order.parent_order_id,
            "execId": e.id,
            "type": enums_pb2.ExecutionType.Name(e.type),
            "clientAccountId": e.order.client_account_id,
            "clientParticipantId": e.order.client_participant_id,
        }
        account = e.order.account
        return _Row(
            seq, time_us, e.order.symbol, (_account_firm(account),), (account,), _to_json(e), keys
        )

    @staticmethod
    def _trade_row(seq: int, time_us: int, payload: bytes) -> _Row:
        t = orders_pb2.Trade.FromString(payload)
        accounts = (t.aggressor.order.account, t.passive.order.account)
        keys = {
            "orderIds": {t.aggressor.order.id, t.passive.order.id},
            "execIds": {t.aggressor.id, t.passive.id},
            "tradeId": t.id,
            "state": enums_pb2.TradeState.Name(t.state),
            "tradeLinkId": t.trade_link_id,
        }
        firms = tuple(dict.fromkeys(_account_firm(a) for a in accounts))
        return _Row(seq, time_us, t.aggressor.order.symbol, firms, accounts, _to_json(t), keys)

    def _ledger_row(self, seq: int, time_us: int, payload: bytes) -> _Row:
        c = dropcopy_pb2.PositionChange.FromString(payload)
        p = c.position
        key = (p.account, p.symbol)
        net0, cost0, realized0 = self._prev_state.get(key, (0, 0, 0))
        self._prev_state[key] = (p.net_position, p.cost, p.realized)
        update_us = c.change_time.ToMicroseconds() if c.HasField("change_time") else time_us
        entry = {
            "id": str(seq),
            "account": p.account,
            "symbol": p.symbol,
            "quantityChange": str(p.net_position - net0),
            "costChange": str(p.cost - cost0),
            "realizedChange": str(p.realized - realized0),
            "netPosition": str(p.net_position),
            "cost": str(p.cost),
            "realized": str(p.realized),
            "updateTime": _rfc3339(update_us),
            "updateBusinessDate": dt.datetime.fromtimestamp(update_us / 1e6, dt.UTC)
            .date()
            .isoformat(),
            "description": "position update",
        }
        return _Row(seq, update_us, p.symbol, (_account_firm(p.account),), (p.account,), entry, {})

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
            wait = self._admit(request.path, firm)
            if faults.rate_limit_next > 0:
                faults.rate_limit_next -= 1
                wait = wait or 1.0
            if wait is not None:
                faults.rate_limited += 1
                return HttpResponse(
                    429, RATE_LIMITED, retry_after_headers(faults, wait), faults.slow_page_s
                )
            if faults.fail_next > 0:
                faults.fail_next -= 1
                faults.failed += 1
                status = faults.fail_status
                code = 4 if status == 504 else 14 if status in (502, 503) else 13
                body = {"code": code, "message": "simulated server error", "details": []}
                return HttpResponse(status, body, {}, faults.slow_page_s)
            return HttpResponse(200, serve(request, firm), {}, faults.slow_page_s)
        except _Error as exc:
            body = {"code": exc.code, "message": str(exc), "details": []}
            return HttpResponse(exc.status, body, {}, faults.slow_page_s)

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
                        400, 11, f"startTime is older than the retention ({_rfc3339(horizon)})"
                    )
                low = horizon
        return low, end_us

    def _page(
        self,
        stream: str,
        body: dict[str, Any],
        firm: str,
        accept: Callable[[_Row], bool],
        start_us: int | None,
        end_us: int | None,
    ) -> tuple[list[dict[str, Any]], str, bool]:
        """(rows, nextPageToken, eof) of one page of `stream`."""
        size = body.get("pageSize") or DEFAULT_PAGE_SIZE
        try:
            size = int(size)
        except (TypeError, ValueError) as exc:
            raise _Error(400, 3, "pageSize must be an integer") from exc
        if not 0 < size <= MAX_PAGE_SIZE:
            raise _Error(400, 3, f"pageSize must be 1..{MAX_PAGE_SIZE}")
        newest_first = body.get("newestFirst") in (True, "true", "True", "1")
        low, high = self._window(start_us, end_us)
        query = json.dumps(
            {k: v for k, v in sorted(body.items()) if k not in ("pageToken", "pageSize")}
        )
        token = body.get("pageToken") or ""
        position = _decode_token(token, query) if token else None
        if self.faults.short_pages:
            size = max(1, size // 2)
        rows = self._indexes[stream].rows()
        served = 0
        if position is not None:
            served = position >> 32
            position &= 0xFFFFFFFF
        truncate = self.faults.truncate_after_rows
        out: list[dict[str, Any]] = []
        last_seq = position
        more = False
        # Rows are in sequence order: start right after the token's position.
        if position is None:
            ordered: Iterator[_Row] = reversed(rows) if newest_first else iter(rows)
        elif newest_first:
            ordered = reversed(rows[: bisect.bisect_left(rows, position, key=_seq)])
        else:
            ordered = iter(rows[bisect.bisect_right(rows, position, key=_seq) :])
        for row in ordered:
            if row.time_us < low or (high is not None and row.time_us > high):
                continue
            if firm not in row.firms or not accept(row):
                continue
            if len(out) >= size or (truncate is not None and served + len(out) >= truncate):
                more = truncate is None or served + len(out) < truncate
                break
            out.append(row.json)
            last_seq = row.seq
        next_token = ""
        if more and last_seq is not None:
            next_token = _encode_token(((served + len(out)) << 32) | last_seq, query)
        return out, next_token, not next_token

    def _common(self, body: dict[str, Any]) -> Callable[[_Row], bool]:
        symbol = body.get("symbol") or ""
        accounts = body.get("accounts") or []
        if not isinstance(accounts, list):
            raise _Error(400, 3, "accounts must be a list")
        wanted = set(accounts)

        def accept(row: _Row) -> bool:
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

        def accept(row: _Row) -> bool:
            if not common(row):
                return False
            if any(v and row.keys[k] != v for k, v in exact.items()):
                return False
            if exec_ids and row.keys["execId"] not in exec_ids:
                return False
            return not types or row.keys["type"] in types

        rows, token, eof = self._page(
            EXECUTIONS,
            body,
            firm,
            accept,
            _parse_time(body.get("startTime"), "startTime"),
            _parse_time(body.get("endTime"), "endTime"),
        )
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

        def accept(row: _Row) -> bool:
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

        rows, token, _eof = self._page(
            TRADE_CAPTURES,
            body,
            firm,
            accept,
            _parse_time(body.get("startTime"), "startTime"),
            _parse_time(body.get("endTime"), "endTime"),
        )
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
        start = _parse_time(query.get("startTime"), "startTime")
        start = max(start or 0, self.config.ledger_start_us)

        def accept(row: _Row) -> bool:
            return account in row.accounts and (not symbol or row.symbol == symbol)

        rows, token, eof = self._page(
            POSITION_CHANGES, query, firm, accept, start, _parse_time(query.get("endTime"), "")
        )
        return {"entries": rows, "nextPageToken": token, "eof": eof}
