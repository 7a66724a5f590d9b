"""Predexon's REST history in the Predexon simulator: `/v2/polymarket/trades` and `/activity`.

Served on loopback HTTP from the simulator's ground truth (every event it generated,
whether or not anyone subscribed), header `x-api-key` (the WebSocket keys and plans):

- `GET /v2/polymarket/trades`: confirmed `order_filled` events only (pending fills and
  `fee_refund`s are not trades; whether the real API includes the synthetic
  taker-aggregate row is not documented: the simulator includes it). Filters
  `market_slug`, `condition_id`, `token_id`, `wallet` (maker `user` or `taker`: the
  real semantics are not documented), `builder`, `min_total` (on `amount_usd`).
- `GET /v2/polymarket/activity`: split / merge / redeem / conversion events; `wallet` is
  required (422 without), filters `market_slug`, `condition_id`.

Both: `start_time` / `end_time` Unix seconds, inclusive, on `timestamp` (without any filter
and without `start_time`, only the last 24 h); `limit` 1-500 (default 100; else 422);
`order` `desc` (default) or `asc` (`asc` without a market or wallet filter is 400, as
documented); `pagination_key` is an opaque cursor after the last row returned. Response
`{"trades" | "activities": [...], "pagination": {"limit", "count", "has_more",
"pagination_key"}}` with `pagination_key` null on the last page.

Rate: the plan's requests per second (free 1, dev 20, pro 100; sliding 1 s window per key),
429 above it. Error bodies: `{"error", "message"}` (the docs' form) or, with
`PredexonRestConfig.error_shape="sdk"`, `{"detail": {"error", "message"}}`.

Row shapes (the fact sheet's): trades rows carry `token_id`, `side`, `market_slug`,
`condition_id`, `shares` (raw), `shares_normalized`, `price`, `amount_usd` (shares x
price), `tx_hash`, `title`, `timestamp`, `order_hash`, `user`, `taker`, `is_yes_side`
(outcome index 0), `outcome_label`, `fee_usd`, `exchange_version`, `builder`, `metadata`;
no `log_index`, `role`, `status`, ... Activity rows: `side` (SPLIT, MERGE, REDEEM,
CONVERT), `market_slug`, `market_id` (null for CONVERT), `neg_risk_market_id` (CONVERT
only), `condition_id` ("" for CONVERT), `index_set` (CONVERT only), `shares` (the raw
amount), `shares_normalized`, `amount_usd` (payout for redeem, else the amount), `price`
(1 on the simulator), `tx_hash`, `title`, `timestamp`, `user`.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from bridge.sim.predexon.protocol import to_json
from bridge.sim.rest import (
    HttpRequest,
    HttpResponse,
    HttpServer,
    PageToken,
    RestFaults,
    WindowLimit,
    page_of,
)

TRADES_PATH = "/v2/polymarket/trades"
ACTIVITY_PATH = "/v2/polymarket/activity"
PLAN_RATES = {"free": 1, "dev": 20, "pro": 100}
MAX_LIMIT = 500
_DAY_S = 86_400


@dataclass
class PredexonRestConfig:
    enabled: bool = True
    port: int = 0
    rate_limits: bool = True
    """Enforce the plans' requests per second."""
    error_shape: str = "docs"
    """"docs": `{"error", "message"}`; "sdk": `{"detail": {"error", "message"}}`."""
    faults: RestFaults = field(default_factory=RestFaults)


class _Error(Exception):
    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error


def trade_row(data: dict[str, Any]) -> dict[str, Any]:
    """The REST trades row of a confirmed `order_filled` event (simulator's rendering)."""
    shares_n = data.get("shares_normalized")
    price = data.get("price")
    amount = None
    if isinstance(shares_n, Decimal) and isinstance(price, Decimal):
        amount = (shares_n * price).quantize(Decimal("0.000001"))
    return {
        "token_id": data.get("token_id"),
        "side": data.get("side"),
        "market_slug": data.get("market_slug"),
        "condition_id": data.get("condition_id"),
        "shares": data.get("shares"),
        "shares_normalized": shares_n,
        "price": price,
        "amount_usd": amount,
        "tx_hash": data.get("tx_hash"),
        "title": data.get("title"),
        "timestamp": data.get("timestamp"),
        "order_hash": data.get("order_hash"),
        "user": data.get("user"),
        "taker": data.get("taker"),
        "is_yes_side": data.get("outcome_index") == 0,
        "outcome_label": data.get("token_label"),
        "fee_usd": data.get("fee"),
        "exchange_version": data.get("version"),
        "builder": data.get("builder"),
        "metadata": data.get("metadata"),
    }


def activity_row(data: dict[str, Any]) -> dict[str, Any]:
    """The REST activity row of an activity event (simulator's rendering)."""
    kind = data["event_type"]
    convert = kind == "conversion"
    amount_n = data.get("amount_normalized")
    usd = data.get("payout_normalized") if kind == "redeem" else amount_n
    row: dict[str, Any] = {
        "side": "CONVERT" if convert else kind.upper(),
        "market_slug": data.get("market_slug"),
        "market_id": None if convert else data.get("market_id"),
        "condition_id": "" if convert else data.get("condition_id"),
        "shares": data.get("amount"),
        "shares_normalized": amount_n,
        "amount_usd": usd,
        "price": Decimal(1),
        "tx_hash": data.get("tx_hash"),
        "title": data.get("title"),
        "timestamp": data.get("timestamp"),
        "user": data.get("user"),
    }
    if convert:
        row["neg_risk_market_id"] = data.get("market_id")
        row["index_set"] = "3"
    return row


_IndexedRow = tuple[int, int, dict[str, Any], dict[str, Any]]
"""(timestamp, ground-truth index, REST row, event)."""


def _sort_key(row: _IndexedRow) -> tuple[int, int]:
    return row[0], row[1]


def _decode_key(key: str) -> PageToken:
    try:
        return PageToken.decode(key)
    except ValueError as exc:
        raise _Error(400, "invalid_pagination_key", "pagination_key is not valid") from exc


class PredexonRest:
    """The REST endpoints of one `PredexonSimulator` (see the module docstring)."""

    def __init__(
        self,
        truth: list[dict[str, Any]],
        keys: dict[str, str],
        revoked: set[str],
        *,
        host: str,
        config: PredexonRestConfig,
        now_s: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.faults = config.faults
        self._truth = truth
        self._keys = keys
        self._revoked = revoked
        self._now_s = now_s
        self._limits: dict[str, WindowLimit] = {}
        self._server = HttpServer(self._handle, host, config.port)
        self._rows: dict[str, list[_IndexedRow]] = {
            "trades": [],
            "activity": [],
        }
        self._indexed = 0

    async def start(self) -> None:
        await self._server.start()

    async def stop(self) -> None:
        await self._server.stop()

    @property
    def url(self) -> str:
        return self._server.url

    def warm(self) -> None:
        """Render the ground truth as REST rows now (otherwise done on the next request)."""
        self._index()

    def _index(self) -> None:
        """Turn newly generated ground truth into REST rows: (timestamp, index, row, event)."""
        truth = self._truth
        for index in range(self._indexed, len(truth)):
            entry = truth[index]
            data = entry["data"]
            if entry["channel"] == "orders":
                if data.get("event_type") == "order_filled" and data.get("status") == "confirmed":
                    row = (data["timestamp"], index, trade_row(data), data)
                    bisect.insort(self._rows["trades"], row, key=_sort_key)
            elif entry["channel"] == "activity":
                row = (data["timestamp"], index, activity_row(data), data)
                bisect.insort(self._rows["activity"], row, key=_sort_key)
        self._indexed = len(truth)

    def _error(self, exc: _Error) -> HttpResponse:
        inner = {"error": exc.error, "message": str(exc)}
        body = {"detail": inner} if self.config.error_shape == "sdk" else inner
        return HttpResponse(exc.status, body, {}, self.faults.slow_page_s)

    def _json(self, body: dict[str, Any]) -> HttpResponse:
        # Decimals as exact JSON numbers, as Predexon writes them.
        return HttpResponse(200, to_json(body).encode(), {}, self.faults.slow_page_s)

    async def _handle(self, request: HttpRequest) -> HttpResponse:
        faults = self.faults
        faults.requests += 1
        try:
            if request.method != "GET" or request.path not in (TRADES_PATH, ACTIVITY_PATH):
                raise _Error(404, "not_found", f"no route {request.method} {request.path}")
            key = request.headers.get("x-api-key", "")
            plan = self._keys.get(key)
            if not key or plan is None or key in self._revoked:
                raise _Error(401, "unauthorized", "missing or invalid API key")
            wait = faults.throttle(self._admit(key, plan))
            if wait is not None:
                response = self._error(_Error(429, "rate_limited", "rate limit exceeded"))
                response.headers = faults.retry_after_headers(wait)
                return response
            status = faults.injected_failure()
            if status is not None:
                raise _Error(status, "internal_error", "simulated server error")
            kind = "trades" if request.path == TRADES_PATH else "activity"
            return self._json(self._page(kind, request))
        except _Error as exc:
            return self._error(exc)

    def _admit(self, key: str, plan: str) -> float | None:
        if not self.config.rate_limits:
            return None
        limit = self._limits.get(key)
        if limit is None:
            limit = self._limits[key] = WindowLimit(PLAN_RATES.get(plan, 1), 1.0)
        return limit.admit()

    def _page(self, kind: str, request: HttpRequest) -> dict[str, Any]:
        param = request.param
        wallet = param("wallet")
        if kind == "activity" and not wallet:
            raise _Error(422, "validation_error", "wallet is required")
        market = {k: param(k) for k in ("market_slug", "condition_id", "token_id")}
        if kind == "activity":
            market.pop("token_id")
        market = {k: v for k, v in market.items() if v}
        builder = param("builder") if kind == "trades" else None
        order = param("order") or "desc"
        if order not in ("asc", "desc"):
            raise _Error(422, "validation_error", "order must be asc or desc")
        if order == "asc" and not market and not wallet:
            raise _Error(400, "invalid_request", "order=asc requires a market or wallet filter")
        limit = _int(param("limit"), "limit", 100)
        if not 1 <= limit <= MAX_LIMIT:
            raise _Error(422, "validation_error", f"limit must be 1..{MAX_LIMIT}")
        start = _int(param("start_time"), "start_time", None)
        end = _int(param("end_time"), "end_time", None)
        if start is None and not market and not wallet and not builder:
            start = int(self._now_s()) - _DAY_S
        min_total: Decimal | None = None
        if param("min_total") and kind == "trades":
            try:
                min_total = Decimal(str(param("min_total")))
            except InvalidOperation as exc:
                raise _Error(422, "validation_error", "min_total must be a number") from exc
        cursor = param("pagination_key")

        def wanted(entry: _IndexedRow) -> bool:
            ts, _index, row, _event = entry
            if (start is not None and ts < start) or (end is not None and ts > end):
                return False
            if any(row.get(k) != v for k, v in market.items()):
                return False
            if wallet and wallet not in (row.get("user"), row.get("taker")):
                return False
            if builder and row.get("builder") != builder:
                return False
            amount = row.get("amount_usd")
            return min_total is None or (amount is not None and amount >= min_total)

        self._index()
        page, after = page_of(
            self._rows[kind],  # sorted by (timestamp, index)
            _sort_key,
            _decode_key(cursor) if cursor else None,
            query="",
            size=limit,
            newest_first=order == "desc",
            faults=self.faults,
            accept=wanted,
        )
        out = [row for _ts, _index, row, _event in page]
        key = after.encode() if after is not None else None
        body_key = "trades" if kind == "trades" else "activities"
        pagination = {
            "limit": limit,
            "count": len(out),
            "has_more": key is not None,
            "pagination_key": key,
        }
        return {body_key: out, "pagination": pagination}


def _int(value: str | None, name: str, default: int | None) -> Any:
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise _Error(422, "validation_error", f"{name} must be an integer") from exc
