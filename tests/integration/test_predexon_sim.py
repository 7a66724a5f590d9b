"""The Predexon simulator speaks the documented protocol (real websockets client)."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Opcode

from bridge.serde.exact_json import loads
from bridge.sim.predexon import PredexonSimulator, SimConfig, SimulatorThread
from bridge.streams.channels import CHANNELS
from tests.bridge_harness import run_within, until

T = TypeVar("T")
PRO, DEV = "sim-pro-key", "sim-dev-key"


def arun(factory: Callable[[], Awaitable[T]], timeout: float = 20) -> T:
    return run_within(factory, timeout)


async def with_sim(body: Callable[[PredexonSimulator], Awaitable[None]], **config: Any) -> None:
    sim = PredexonSimulator(SimConfig(**config))
    await sim.start()
    try:
        await body(sim)
    finally:
        await sim.stop()


def sub_msg(channel: str, filters: dict[str, Any]) -> str:
    c = CHANNELS[channel]
    return json.dumps(
        {
            "action": "subscribe",
            "platform": c.platform,
            "version": 1,
            "type": c.type,
            "filters": filters,
        }
    )


async def opened(url: str) -> ClientConnection:
    ws = await connect(url)
    assert json.loads(await ws.recv()) == {
        "type": "connected",
        "message": "Connected to Predexon WebSocket",
    }
    return ws


async def next_control(ws: ClientConnection) -> dict[str, Any]:
    while True:
        msg = json.loads(await ws.recv())
        if msg.get("type") in ("ack", "error"):
            return msg


def test_handshake_status_codes() -> None:
    async def body(sim: PredexonSimulator) -> None:
        for url, status in [
            (sim.url_for("nope"), 401),
            (f"ws://127.0.0.1:{sim.port}/v1", 401),
            (sim.url_for("sim-free-key"), 403),
        ]:
            with pytest.raises(InvalidStatus) as err:
                await connect(url)
            assert err.value.response.status_code == status
        ws = await opened(sim.url_for(PRO, query=True))  # ?api_key= accepted too
        await ws.close()
        dev = [await opened(sim.url_for(DEV)) for _ in range(5)]
        with pytest.raises(InvalidStatus) as err:
            await connect(sim.url_for(DEV))
        assert err.value.response.status_code == 429
        sim.config.capacity_full = True
        with pytest.raises(InvalidStatus) as err:
            await connect(sim.url_for(PRO))
        assert err.value.response.status_code == 503
        for ws in dev:
            await ws.close()

    arun(lambda: with_sim(body))


def test_subscribe_update_unsubscribe_and_request_errors() -> None:
    async def body(sim: PredexonSimulator) -> None:
        ws = await opened(sim.url_for(PRO))
        m = sim.factory.universe.markets
        await ws.send(sub_msg("activity", {"condition_ids": [m[0].condition_id]}))
        ack = await next_control(ws)
        assert (
            ack["type"] == "ack" and ack["subscription_id"].startswith("sub_") and "channel" in ack
        )
        sid = ack["subscription_id"]
        await ws.send(
            json.dumps(
                {
                    "action": "update",
                    "subscription_id": sid,
                    "filters": {"users": sim.factory.universe.users[:2]},
                }
            )
        )
        assert (await next_control(ws))["type"] == "ack"
        assert sim.subscriptions()[-1].filters == {"users": sim.factory.universe.users[:2]}
        cases = [
            ('{"action": "subscribe", oops', "PARSE_ERROR"),
            ('{"action": "dance"}', "UNKNOWN_ACTION"),
            (
                json.dumps({"action": "unsubscribe", "subscription_id": "sub_nope"}),
                "SUBSCRIPTION_NOT_FOUND",
            ),
            (sub_msg("orders", {"users": ["0x1"], "condition_ids": ["0x2"]}), "INVALID_FILTERS"),
            (sub_msg("orders", {"users": ["0x1"], "status": "maybe"}), "INVALID_FILTERS"),
            (sub_msg("crypto", {"feeds": "BTC/USD"}), "INVALID_FILTERS"),
        ]
        for request, code in cases:
            await ws.send(request)
            reply = await next_control(ws)
            assert (reply["type"], reply["code"]) == ("error", code), request
            assert reply["message"]
        await ws.send(sub_msg("orderbook", {"token_ids": [m[0].tokens[0][0]]}))
        book = (await next_control(ws))["subscription_id"]
        await ws.send(
            json.dumps(
                {"action": "update", "subscription_id": book, "filters": {"token_ids": ["1"]}}
            )
        )
        assert (await next_control(ws))["code"] == "INVALID_FILTERS"  # no update on orderbook
        await ws.send(json.dumps({"action": "unsubscribe", "subscription_id": sid}))
        assert (await next_control(ws)) == {
            "type": "ack",
            "subscription_id": sid,
            "channel": "trades",
        }
        await ws.close()

    arun(lambda: with_sim(body))


def test_plan_limits_and_plan_error_codes() -> None:
    async def body(sim: PredexonSimulator) -> None:
        dev = await opened(sim.url_for(DEV))
        users = [f"0x{i:040x}" for i in range(11)]
        await dev.send(sub_msg("collateral", {"users": ["*"]}))
        assert (await next_control(dev))["code"] == "WILDCARD_NOT_ALLOWED"
        await dev.send(sub_msg("collateral", {"users": users}))
        assert (await next_control(dev))["code"] == "ITEMS_PER_SUB_LIMIT"
        for i in range(10):
            await dev.send(sub_msg("collateral", {"users": users[:10]}))
            reply = await next_control(dev)
            assert reply["type"] == "ack", (i, reply)
        await dev.send(sub_msg("collateral", {"users": users[:1]}))
        assert (await next_control(dev))["code"] == "SUBSCRIPTION_LIMIT"
        dev2 = await opened(sim.url_for(DEV))
        await dev2.send(sub_msg("collateral", {"users": users[:1]}))
        assert (await next_control(dev2))["code"] == "ITEMS_LIMIT"  # 100 items already used
        pro = [await opened(sim.url_for(PRO)) for _ in range(3)]
        for ws in pro[:2]:
            await ws.send(sub_msg("crypto", {"feeds": ["*"]}))
            assert (await next_control(ws))["type"] == "ack"
        await pro[0].send(sub_msg("crypto", {"feeds": ["BTC/USD"]}))
        assert (await next_control(pro[0]))["code"] == "INVALID_FILTERS"  # no mixing
        await pro[2].send(sub_msg("crypto", {"feeds": ["*"]}))
        assert (await next_control(pro[2]))["code"] == "WILDCARD_CONNECTION_LIMIT"
        sim.config.plan_required["oracle"] = "pro"
        await dev2.send(sub_msg("oracle", {"condition_ids": ["0x1"]}))
        assert (await next_control(dev2))["code"] == "PLAN_REQUIRED"
        sim.config.max_requests_per_s = 3
        codes = []
        for _ in range(5):
            await pro[2].send('{"action": "dance"}')
            codes.append((await next_control(pro[2]))["code"])
        assert "RATE_LIMIT" in codes
        for ws in [dev, dev2, *pro]:
            await ws.close()

    arun(lambda: with_sim(body))


def test_auth_required_without_key_and_auth_failed_closes_4001() -> None:
    async def body(sim: PredexonSimulator) -> None:
        keyless = await opened(f"ws://127.0.0.1:{sim.port}/v1")
        await keyless.send(sub_msg("crypto", {"feeds": ["BTC/USD"]}))
        assert (await next_control(keyless))["code"] == "AUTH_REQUIRED"
        ws = await opened(sim.url_for(PRO))
        sim.revoke_key(PRO)
        await ws.send(sub_msg("crypto", {"feeds": ["BTC/USD"]}))
        assert (await next_control(ws))["code"] == "AUTH_FAILED"
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4001
        await keyless.close()

    arun(lambda: with_sim(body, allow_keyless=True))


def test_ping_pong_rule_and_idle_close() -> None:
    async def body(sim: PredexonSimulator) -> None:
        silent = await opened(sim.url_for(PRO))
        await silent.send(sub_msg("crypto", {"feeds": ["BTC/USD"]}))
        send_frame = silent.protocol.send_frame
        silent.protocol.send_frame = lambda f: None if f.opcode is Opcode.PONG else send_frame(f)  # type: ignore[method-assign]
        polite = await opened(sim.url_for(PRO))
        await polite.send(sub_msg("crypto", {"feeds": ["ETH/USD"]}))
        start = time.monotonic()
        await silent.wait_closed()
        assert 0.3 <= time.monotonic() - start < 3
        assert silent.close_code == 1011  # keepalive ping timeout
        idle = await opened(sim.url_for(PRO))
        await idle.wait_closed()
        assert idle.close_code == 4000
        assert polite.close_code is None  # answering pings and subscribed: still open
        await polite.close()

    arun(
        lambda: with_sim(body, ping_interval_s=0.2, pong_timeout_s=0.3, idle_timeout_s=1.0, rate=5)
    )


async def collect(ws: ClientConnection, n: int) -> list[dict[str, Any]]:
    out = []
    while len(out) < n:
        out.append(loads(await ws.recv()))
    return out


def test_every_channel_sends_documented_shapes_in_both_envelope_styles() -> None:
    async def body(sim: PredexonSimulator) -> None:
        ws = await opened(sim.url_for(PRO))
        for channel in CHANNELS:
            selector = CHANNELS[channel].selectors[0]
            filters: dict[str, Any] = {selector: ["*"]}
            if channel == "orders":
                filters["status"] = "all"
            await ws.send(sub_msg(channel, filters))
        frames: list[dict[str, Any]] = []
        wanted_types = {t for c in CHANNELS.values() for t in c.event_types} - {
            "book_snapshot",
            "snapshots_done",
            "resync",
        }

        def types_seen() -> set[str]:
            found = set()
            for f in frames:
                for d in f.get("events") or [f.get("data", f)]:
                    found.add(d.get("event_type"))
            return found

        while not wanted_types <= types_seen():  # rare types (tick_size_change): keep reading
            frames += await collect(ws, 300)
        events: dict[str, set[str]] = {}
        fields: dict[str, set[str]] = {}
        kinds = set()
        for f in frames:
            if f.get("type") == "event_batch":
                kinds.add("event_batch")
                assert f["count"] == len(f["events"]) and f["gap"] is False
                datas = f["events"]
            elif f.get("type") == "event":
                kinds.add("envelope")
                datas = [f["data"]]
            elif "event_type" in f:
                kinds.add("bare")
                datas = [f]
            else:
                continue
            for d in datas:
                events.setdefault(d["event_type"], set())
                fields.setdefault(d["event_type"], set()).update(d)
        assert kinds == {"event_batch", "envelope", "bare"}
        for channel, spec in CHANNELS.items():
            wanted = set(spec.event_types) - {"book_snapshot", "snapshots_done", "resync"}
            assert wanted <= set(events), (channel, wanted - set(events))
        assert {
            "status",
            "user",
            "taker",
            "side",
            "price",
            "shares",
            "shares_normalized",
            "fee",
            "token_id",
            "token_label",
            "outcome",
            "outcome_index",
            "is_neg_risk",
            "condition_id",
            "market_slug",
            "market_id",
            "title",
            "image",
            "order_hash",
            "tx_hash",
            "log_index",
            "timestamp",
            "version",
            "builder",
            "metadata",
            "role",
            "complement_token_id",
            "complement_token_label",
        } <= fields["order_filled"]
        assert {"refund", "fee_charged", "order_hash", "tx_hash"} <= fields["fee_refund"]
        assert {
            "payout",
            "payout_normalized",
            "block_number",
            "tokens",
            "collateral_token",
        } <= fields["redeem"]
        assert (
            "outcome_slot_count" in fields["condition_prepared"]
            and "is_invalid" in fields["condition_resolution"]
        )
        assert {"feed", "price", "bid", "ask", "observed_at", "timestamp"} <= fields["price_feed"]
        assert {"best_bid", "best_ask", "side", "price", "size"} <= fields["price_change"]
        await ws.close()

    arun(lambda: with_sim(body, rate=60, confirm_scale=0.02, bare_ratio=0.3, batch_interval_s=0.05))


def test_orderbook_snapshots_after_ack_then_done_and_types_as_documented() -> None:
    async def body(sim: PredexonSimulator) -> None:
        ws = await opened(sim.url_for(PRO))
        market = sim.factory.universe.markets[1]
        await ws.send(sub_msg("orderbook", {"condition_ids": [market.condition_id]}))
        ack = await next_control(ws)
        first = await collect(ws, 3)
        assert [f["data"]["event_type"] for f in first] == [
            "book_snapshot",
            "book_snapshot",
            "snapshots_done",
        ]
        assert first[2]["data"]["count"] == 2 and all(
            f["subscription_id"] == ack["subscription_id"] for f in first
        )
        snap = first[0]["data"]
        assert isinstance(snap["bids"][0]["price"], str) and snap["timestamp"] > 10**12  # ms
        sim.send_resync()
        rest = await collect(ws, 200)
        types = [f["data"]["event_type"] for f in rest]
        i = types.index("resync")
        assert types[i + 1 : i + 4] == ["book_snapshot", "book_snapshot", "snapshots_done"]
        change = next(f["data"] for f in rest if f["data"]["event_type"] == "price_change")
        assert all(isinstance(change[k], str) for k in ("price", "size", "best_bid", "best_ask"))
        await ws.close()

    arun(lambda: with_sim(body, rate=200))


def test_pending_fill_is_confirmed_later_and_trade_numbers_are_json_numbers() -> None:
    async def body(sim: PredexonSimulator) -> None:
        ws = await opened(sim.url_for(PRO))
        await ws.send(sub_msg("orders", {"users": ["*"], "status": "all"}))
        await next_control(ws)
        seen: dict[tuple[str, str], dict[str, Any]] = {}
        while True:
            d = loads(await ws.recv())["data"]
            if d["event_type"] != "order_filled":
                continue
            key = (d["tx_hash"], d["order_hash"])
            if d["status"] == "pending":
                assert d["log_index"] is None
                seen[key] = d
            elif key in seen:
                assert d["log_index"].startswith("0x") and type(d["price"]).__name__ == "RawNumber"
                break
        await ws.close()

    arun(lambda: with_sim(body, rate=20, confirm_scale=0.05))


def test_faults_drop_stall_malformed_duplicates_are_recorded() -> None:
    with SimulatorThread(SimConfig(rate=100, duplicate_ratio=0.5)) as runner:
        sim = runner.sim

        async def client() -> None:
            ws = await opened(sim.url_for(PRO))
            await ws.send(sub_msg("crypto", {"feeds": ["*"]}))
            sid = (await next_control(ws))["subscription_id"]
            frames = [await ws.recv() for _ in range(60)]
            assert len(frames) > len(set(frames))  # duplicates sent
            runner.call(sim.stall, 0.3)
            await until(
                lambda: any(e.status == "dropped_stalled" for e in runner.call(sim.sent, sid))
            )
            for kind in ("invalid_json", "truncated", "oversized", "wrong_types", "unknown_type"):
                runner.call(sim.send_malformed, kind)
            with pytest.raises(ConnectionClosed):  # oversized exceeds the default 1 MiB max_size
                while True:
                    await ws.recv()
            ws = await opened(sim.url_for(PRO))
            await ws.send(sub_msg("crypto", {"feeds": ["*"]}))
            await next_control(ws)
            runner.call(sim.drop_connections, 1006)
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await ws.recv()
            assert closed.value.rcvd is None  # abnormal: no close frame (1006)
            ws = await opened(sim.url_for(PRO))
            runner.call(sim.drop_connections, 1001)
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001

        arun(client)
        truth = runner.call(sim.ground_truth, "crypto", {"feeds": ["BTC/USD"]})
        assert truth and all(
            e["data"]["feed"] == "BTC/USD" and e["generated_at"] > 0 for e in truth
        )
