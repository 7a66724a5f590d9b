"""Client of the exchange's REST history: Report API searches and the position ledger.

Wire facts (the exchange's REST documentation, 2026 editions):

- Base URL `https://api.{preprod|prod}.polymarketexchange.com` (configuration). Headers
  `Authorization: Bearer <token>` (the same Auth0 tokens as gRPC) and `x-participant-id:
  firms/<F>/users/<U>`; scope `read:reports` for searches, `read:positions` for the ledger.
- JSON is the protobuf JSON mapping of the gRPC messages: lowerCamelCase names (one edition
  shows snake_case: protobuf's parser accepts both), int64 as strings, RFC 3339 times,
  enums by name, zero-valued enums omitted.
- `POST /v1/report/executions/search` body `pageSize`, `pageToken`, `startTime`, `endTime`,
  `symbol` (one), `accounts`, ... -> `{"executions": [...], "nextPageToken", "eof"}`.
- `POST /v1/report/trades/search` -> `{"trade": [...], "nextPageToken"}`: the list key is
  singular and there is no `eof`.
- `GET /v1/positions/ledger?account=&symbol=&startTime=&endTime=&pageSize=&pageToken=`
  (`account` required; `pageSize` at most 1000) -> `{"entries": [...], "nextPageToken",
  "eof"}`. History starts 2026-05-01T00:00:00Z (earlier times are clamped).
- Pagination: repeat with `pageToken` until `nextPageToken` is empty (or `eof`). Whether
  `startTime`/`endTime` are inclusive is not published: we send the window as is and the
  caller drops repeats by id.
- Limits: searches 12 requests/min per firm and endpoint; the ledger about 30/min (0.5/s,
  burst 5). Over it: HTTP 429 `{"code":8,"message":"rate limit exceeded","details":[]}`;
  the shared `RestClient` waits and retries.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from bridge.sources.auth import TokenProvider
from bridge.sources.rest.http import DEFAULT_POLICY, Pacer, RestClient, RetryPolicy
from bridge.sources.rest.page import RestPage, answer_object, page_rows, with_page_token

EXECUTIONS_PATH = "/v1/report/executions/search"
TRADES_PATH = "/v1/report/trades/search"
LEDGER_PATH = "/v1/positions/ledger"
LEDGER_MAX_PAGE_SIZE = 1000
SEARCH_PACING = (12, 61.0)
"""Documented: 12 requests/min per firm and search endpoint. Paced over 61 s: the server
starts its window when a request arrives, later than we send it, so pacing at exactly 60 s
meets a 429 now and then."""
LEDGER_PACING = (5, 10.5)
"""Documented: about 30/min, 0.5/s with burst 5: at most 5 per 10 s (plus a margin)."""


def exchange_headers(
    tokens: TokenProvider, participant_id: str
) -> Callable[[], Awaitable[Mapping[str, str]]]:
    """Headers of every exchange REST call: a fresh bearer token and the participant id."""

    async def headers() -> Mapping[str, str]:
        return {
            "Authorization": f"Bearer {await tokens.token()}",
            "x-participant-id": participant_id,
        }

    return headers


def _page(data: Any, *keys: str, has_eof: bool) -> RestPage:
    """The rows under the first of `keys` and the next page's token (none after `eof`)."""
    answer = answer_object(data)
    token = answer.get("nextPageToken") or answer.get("next_page_token") or None
    if has_eof and answer.get("eof") is True:
        token = None
    return RestPage(page_rows(answer, *keys), str(token) if token else None)


class ExchangeRestClient:
    """Report API searches and the position ledger over one `RestClient`.

    Each endpoint is paced client-side to its documented limit ((requests, per seconds);
    None: unpaced). The limits are per firm: use ONE client per firm, whatever number of
    streams it backfills.
    """

    def __init__(
        self,
        http: RestClient,
        *,
        search_pacing: tuple[int, float] | None = SEARCH_PACING,
        ledger_pacing: tuple[int, float] | None = LEDGER_PACING,
    ) -> None:
        self.http = http
        self._pacers = {
            path: Pacer(*pacing) if pacing is not None else None
            for path, pacing in (
                (EXECUTIONS_PATH, search_pacing),
                (TRADES_PATH, search_pacing),
                (LEDGER_PATH, ledger_pacing),
            )
        }

    async def search_executions(self, query: Mapping[str, Any], page_token: str | None) -> RestPage:
        """One page of `POST /v1/report/executions/search` (`query`: camelCase fields)."""
        body = with_page_token(query, "pageToken", page_token)
        data = await self.http.request(
            "POST", EXECUTIONS_PATH, body=body, pacer=self._pacers[EXECUTIONS_PATH]
        )
        return _page(data, "executions", has_eof=True)

    async def search_trades(self, query: Mapping[str, Any], page_token: str | None) -> RestPage:
        """One page of `POST /v1/report/trades/search` (rows under `trade`, singular)."""
        body = with_page_token(query, "pageToken", page_token)
        data = await self.http.request(
            "POST", TRADES_PATH, body=body, pacer=self._pacers[TRADES_PATH]
        )
        # "trade" is the documented key; "trades" is accepted should an edition pluralise it.
        return _page(data, "trade", "trades", has_eof=False)

    async def ledger(self, params: Mapping[str, str | int], page_token: str | None) -> RestPage:
        """One page of `GET /v1/positions/ledger` (`params`: account, symbol, startTime, ...)."""
        query = with_page_token(params, "pageToken", page_token)
        data = await self.http.request(
            "GET", LEDGER_PATH, params=query, pacer=self._pacers[LEDGER_PATH]
        )
        return _page(data, "entries", has_eof=True)

    async def aclose(self) -> None:
        await self.http.aclose()


def exchange_rest_client(
    base_url: str,
    tokens: TokenProvider,
    participant_id: str,
    *,
    policy: RetryPolicy = DEFAULT_POLICY,
) -> ExchangeRestClient:
    """The client of one firm: bearer tokens from `tokens` (re-minted once on a 401),
    `x-participant-id`, documented pacing. `base_url` e.g.
    `https://api.prod.polymarketexchange.com`."""
    http = RestClient(
        base_url,
        exchange_headers(tokens, participant_id),
        policy=policy,
        on_unauthorized=tokens.invalidate,
    )
    return ExchangeRestClient(http)
