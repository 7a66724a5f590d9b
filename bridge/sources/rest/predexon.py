"""Client of Predexon's REST history: `GET /v2/polymarket/trades` and `/activity`.

Wire facts (Predexon's documentation and SDK, 2026):

- Base `https://api.predexon.com`, header `x-api-key`.
- Common parameters: `start_time`, `end_time` (Unix SECONDS; inclusivity not documented),
  `market_slug`, `condition_id`, `limit` 1-500 (default 100), `order` `asc` | `desc`
  (default), `pagination_key` (cursor from the previous page). Trades also take
  `token_id`, `wallet`, `builder`, `min_total`; activity REQUIRES `wallet`.
- On trades, `order=asc` without a market or wallet filter is refused with HTTP 400: only
  `desc` is allowed then. Without any filter the first page covers the last 24 h only, so
  always send `start_time`/`end_time`.
- Responses `{"trades" | "activities": [...], "pagination": {"limit", "count", "has_more",
  "pagination_key"}}`; `pagination_key` is null or absent on the last page.
- Rate: the plan's requests per second (Dev 20/s, Pro 100/s), 429 above it. Error bodies
  `{"error", "message"}` (docs) or `{"detail": {"error", "message"}}` (SDK); 422 is a
  validation error.

Numbers are parsed exactly (`bridge.serde.exact_json.loads`: decimals kept as their text),
so a REST price is written to Avro byte for byte as sent, like the WebSocket's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from bridge.serde.exact_json import loads
from bridge.sources.rest.http import DEFAULT_POLICY, Pacer, RestClient, RetryPolicy
from bridge.sources.rest.page import RestPage, answer_object, page_rows, with_page_token

TRADES_PATH = "/v2/polymarket/trades"
ACTIVITY_PATH = "/v2/polymarket/activity"
MAX_LIMIT = 500
PLAN_RATES = {"free": 1, "dev": 20, "pro": 100}
"""Requests per second per plan (429 above)."""


def predexon_headers(api_key: str) -> Callable[[], Awaitable[Mapping[str, str]]]:
    async def headers() -> Mapping[str, str]:
        return {"x-api-key": api_key}

    return headers


def predexon_parse(body: bytes) -> Any:
    """JSON with exact numbers (for `RestClient(parse=...)`)."""
    return loads(body)


def _page(data: Any, key: str) -> RestPage:
    """The rows under `key` and the next page's key (none once `has_more` is false)."""
    answer = answer_object(data)
    rows = page_rows(answer, key)
    pagination = answer.get("pagination") or {}
    cursor = pagination.get("pagination_key") if isinstance(pagination, dict) else None
    if isinstance(pagination, dict) and pagination.get("has_more") is False:
        cursor = None
    return RestPage(rows, str(cursor) if cursor else None)


class PredexonRestClient:
    """Trades and activity history over one `RestClient` (built with `predexon_parse`).

    Paced client-side to `requests_per_s` (the key's plan rate; None: unpaced). The rate is
    per key: use ONE client per API key.
    """

    def __init__(self, http: RestClient, *, requests_per_s: int | None = PLAN_RATES["dev"]) -> None:
        self.http = http
        self.requests_per_s = requests_per_s
        self._pacer = Pacer(requests_per_s, 1.0) if requests_per_s else None

    async def trades(self, params: Mapping[str, str | int], cursor: str | None) -> RestPage:
        query = with_page_token(params, "pagination_key", cursor)
        data = await self.http.request("GET", TRADES_PATH, params=query, pacer=self._pacer)
        return _page(data, "trades")

    async def activity(self, params: Mapping[str, str | int], cursor: str | None) -> RestPage:
        if not params.get("wallet"):
            raise ValueError("Predexon activity history requires a wallet")
        query = with_page_token(params, "pagination_key", cursor)
        data = await self.http.request("GET", ACTIVITY_PATH, params=query, pacer=self._pacer)
        return _page(data, "activities")

    async def aclose(self) -> None:
        await self.http.aclose()


def predexon_rest_client(
    base_url: str, api_key: str, *, plan: str = "dev", policy: RetryPolicy = DEFAULT_POLICY
) -> PredexonRestClient:
    """The client of one API key, paced to its `plan`'s rate (free, dev, pro; an unknown
    plan, e.g. enterprise, is not paced). `base_url` e.g. `https://api.predexon.com`."""
    http = RestClient(base_url, predexon_headers(api_key), policy=policy, parse=predexon_parse)
    return PredexonRestClient(http, requests_per_s=PLAN_RATES.get(plan))
