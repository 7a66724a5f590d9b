"""The simulators' REST history: pagination, rate limits, auth, retention, Predexon's rules."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx2
from google.protobuf import json_format

from bridge.serde.exact_json import loads
from bridge.sim import predexon as px
from bridge.sim.dropcopy import DropCopySimulator, SimConfig
from bridge.sim.dropcopy.rest import RATE_LIMITED, RestConfig
from bridge.sim.predexon.rest import PredexonRestConfig, activity_row, trade_row
from bridge.sim.rest import RestFaults
from tests.bridge_harness import until

FIRM = "firms/acme-capital"
PARTICIPANT = f"{FIRM}/users/alice"
ACCOUNT = f"{FIRM}/accounts/ACM-1"
UNLIMITED = RestConfig(search_limit=None, ledger_limit=None)


@asynccontextmanager
async def dropcopy(
    config: SimConfig,
) -> AsyncIterator[tuple[DropCopySimulator, httpx2.AsyncClient]]:
    sim = DropCopySimulator(config)
    await sim.start()
    assert sim.rest is not None
    try:
        async with httpx2.AsyncClient(base_url=sim.rest.url, timeout=15) as http:
            yield sim, http
    finally:
        await sim.stop()


def auth(sim: DropCopySimulator, *scopes: str, participant: str = PARTICIPANT) -> dict[str, str]:
    token = sim.issue_token(scopes or ("read:reports", "read:positions"))
    return {"Authorization": f"Bearer {token}", "x-participant-id": participant}


async def walk(
    fetch: Callable[[str | None], Awaitable[httpx2.Response]], key: str, eof: bool
) -> tuple[list[dict[str, Any]], int]:
    """Every row of a pagination, and the number of pages."""
    rows: list[dict[str, Any]] = []
    token: str | None = None
    pages = 0
    while True:
        response = await fetch(token)
        assert response.status_code == 200, response.text
        data = response.json()
        pages += 1
        rows += data.get(key, [])
        token = data.get("nextPageToken") or None
        if eof:
            assert data["eof"] is (token is None)
        else:
            assert "eof" not in data
        if token is None:
            return rows, pages


def test_searches_and_ledger_paginate_over_the_journal_exactly() -> None:
    async def main() -> None:
        async with dropcopy(SimConfig(seed=3, prefill=2_500, rest=UNLIMITED)) as (sim, http):
            headers = auth(sim)
            for path, stream, key, eof in (
                ("/v1/report/executions/search", "executions", "executions", True),
                ("/v1/report/trades/search", "trade_captures", "trade", False),
            ):

                def fetch(token: str | None, path: str = path) -> Awaitable[httpx2.Response]:
                    # snake_case request body: accepted like camelCase
                    body = {"page_size": 37} | ({"page_token": token} if token else {})
                    return http.post(path, json=body, headers=headers)

                rows, pages = await walk(fetch, key, eof)
                truth = [
                    json_format.MessageToDict(m) for m in sim.ground_truth(stream, firms=[FIRM])
                ]
                assert rows == truth and pages == -(-len(truth) // 37)
                assert all("type" not in r or r["type"] != "EXECUTION_TYPE_NEW" for r in rows)
                assert isinstance(rows[0]["id"], str)

            newest = await http.post(
                "/v1/report/executions/search", json={"newestFirst": True}, headers=headers
            )
            truth = sim.ground_truth("executions", firms=[FIRM])
            assert [r["id"] for r in newest.json()["executions"]] == [m.id for m in truth][::-1][
                :100
            ]

            def ledger(token: str | None) -> Awaitable[httpx2.Response]:
                params = {"account": ACCOUNT, "pageSize": "50"}
                return http.get(
                    "/v1/positions/ledger",
                    params=params | ({"pageToken": token} if token else {}),
                    headers=headers,
                )

            entries, _ = await walk(ledger, "entries", True)
            changes = [
                c for c in sim.ground_truth("position_changes") if c.position.account == ACCOUNT
            ]
            assert len(entries) == len(changes) > 0
            net = {}
            for entry, change in zip(entries, changes, strict=True):
                p = change.position
                assert entry["netPosition"] == str(p.net_position)
                assert (entry["cost"], entry["realized"]) == (str(p.cost), str(p.realized))
                assert entry["updateTime"] == change.change_time.ToJsonString()
                before = net.get(p.symbol, 0)
                assert int(entry["quantityChange"]) == p.net_position - before
                net[p.symbol] = p.net_position

    asyncio.run(main())


def test_rate_limits_per_endpoint_with_the_documented_body() -> None:
    async def main() -> None:
        faults = RestFaults(retry_after_s=1.0)
        async with dropcopy(SimConfig(seed=1, prefill=200, rest=RestConfig(faults=faults))) as (
            sim,
            http,
        ):
            headers = auth(sim)
            search = "/v1/report/executions/search"
            statuses = [
                (await http.post(search, json={}, headers=headers)).status_code for _ in range(12)
            ]
            assert statuses == [200] * 12
            limited = await http.post(search, json={}, headers=headers)
            assert limited.status_code == 429
            assert (
                limited.json()
                == RATE_LIMITED
                == {
                    "code": 8,
                    "message": "rate limit exceeded",
                    "details": [],
                }
            )
            assert int(limited.headers["retry-after"]) >= 50  # the window is a minute
            # per endpoint: the trades search has its own 12
            trades = await http.post("/v1/report/trades/search", json={}, headers=headers)
            assert trades.status_code == 200
            # and per firm: another firm is not limited by acme's requests
            other = auth(sim, participant="firms/bluefin-trading/users/bob")
            assert (await http.post(search, json={}, headers=other)).status_code == 200
            # the ledger: burst 5, then 0.5/s
            params = {"account": ACCOUNT}
            ledger = [
                (await http.get("/v1/positions/ledger", params=params, headers=headers)).status_code
                for _ in range(6)
            ]
            assert ledger == [200] * 5 + [429]

    asyncio.run(main())


def test_auth_scopes_participant_and_arguments() -> None:
    async def main() -> None:
        async with dropcopy(SimConfig(seed=1, prefill=100, rest=UNLIMITED)) as (sim, http):
            search = "/v1/report/executions/search"

            async def status(
                method: str, path: str, headers: dict[str, str], **kw: Any
            ) -> tuple[int, int]:
                response = await http.request(method, path, headers=headers, **kw)
                return response.status_code, response.json()["code"]

            assert await status("POST", search, {"x-participant-id": PARTICIPANT}, json={}) == (
                401,
                16,
            )
            bad = {"Authorization": "Bearer nope", "x-participant-id": PARTICIPANT}
            assert await status("POST", search, bad, json={}) == (401, 16)
            dropcopy_only = auth(sim, "read:dropcopy", "read:positions")
            assert await status("POST", search, dropcopy_only, json={}) == (403, 7)
            no_participant = {"Authorization": auth(sim)["Authorization"]}
            assert await status("POST", search, no_participant, json={}) == (400, 3)
            bound = sim.issue_token(["read:reports"], participant="firms/acme-capital/users/carol")
            other_user = {"Authorization": f"Bearer {bound}", "x-participant-id": PARTICIPANT}
            assert await status("POST", search, other_user, json={}) == (403, 7)
            assert await status("POST", search, auth(sim), json={"pageSize": 1001}) == (400, 3)
            ledger = "/v1/positions/ledger"
            reports_only = auth(sim, "read:reports")
            assert await status("GET", ledger, reports_only, params={"account": ACCOUNT}) == (
                403,
                7,
            )
            assert await status("GET", ledger, auth(sim)) == (400, 3)  # account is required
            foreign = {"account": "firms/bluefin-trading/accounts/BLU-1"}
            assert await status("GET", ledger, auth(sim), params=foreign) == (403, 7)

    asyncio.run(main())


def test_retention_clamps_or_refuses() -> None:
    async def main() -> None:
        rest = RestConfig(search_limit=None, ledger_limit=None, retention_s=1.0)
        async with dropcopy(SimConfig(seed=2, prefill=2_000, start_time_us=0, rest=rest)) as (
            sim,
            http,
        ):
            assert sim.rest is not None
            times = [t for _, t, _ in sim.ground_truth_records("executions", firms=[FIRM])]
            pinned = times[len(times) // 2] + 1_000_000  # the horizon: the middle of history
            sim.rest.now_us = lambda: pinned
            headers = auth(sim)
            body = {"pageSize": 1000, "startTime": "1970-01-01T00:00:00Z"}
            response = await http.post("/v1/report/executions/search", json=body, headers=headers)
            served = response.json()["executions"]
            assert len(served) == sum(1 for t in times if t >= pinned - 1_000_000) > 0
            rest.retention_refuse = True
            refused = await http.post("/v1/report/executions/search", json=body, headers=headers)
            assert refused.status_code == 400 and refused.json()["code"] == 11

    asyncio.run(main())


# -- Predexon ------------------------------------------------------------------------------


@asynccontextmanager
async def predexon(
    rest: PredexonRestConfig,
) -> AsyncIterator[tuple[px.PredexonSimulator, httpx2.AsyncClient]]:
    config = px.SimConfig(
        seed=5, rate=150.0, confirm_scale=0.01, channels=("orders", "activity"), rest=rest
    )
    sim = px.PredexonSimulator(config)
    await sim.start()
    assert sim.rest is not None
    try:
        # Enough history, then a fixed truth: no new events, every confirmation emitted.
        await until(lambda: len(sim.ground_truth("orders")) >= 400, 20)
        config.rate = 0.0
        await until(lambda: not sim._scheduled, 10)
        async with httpx2.AsyncClient(base_url=sim.rest.url, timeout=15) as http:
            yield sim, http
    finally:
        await sim.stop()


def test_predexon_pagination_covers_the_truth_and_desc_only_rule() -> None:
    async def main() -> None:
        async with predexon(PredexonRestConfig(rate_limits=False)) as (sim, http):
            key = {"x-api-key": "sim-pro-key"}
            fills = [
                e["data"]
                for e in sim.ground_truth("orders")
                if e["data"]["event_type"] == "order_filled" and e["data"]["status"] == "confirmed"
            ]
            start = min(f["timestamp"] for f in fills)
            end = max(f["timestamp"] for f in fills)
            window = {"start_time": start, "end_time": end}

            async def everything(path: str, params: dict[str, Any], list_key: str) -> list[Any]:
                rows: list[Any] = []
                cursor = None
                while True:
                    query = params | ({"pagination_key": cursor} if cursor else {})
                    response = await http.get(path, params=query, headers=key)
                    assert response.status_code == 200, response.text
                    data = loads(response.content)
                    assert data["pagination"]["count"] == len(data[list_key])
                    rows += data[list_key]
                    cursor = data["pagination"]["pagination_key"]
                    assert data["pagination"]["has_more"] is (cursor is not None)
                    if cursor is None:
                        return rows

            desc = await everything("/v2/polymarket/trades", window | {"limit": 33}, "trades")
            expected = sorted(fills, key=lambda f: f["timestamp"])
            assert sorted(r["tx_hash"] + r["order_hash"] for r in desc) == sorted(
                f["tx_hash"] + f["order_hash"] for f in fills
            )
            assert [r["timestamp"] for r in desc] == sorted(
                (f["timestamp"] for f in expected), reverse=True
            )
            assert {"log_index", "role", "status", "fee", "version"}.isdisjoint(desc[0])
            assert set(desc[0]) == set(trade_row(fills[0]))

            refused = await http.get(
                "/v2/polymarket/trades", params=window | {"order": "asc"}, headers=key
            )
            assert refused.status_code == 400 and "error" in refused.json()
            wallet = fills[0]["user"]
            asc = await everything(
                "/v2/polymarket/trades", window | {"order": "asc", "wallet": wallet}, "trades"
            )
            mine = [f for f in fills if wallet in (f["user"], f["taker"])]
            assert len(asc) == len(mine) > 0
            assert [r["timestamp"] for r in asc] == sorted(r["timestamp"] for r in asc)

            activity = [
                e["data"] for e in sim.ground_truth("activity") if e["data"]["user"] == wallet
            ]
            rows = await everything(
                "/v2/polymarket/activity", window | {"wallet": wallet, "limit": 7}, "activities"
            )
            assert len(rows) == sum(1 for a in activity if start <= a["timestamp"] <= end)
            assert set(rows[0]) <= set(activity_row(activity[0])) | {
                "neg_risk_market_id",
                "index_set",
            }

            no_wallet = await http.get("/v2/polymarket/activity", params=window, headers=key)
            assert no_wallet.status_code == 422
            too_many = await http.get("/v2/polymarket/trades", params={"limit": 501}, headers=key)
            assert too_many.status_code == 422
            bad_key = await http.get("/v2/polymarket/trades", headers={"x-api-key": "nope"})
            assert bad_key.status_code == 401

    asyncio.run(main())


def test_predexon_plan_rate_and_sdk_error_shape() -> None:
    async def main() -> None:
        async with predexon(PredexonRestConfig(error_shape="sdk")) as (_sim, http):
            key = {"x-api-key": "sim-dev-key"}  # Dev: 20 requests/s
            statuses = []
            for _ in range(21):
                response = await http.get("/v2/polymarket/trades", headers=key)
                statuses.append(response.status_code)
            assert statuses.count(429) >= 1 and statuses[:20] == [200] * 20
            body = response.json()
            assert set(body) == {"detail"} and body["detail"]["error"] == "rate_limited"

    asyncio.run(main())


def test_truncated_history_ends_early_and_short_pages_go_on() -> None:
    async def main() -> None:
        faults = RestFaults(truncate_after_rows=45)
        rest = RestConfig(search_limit=None, ledger_limit=None, faults=faults)
        async with dropcopy(SimConfig(seed=3, prefill=1_000, rest=rest)) as (sim, http):
            headers = auth(sim)

            def fetch(token: str | None) -> Awaitable[httpx2.Response]:
                body = {"pageSize": 20} | ({"pageToken": token} if token else {})
                return http.post("/v1/report/executions/search", json=body, headers=headers)

            rows, pages = await walk(fetch, "executions", True)
            truth = sim.ground_truth("executions", firms=[FIRM])
            # the last page says eof although more records exist: a silent loss
            assert len(rows) == 45 < len(truth) and pages == 3
            assert [r["id"] for r in rows] == [m.id for m in truth[:45]]
            faults.truncate_after_rows = None
            faults.short_pages = True
            rows, pages = await walk(fetch, "executions", True)
            assert [r["id"] for r in rows] == [m.id for m in truth]
            assert pages == -(-len(truth) // 10)  # 10 rows a page although 20 were asked

    asyncio.run(main())
