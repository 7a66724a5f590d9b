"""REST clients and History against fixed pages in the upstreams' documented wire shapes.

A tiny loopback HTTP server answers each request with the next scripted response, written
by hand from the upstreams' documentation (not by our simulators): camelCase and snake_case
names, int64 as strings, omitted zero-valued enums, the singular `trade` key, both error
body forms, `Retry-After`, Predexon's `pagination` object. The client's waits go to a fake
`sleep` that records them without waiting.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import pytest

from bridge.backfill.exchange_history import ExchangeHistory
from bridge.backfill.history import Page, Unfillable, Window
from bridge.backfill.predexon_history import PredexonHistory
from bridge.mapping.dropcopy import DropCopyMapper
from bridge.mapping.predexon import PredexonMapper
from bridge.serde.avro import Serializer
from bridge.sim.rest import HttpRequest, HttpResponse, HttpServer
from bridge.sources.rest.exchange import ExchangeRestClient, exchange_rest_client
from bridge.sources.rest.http import RestAuthError, RestClient, RestError, RetryPolicy
from bridge.sources.rest.predexon import PredexonRestClient, predexon_parse
from bridge.streams.kinds import KINDS

PARTICIPANT = "firms/acme/users/alice"
ACCOUNT = "firms/acme/accounts/ACM-1"
T0 = 1_780_000_000_000_000  # 2026-05-28T20:26:40Z, in microseconds
T0_DT = dt.datetime(2026, 5, 28, 20, 26, 40, tzinfo=dt.UTC)
WINDOW = Window(T0, T0 + 3_600_000_000)

# -- documented pages ----------------------------------------------------------------------

EXECUTION_FILL = {
    "id": "exe-1",
    "order": {
        "id": "ord-1",
        "type": "ORDER_TYPE_LIMIT",
        "side": "SIDE_BUY",
        "orderQty": "50",
        "symbol": "tec-nfl-sbw-2026-02-08-kc",
        "clordId": "c-1",
        "timeInForce": "TIME_IN_FORCE_GOOD_TILL_CANCEL",
        "account": ACCOUNT,
        "cumQty": "50",
        "avgPx": "525",
        "state": "ORDER_STATE_FILLED",
        "participant": PARTICIPANT,
        "price": "525",
        "insertTime": "2026-05-28T20:26:40.123456Z",
        "priceToQuantityFilled": {"525": "50"},
    },
    "lastShares": "50",
    "lastPx": "525",
    "type": "EXECUTION_TYPE_FILL",
    "transactTime": "2026-05-28T20:26:41.5Z",
    "tradeId": "trd-1",
    "aggressor": True,
    "commissionNotionalCollected": "-12",
    "transactTradeDate": {"year": 2026, "month": 5, "day": 28},
    "blockTradeIndicator": False,
}
# EXECUTION_TYPE_NEW and ORDER_STATE_NEW are zero: omitted, as the exchange does.
EXECUTION_NEW = {
    "id": "exe-2",
    "order": {"id": "ord-2", "symbol": "tec-nfl-sbw-2026-02-08-kc", "account": ACCOUNT},
    "transactTime": "2026-05-28T20:27:00Z",
}
# One edition shows snake_case names.
EXECUTION_SNAKE = {
    "id": "exe-3",
    "order": {"id": "ord-3", "symbol": "tec-nfl-sbw-2026-02-08-kc", "order_qty": "7"},
    "last_shares": "7",
    "last_px": "99",
    "type": "EXECUTION_TYPE_PARTIAL_FILL",
    "transact_time": "2026-05-28T20:28:00Z",
}
TRADE = {
    "id": "trd-1",
    "aggressor": {"id": "exe-1", "transactTime": "2026-05-28T20:26:41.5Z"},
    "passive": {"id": "exe-9", "transactTime": "2026-05-28T20:26:41Z"},
    "tradeType": "TRADE_TYPE_REGULAR",
    "state": "TRADE_STATE_CLEARED",
    "reportingCounterparty": "SIDE_SELL",
    "metadata": {"venue": "pmx"},
}
TRADE_UNDEFINED_STATE = {"id": "trd-2", "aggressor": {"id": "exe-5"}}  # state omitted
LEDGER_ENTRY = {
    "id": "led-1",
    "account": ACCOUNT,
    "symbol": "tec-nfl-sbw-2026-02-08-kc",
    "quantityChange": "50",
    "costChange": "26250",
    "realizedChange": "0",
    "netPosition": "150",
    "cost": "78750",
    "realized": "-300",
    "updateTime": "2026-05-28T20:26:41.5Z",
    "updateBusinessDate": "2026-05-28",
    "description": "fill",
}
LEDGER_ENTRY_SNAKE = {
    "id": "led-2",
    "account": ACCOUNT,
    "symbol": "tec-nfl-sbw-2026-02-08-kc",
    "net_position": "0",
    "cost": "0",
    "realized": "1200",
    "update_time": "2026-05-28T20:30:00Z",
}
EXCHANGE_429 = {"code": 8, "message": "rate limit exceeded", "details": []}

WALLET = "0x56687bf447db6ffa42ffe2204a05edaa20f55839"
PREDEXON_TRADE = (
    '{"token_id": "2174263314346390629056905015582624153", "side": "BUY",'
    ' "market_slug": "will-bitcoin-reach-100k", "condition_id": "0xabc1",'
    ' "shares": 12500000, "shares_normalized": 12.5, "price": 0.535, "amount_usd": 6.6875,'
    ' "tx_hash": "0xtx1", "title": "Will Bitcoin reach $100k?", "timestamp": 1780000100,'
    ' "order_hash": "0xoh1", "user": "' + WALLET + '", "taker": "0xtaker",'
    ' "is_yes_side": true, "outcome_label": "Yes", "fee_usd": 0.0066875,'
    ' "exchange_version": 2, "builder": "0xb1", "metadata": "0xmeta"}'
)
# One documented sample omits `side`.
PREDEXON_TRADE_NO_SIDE = (
    '{"token_id": "21742", "market_slug": "will-bitcoin-reach-100k", "condition_id": "0xabc1",'
    ' "shares": 1000000, "shares_normalized": 1.0, "price": 0.54, "amount_usd": 0.54,'
    ' "tx_hash": "0xtx2", "title": "Will Bitcoin reach $100k?", "timestamp": 1780000200,'
    ' "order_hash": "0xoh2", "user": "' + WALLET + '", "taker": "0xtaker2",'
    ' "is_yes_side": false, "outcome_label": "No", "fee_usd": 0, "exchange_version": 1,'
    ' "builder": null, "metadata": null}'
)
# Outside the window (one second after it): asked for, then filtered out.
PREDEXON_TRADE_LATE = PREDEXON_TRADE.replace("1780000100", "1780003601").replace("0xtx1", "0xtx9")
ACTIVITY_SPLIT = (
    '{"side": "SPLIT", "market_slug": "will-bitcoin-reach-100k", "market_id": "512345",'
    ' "condition_id": "0xabc1", "shares": 5000000, "shares_normalized": 5.0,'
    ' "amount_usd": 5.0, "price": 1, "tx_hash": "0xtx3", "title": "Will Bitcoin reach $100k?",'
    ' "timestamp": 1780000300, "user": "' + WALLET + '"}'
)
ACTIVITY_CONVERT = (
    '{"side": "CONVERT", "market_slug": "fed-decision", "market_id": null,'
    ' "neg_risk_market_id": "0xnr1", "condition_id": "", "index_set": "3",'
    ' "shares": 2000000, "shares_normalized": 2.0, "amount_usd": 2.0, "price": 1,'
    ' "tx_hash": "0xtx4", "title": "Fed decision", "timestamp": 1780000400,'
    ' "user": "' + WALLET + '"}'
)


def _pagination(count: int, key: str | None, *, omit_key: bool = False) -> str:
    fields = {"limit": 500, "count": count, "has_more": key is not None}
    if not omit_key:
        fields["pagination_key"] = key
    return json.dumps(fields)


# -- harness -------------------------------------------------------------------------------


class Script:
    """Answers requests with scripted responses, in order; records the requests."""

    def __init__(self, responses: list[HttpResponse]) -> None:
        self.responses = list(responses)
        self.requests: list[HttpRequest] = []

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        self.requests.append(request)
        return self.responses.pop(0)

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.body) for r in self.requests]


def ok(body: Any) -> HttpResponse:
    return HttpResponse(200, body if not isinstance(body, str) else body.encode())


def run(
    script: Script,
    body: Callable[[str, list[float]], Awaitable[Any]],
) -> tuple[Any, list[float]]:
    async def main() -> tuple[Any, list[float]]:
        server = HttpServer(script)
        await server.start()
        waits: list[float] = []
        try:
            return await body(server.url, waits), waits
        finally:
            await server.stop()

    return asyncio.run(main())


def fake_sleep(waits: list[float]) -> Callable[[float], Awaitable[None]]:
    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    return sleep


def exchange_http(url: str, waits: list[float], **policy: Any) -> RestClient:
    async def headers() -> Mapping[str, str]:
        return {"Authorization": "Bearer t0k", "x-participant-id": PARTICIPANT}

    return RestClient(
        url, headers, policy=RetryPolicy(**policy), sleep=fake_sleep(waits), rng=lambda: 0.5
    )


def predexon_http(url: str, waits: list[float], **policy: Any) -> RestClient:
    async def headers() -> Mapping[str, str]:
        return {"x-api-key": "k3y"}

    return RestClient(
        url,
        headers,
        policy=RetryPolicy(**policy),
        sleep=fake_sleep(waits),
        rng=lambda: 0.5,
        parse=predexon_parse,
    )


async def collect(history: Any, window: Window, cursor: str | None = None) -> list[Page]:
    return [page async for page in history.pages(window, cursor)]


def decode(schema: str, value: bytes) -> Any:
    return Serializer(schema, b"").decode(value)


# -- exchange ------------------------------------------------------------------------------


def test_executions_pages_snake_case_omitted_enums_and_429_in_both_forms() -> None:
    script = Script(
        [
            HttpResponse(429, EXCHANGE_429, {"Retry-After": "3"}),
            HttpResponse(429, EXCHANGE_429),  # no Retry-After: at least 1 s
            ok(
                {"executions": [EXECUTION_FILL, EXECUTION_NEW], "nextPageToken": "p2", "eof": False}
            ),
            HttpResponse(503, {"code": 14, "message": "unavailable", "details": []}),
            # the last page: eof, whatever the token says
            ok({"executions": [EXECUTION_SNAKE], "nextPageToken": "ignored", "eof": True}),
        ]
    )
    mapper = DropCopyMapper(KINDS["executions"], "dc-exec", "executions", b"")

    async def body(url: str, waits: list[float]) -> list[Page]:
        client = ExchangeRestClient(exchange_http(url, waits))
        history = ExchangeHistory(
            client, mapper, participant_id=PARTICIPANT, symbols=["tec-nfl-sbw-2026-02-08-kc"]
        )
        return await collect(history, WINDOW)

    pages, waits = run(script, body)
    assert [len(p.records) for p in pages] == [2, 1]
    assert pages[-1].cursor is None and pages[0].cursor is not None
    assert not any(p.dead_letters for p in pages)
    # Retry-After is what the server asked for (plus a jitter of at most a tenth, 0.5 of it
    # here), not an exponential backoff on top; without it, backoff with a 1 s floor.
    assert waits[0] == pytest.approx(3.15) and waits[1] >= 1.0
    requests = script.bodies()
    assert requests[0] == {
        "startTime": "2026-05-28T20:26:40Z",
        "endTime": "2026-05-28T21:26:40Z",
        "pageSize": 1000,
        "symbol": "tec-nfl-sbw-2026-02-08-kc",
    }
    assert requests[-1]["pageToken"] == "p2"
    headers = script.requests[0].headers
    assert headers["authorization"] == "Bearer t0k"
    assert headers["x-participant-id"] == PARTICIPANT
    records = [r for p in pages for r in p.records]
    assert [r.event_id for r in records] == ["exe-1", "exe-2", "exe-3"]
    assert records[0].key == b"ord-1"
    assert records[0].event_time_us == T0 + 1_500_000
    fill, new, snake = (decode(mapper.kind.schema, r.value) for r in records)
    assert fill["execution"]["type"] == "EXECUTION_TYPE_FILL"
    assert fill["execution"]["last_px"] == 525
    assert fill["execution"]["commission_notional_collected"] == -12
    # map<int64,int64>: a JSON object with string keys, an array of entries in Avro
    assert fill["execution"]["order"]["price_to_quantity_filled"] == [{"key": 525, "value": 50}]
    assert new["execution"]["type"] == "EXECUTION_TYPE_NEW"  # omitted = the zero value
    assert new["execution"]["order"]["state"] == "ORDER_STATE_NEW"
    assert snake["execution"]["last_shares"] == 7
    assert snake["execution"]["order"]["order_qty"] == 7


def test_trades_singular_key_no_eof_and_undefined_state() -> None:
    script = Script(
        [
            ok({"trade": [TRADE], "nextPageToken": "t2"}),
            ok({"trade": [TRADE_UNDEFINED_STATE]}),  # no token: the end (trades have no eof)
        ]
    )
    mapper = DropCopyMapper(KINDS["trade_captures"], "dc-trades", "trades", b"")

    async def body(url: str, waits: list[float]) -> list[Page]:
        client = ExchangeRestClient(exchange_http(url, waits))
        return await collect(ExchangeHistory(client, mapper, participant_id=PARTICIPANT), WINDOW)

    pages, _ = run(script, body)
    ids = [r.event_id for p in pages for r in p.records]
    assert ids == ["trd-1|TRADE_STATE_CLEARED", "trd-2|TRADE_STATE_UNDEFINED"]
    assert "symbol" not in script.bodies()[0]  # no symbols subscribed: all
    value = decode(mapper.kind.schema, pages[0].records[0].value)
    assert value["trade"]["metadata"] == {"venue": "pmx"}
    assert value["trade"]["reporting_counterparty"] == "SIDE_SELL"


def test_ledger_entries_become_position_changes() -> None:
    script = Script(
        [
            ok({"entries": [LEDGER_ENTRY], "nextPageToken": "l2", "eof": False}),
            ok({"entries": [LEDGER_ENTRY_SNAKE], "nextPageToken": "", "eof": True}),
        ]
    )
    mapper = DropCopyMapper(KINDS["position_changes"], "dc-pos", "positions", b"")

    async def body(url: str, waits: list[float]) -> list[Page]:
        client = ExchangeRestClient(exchange_http(url, waits))
        history = ExchangeHistory(client, mapper, participant_id=PARTICIPANT, accounts=[ACCOUNT])
        return await collect(history, WINDOW)

    pages, _ = run(script, body)
    first = script.requests[0]
    assert first.method == "GET"
    assert first.param("account") == ACCOUNT and first.param("pageSize") == "1000"
    assert script.requests[1].param("pageToken") == "l2"
    records = [r for p in pages for r in p.records]
    assert records[0].event_id == f"{ACCOUNT}|tec-nfl-sbw-2026-02-08-kc|{T0 + 1_500_000}"
    value = decode(mapper.kind.schema, records[0].value)["position_change"]
    assert value["change_time"] == T0_DT + dt.timedelta(seconds=1.5)
    position = value["position"]
    assert (position["net_position"], position["cost"], position["realized"]) == (150, 78750, -300)
    assert position["update_time"] == T0_DT + dt.timedelta(seconds=1.5)
    assert (position["qty_bought"], position["bod_position"], position["expired"]) == (0, 0, False)
    snake = decode(mapper.kind.schema, records[1].value)["position_change"]["position"]
    assert snake["realized"] == 1200


def test_exchange_errors_auth_and_out_of_range_and_retries_exhausted() -> None:
    mapper = DropCopyMapper(KINDS["executions"], "dc-exec", "executions", b"")
    forbidden = {"code": 7, "message": "missing scope read:reports", "details": []}
    out_of_range = {"code": 11, "message": "startTime is older than the retention", "details": []}
    script = Script(
        [
            HttpResponse(403, forbidden),
            HttpResponse(400, out_of_range),
            *[HttpResponse(502, {"code": 14, "message": "bad gateway", "details": []})] * 3,
        ]
    )

    async def body(url: str, waits: list[float]) -> list[str]:
        client = ExchangeRestClient(exchange_http(url, waits, max_attempts=3))
        history = ExchangeHistory(client, mapper, participant_id=PARTICIPANT)
        seen = []
        for expected in (RestAuthError, Unfillable, RestError):
            with pytest.raises(expected) as info:
                await collect(history, WINDOW)
            seen.append(str(info.value))
        return seen

    (forbidden_msg, refused, exhausted), waits = run(script, body)
    assert "HTTP 403" in forbidden_msg and "missing scope read:reports" in forbidden_msg
    assert "startTime is older than the retention" in refused
    assert "gave up after 3 failed attempts" in exhausted and "bad gateway" in exhausted
    assert len(waits) == 2


def test_exchange_unfillable_subscriptions() -> None:
    async def body(url: str, waits: list[float]) -> list[str]:
        client = ExchangeRestClient(exchange_http(url, waits))
        reasons = []
        for kind, kwargs in (
            ("instrument_states", {}),
            ("executions", {"firms": ["firms/other"]}),
            ("position_changes", {}),
        ):
            mapper = DropCopyMapper(KINDS[kind], "s", "t", b"")
            history = ExchangeHistory(client, mapper, participant_id=PARTICIPANT, **kwargs)
            with pytest.raises(Unfillable) as info:
                await collect(history, WINDOW)
            reasons.append(str(info.value))
        return reasons

    reasons, _ = run(Script([]), body)
    assert "instrument state" in reasons[0]
    assert "firms filter" in reasons[1]
    assert "per account" in reasons[2]


# -- Predexon ------------------------------------------------------------------------------


def test_predexon_trades_pages_both_error_shapes_and_identity() -> None:
    script = Script(
        [
            HttpResponse(429, {"detail": {"error": "rate_limited", "message": "slow down"}}),
            HttpResponse(503, {"error": "unavailable", "message": "try later"}),
            ok(
                '{"trades": ['
                + PREDEXON_TRADE
                + "], "
                + '"pagination": '
                + _pagination(1, "cursor-2")
                + "}"
            ),
            ok(
                '{"trades": ['
                + PREDEXON_TRADE_NO_SIDE
                + ", "
                + PREDEXON_TRADE_LATE
                + '], "pagination": '
                + _pagination(2, None, omit_key=True)
                + "}"
            ),
        ]
    )
    filters = {"users": [WALLET], "status": "confirmed"}
    mapper = PredexonMapper("orders", "px-trades", "trades", b"", json.dumps(filters))

    async def body(url: str, waits: list[float]) -> list[Page]:
        client = PredexonRestClient(predexon_http(url, waits))
        return await collect(PredexonHistory(client, mapper, filters), WINDOW)

    pages, waits = run(script, body)
    assert waits[0] >= 1.0
    first = script.requests[0]
    assert first.headers["x-api-key"] == "k3y"
    assert first.param("wallet") == WALLET and first.param("order") == "asc"
    assert first.param("start_time") == str(T0 // 1_000_000 - 1)
    assert first.param("end_time") == str((T0 + 3_600_000_000) // 1_000_000 + 1)
    assert first.param("limit") == "500"
    assert script.requests[-1].param("pagination_key") == "cursor-2"
    records = [r for p in pages for r in p.records]
    assert len(records) == 2  # the late row is outside the window
    assert records[0].event_id.startswith("order_filled:confirmed-rest:0xtx1:0xoh1:")
    assert records[0].key == b"0xabc1"
    assert records[0].event_time_us == 1_780_000_100_000_000
    value = decode(mapper.channel.schema, records[0].value)
    assert value["status"] == "confirmed" and value["event_type"] == "order_filled"
    assert value["price"] == "0.535" and value["shares_normalized"] == "12.5"  # exact text
    assert value["fee"] == "0.0066875" and value["version"] == 2
    assert value["token_label"] == "Yes" and value["outcome"] == "Yes"
    assert value["log_index"] is None and value["role"] is None
    assert value["subscription_id"] is None and value["filters"] == json.dumps(filters)
    assert json.loads(value["extra"]) == {"amount_usd": 6.6875, "is_yes_side": True}
    assert decode(mapper.channel.schema, records[1].value)["side"] is None


def test_predexon_activity_split_and_convert() -> None:
    script = Script(
        [
            ok(
                '{"activities": ['
                + ACTIVITY_SPLIT
                + ", "
                + ACTIVITY_CONVERT
                + '], "pagination": '
                + _pagination(2, None)
                + "}"
            )
        ]
    )
    filters = {"users": [WALLET]}
    mapper = PredexonMapper("activity", "px-act", "activity", b"", json.dumps(filters))

    async def body(url: str, waits: list[float]) -> list[Page]:
        client = PredexonRestClient(predexon_http(url, waits))
        return await collect(PredexonHistory(client, mapper, filters), WINDOW)

    pages, _ = run(script, body)
    assert script.requests[0].path == "/v2/polymarket/activity"
    split, convert = (decode(mapper.channel.schema, r.value) for r in pages[0].records)
    assert split["event_type"] == "split" and split["condition_id"] == "0xabc1"
    assert split["event_id"].startswith("split:rest:0xtx3:")
    assert convert["event_type"] == "conversion" and convert["condition_id"] is None
    assert convert["market_id"] is None
    assert json.loads(convert["extra"])["neg_risk_market_id"] == "0xnr1"
    assert pages[0].cursor is None


def test_predexon_wildcard_is_desc_and_unfillable_filters() -> None:
    script = Script([ok('{"trades": [], "pagination": ' + _pagination(0, None) + "}")])

    async def body(url: str, waits: list[float]) -> list[str]:
        client = PredexonRestClient(predexon_http(url, waits))
        wildcard = {"market_slugs": ["*"]}
        mapper = PredexonMapper("orders", "s", "t", b"", json.dumps(wildcard))
        await collect(PredexonHistory(client, mapper, wildcard), WINDOW)
        reasons = []
        for channel, filters in (
            ("orders", {"users": [WALLET], "status": "pending"}),
            ("activity", {"condition_ids": ["0xabc1"]}),
            ("orderbook", {"token_ids": ["1"]}),
        ):
            mapper = PredexonMapper(channel, "s", "t", b"", json.dumps(filters))
            with pytest.raises(Unfillable) as info:
                await collect(PredexonHistory(client, mapper, filters), WINDOW)
            reasons.append(str(info.value))
        return reasons

    reasons, _ = run(script, body)
    request = script.requests[0]
    assert request.param("order") == "desc"
    assert request.param("wallet") is None and request.param("market_slug") is None
    assert "pending" in reasons[0] and "wallet" in reasons[1] and "orderbook" in reasons[2]


def test_cursor_resumes_at_the_next_page() -> None:
    page = '{"trades": [' + PREDEXON_TRADE + '], "pagination": ' + _pagination(1, "k2") + "}"
    end = ok('{"trades": [], "pagination": {"pagination_key": null}}')
    script = Script([ok(page), end, end])
    filters = {"condition_ids": ["0xabc1", "0xdef2"]}
    mapper = PredexonMapper("orders", "s", "t", b"", json.dumps(filters))

    async def body(url: str, waits: list[float]) -> list[Page]:
        client = PredexonRestClient(predexon_http(url, waits))
        history = PredexonHistory(client, mapper, filters)
        pages = history.pages(WINDOW, None)
        first = await anext(pages)
        await pages.aclose()  # a crash after the first page was committed
        return [first, *await collect(history, WINDOW, first.cursor)]

    pages, _ = run(script, body)
    assert script.requests[0].param("condition_id") == "0xabc1"
    resumed = script.requests[1]
    assert resumed.param("condition_id") == "0xabc1" and resumed.param("pagination_key") == "k2"
    assert script.requests[2].param("condition_id") == "0xdef2"
    assert script.requests[2].param("pagination_key") is None
    assert pages[1].cursor is not None and '"part":1' in pages[1].cursor
    assert pages[2].cursor is None and len(pages) == 3


def test_unknown_enum_name_is_a_dead_letter_not_a_zero_value() -> None:
    future = {
        "id": "exe-7",
        "order": {"id": "ord-7", "symbol": "s", "newOrderField": {"x": 1}},
        "type": "EXECUTION_TYPE_SOMETHING_NEW",
        "blockTradeIndicator": True,
    }
    script = Script([ok({"executions": [EXECUTION_NEW, future], "eof": True})])
    mapper = DropCopyMapper(KINDS["executions"], "dc-exec", "executions", b"")

    async def body(url: str, waits: list[float]) -> list[Page]:
        client = ExchangeRestClient(exchange_http(url, waits))
        return await collect(ExchangeHistory(client, mapper, participant_id=PARTICIPANT), WINDOW)

    pages, _ = run(script, body)
    assert [r.event_id for r in pages[0].records] == ["exe-2"]
    (dead,) = pages[0].dead_letters
    assert json.loads(dead.raw) == future and "EXECUTION_TYPE_SOMETHING_NEW" in dead.error
    assert dead.target_topic == "executions"


def test_a_401_mints_a_new_token_once() -> None:
    class Tokens:
        def __init__(self) -> None:
            self.minted = 0

        async def token(self) -> str:
            self.minted += 1
            return f"token-{self.minted}"

        def invalidate(self) -> None:
            pass

    unauthenticated = {"code": 16, "message": "access token expired", "details": []}
    script = Script([HttpResponse(401, unauthenticated), ok({"trade": []})])
    tokens = Tokens()

    async def body(url: str, waits: list[float]) -> Any:
        client = exchange_rest_client(url, tokens, PARTICIPANT)
        try:
            return await client.search_trades({}, None)
        finally:
            await client.aclose()

    page, _ = run(script, body)
    assert page.rows == [] and page.next_token is None
    assert [r.headers["authorization"] for r in script.requests] == [
        "Bearer token-1",
        "Bearer token-2",
    ]


def test_parse_into_round_trips_every_generated_record_in_both_name_styles() -> None:
    from google.protobuf import json_format

    from bridge.sim.market import MarketGenerator
    from bridge.sources.rest.proto_json import parse_into

    market = MarketGenerator(seed=4)
    messages = [r.message for n in range(1_200) for r in market.step(T0 + n * 1_000)]
    assert len(messages) > 1_200
    for message in messages:
        for snake in (False, True):
            row = json_format.MessageToDict(message, preserving_proto_field_name=snake)
            parsed = type(message)()
            parse_into(row, parsed)
            assert parsed == message, row


def _bridge_rest_clients(exchange_url: str, plan: str, tokens: Any) -> Any:
    """The REST clients as the running bridge builds them (`app.py`, `commands/backfill`)."""
    from bridge.backfill.rest_clients import RestClients
    from bridge.config import Settings

    settings = Settings.model_validate(
        {
            "dropcopy": {"participant_id": PARTICIPANT},
            "predexon": {"plan": plan},
            "backfill": {"exchange_url": exchange_url, "predexon_url": "http://127.0.0.1:9"},
        }
    )
    return RestClients(settings, lambda: tokens, lambda: "key")


def test_the_bridges_exchange_client_mints_a_new_token_on_a_401() -> None:
    """Through the wiring the bridge runs: a 401 re-mints the token and retries once."""

    class Tokens:
        def __init__(self) -> None:
            self.minted = 0
            self.invalidated = 0

        async def token(self) -> str:
            self.minted += 1
            return f"token-{self.minted}"

        def invalidate(self) -> None:
            self.invalidated += 1

    unauthenticated = {"code": 16, "message": "access token expired", "details": []}
    script = Script([HttpResponse(401, unauthenticated), ok({"trade": []})])
    tokens = Tokens()

    async def body(url: str, waits: list[float]) -> Any:
        clients = _bridge_rest_clients(url, "dev", tokens)
        try:
            return await clients.exchange_client().search_trades({}, None)
        finally:
            await clients.aclose()

    page, _ = run(script, body)
    assert page.rows == []
    assert tokens.invalidated == 1
    assert [r.headers["authorization"] for r in script.requests] == [
        "Bearer token-1",
        "Bearer token-2",
    ]


@pytest.mark.parametrize("plan", ["dev", "pro"])
def test_the_bridges_predexon_client_is_paced_to_the_configured_plan(plan: str) -> None:
    from bridge.sources.rest.predexon import PLAN_RATES

    async def body() -> int | None:
        clients = _bridge_rest_clients("http://127.0.0.1:9", plan, None)
        try:
            return clients.predexon_client().requests_per_s  # type: ignore[no-any-return]
        finally:
            await clients.aclose()

    assert asyncio.run(body()) == PLAN_RATES[plan]
