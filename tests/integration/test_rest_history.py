"""REST History over the simulators: the records equal the live mapping of the same upstream
records, under 429 storms, 5xx, slow and short pages, with no loss and no duplicates."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import pytest

from bridge.backfill.exchange_history import ExchangeHistory
from bridge.backfill.history import Page, Window
from bridge.backfill.predexon_history import PredexonHistory
from bridge.mapping.dropcopy import DropCopyMapper
from bridge.mapping.predexon import PredexonMapper
from bridge.records import Record
from bridge.serde.avro import Serializer
from bridge.sim import predexon as px
from bridge.sim.dropcopy import DropCopySimulator, SimConfig
from bridge.sim.dropcopy.rest import RestConfig
from bridge.sim.predexon.protocol import to_json
from bridge.sim.predexon.rest import PredexonRestConfig
from bridge.sim.rest import RestFaults
from bridge.sources.rest.exchange import ExchangeRestClient
from bridge.sources.rest.http import RestClient, RetryPolicy
from bridge.sources.rest.predexon import PredexonRestClient, predexon_parse
from bridge.streams.kinds import KINDS
from bridge.timeutil import now_us
from tests.bridge_harness import until

FIRM = "firms/acme-capital"
PARTICIPANT = f"{FIRM}/users/alice"
ACCOUNTS = [f"{FIRM}/accounts/ACM-1", f"{FIRM}/accounts/ACM-2"]
FAST = RetryPolicy(max_attempts=12, initial_s=0.01, cap_s=0.05, min_429_wait_s=0.02)
LIVE_ONLY = ("receive_time",)


def storm() -> RestFaults:
    return RestFaults(rate_limit_next=3, fail_next=2, slow_page_s=0.01, short_pages=True)


def decoded(schema: str, records: list[Record], drop: tuple[str, ...]) -> list[dict[str, Any]]:
    serializer = Serializer(schema, b"")
    out = []
    for record in records:
        value = serializer.decode(record.value)
        for name in drop:
            value.pop(name, None)
        out.append(value)
    return out


async def drain(history: Any, window: Window, cursor: str | None = None) -> list[Page]:
    return [page async for page in history.pages(window, cursor)]


@asynccontextmanager
async def exchange(rest: RestConfig) -> AsyncIterator[tuple[DropCopySimulator, ExchangeRestClient]]:
    sim = DropCopySimulator(SimConfig(seed=11, prefill=4_000, rest=rest))
    await sim.start()
    assert sim.rest is not None
    token = sim.issue_token(["read:reports", "read:positions"])

    async def headers() -> Mapping[str, str]:
        return {"Authorization": f"Bearer {token}", "x-participant-id": PARTICIPANT}

    http = RestClient(sim.rest.url, headers, policy=FAST)
    try:
        # Unpaced: the simulator's limits (scaled down or off) are what these tests exercise.
        yield sim, ExchangeRestClient(http, search_pacing=None, ledger_pacing=None)
    finally:
        await http.aclose()
        await sim.stop()


def live_records(
    sim: DropCopySimulator, kind: str, mapper: DropCopyMapper, window: Window
) -> list[Record]:
    """What the live stream's mapper makes of the journal's records inside the window."""
    k = KINDS[kind]
    response = k.response_type()
    for _, time_us, payload in sim.ground_truth_records(kind, firms=[FIRM]):
        if window.from_us <= time_us <= window.to_us:
            getattr(response, k.list_field).add().MergeFromString(payload)
    # Received now, as the history's rows are: an event time is kept only when plausible
    # at the receive time (bridge.event_times).
    records, dead = mapper.map_response(response, now_us())
    assert not dead
    return records


@pytest.mark.parametrize("kind", ["executions", "trade_captures", "position_changes"])
@pytest.mark.parametrize("faulty", [False, True], ids=["clean", "faults"])
def test_exchange_history_equals_the_live_mapping(kind: str, faulty: bool) -> None:
    async def main() -> None:
        faults = storm() if faulty else RestFaults()
        rest = RestConfig(search_limit=None, ledger_limit=None, faults=faults)
        async with exchange(rest) as (sim, client):
            times = [t for _, t, _ in sim.ground_truth_records(kind, firms=[FIRM])]
            window = Window(times[len(times) // 5], times[4 * len(times) // 5])
            mapper = DropCopyMapper(KINDS[kind], "dc", "topic", b"")
            history = ExchangeHistory(
                client, mapper, participant_id=PARTICIPANT, accounts=ACCOUNTS, page_size=40
            )
            pages = await drain(history, window)
            got = [r for p in pages for r in p.records]
            assert not any(p.dead_letters for p in pages)
            live = live_records(sim, kind, mapper, window)
            assert len(got) == len(live) > 50
            if kind == "position_changes":  # one query per account: compare per identity
                got.sort(key=lambda r: r.event_id)
                live.sort(key=lambda r: r.event_id)
            assert [r.event_id for r in got] == [r.event_id for r in live]
            assert len({r.event_id for r in got}) == len(got)
            assert [(r.key, r.event_time_us, r.topic) for r in got] == [
                (r.key, r.event_time_us, r.topic) for r in live
            ]
            schema = KINDS[kind].schema
            got_values = decoded(schema, got, LIVE_ONLY)
            live_values = decoded(schema, live, LIVE_ONLY)
            if kind == "position_changes":
                # Not in the ledger: zero / false in a backfilled record.
                for value in live_values:
                    position = value["position_change"]["position"]
                    position.update(qty_bought=0, qty_sold=0, bod_position=0, expired=False)
            assert got_values == live_values
            if faulty:
                assert faults.rate_limited >= 3 and faults.failed == 2

    asyncio.run(main())


def test_exchange_history_at_the_documented_limit_shape_resumes_from_a_cursor() -> None:
    """12 requests per window (scaled to 0.3 s) over many pages: 429s waited out; a walk
    interrupted after some pages and resumed from the last cursor loses and repeats nothing."""

    async def main() -> None:
        faults = RestFaults()
        rest = RestConfig(search_limit=(12, 0.3), ledger_limit=None, faults=faults)
        async with exchange(rest) as (sim, client):
            kind = "executions"
            times = [t for _, t, _ in sim.ground_truth_records(kind, firms=[FIRM])]
            window = Window(times[0], times[-1])
            mapper = DropCopyMapper(KINDS[kind], "dc", "topic", b"")
            history = ExchangeHistory(client, mapper, participant_id=PARTICIPANT, page_size=20)
            first: list[Page] = []
            async for page in history.pages(window, None):
                first.append(page)
                if len(first) == 7:
                    break  # a crash after committing page 7
            rest_pages = await drain(history, window, first[-1].cursor)
            got = [r.event_id for p in first + rest_pages for r in p.records]
            live = [r.event_id for r in live_records(sim, kind, mapper, window)]
            assert got == live
            assert faults.rate_limited > 0  # more than 12 pages: the limit was hit and waited out

    asyncio.run(main())


# -- Predexon ------------------------------------------------------------------------------


@asynccontextmanager
async def predexon(
    rest: PredexonRestConfig,
) -> AsyncIterator[tuple[px.PredexonSimulator, PredexonRestClient]]:
    config = px.SimConfig(
        seed=9, rate=150.0, confirm_scale=0.01, channels=("orders", "activity"), rest=rest
    )
    sim = px.PredexonSimulator(config)
    await sim.start()
    assert sim.rest is not None

    async def headers() -> Mapping[str, str]:
        return {"x-api-key": "sim-dev-key"}

    http = RestClient(sim.rest.url, headers, policy=FAST, parse=predexon_parse)
    try:
        await until(lambda: len(sim.ground_truth("activity")) >= 150, 20)
        config.rate = 0.0  # a fixed truth: no new events, every confirmation emitted
        await until(lambda: not sim._scheduled, 10)
        yield sim, PredexonRestClient(http)
    finally:
        await http.aclose()
        await sim.stop()


# Fields REST rows lack (null in backfilled records) or render differently.
_TRADE_STREAM_ONLY = (
    "event_id",
    "receive_time",
    "subscription_id",
    "log_index",
    "role",
    "outcome_index",
    "is_neg_risk",
    "market_id",
    "image",
    "complement_token_id",
    "complement_token_label",
    "extra",
)
_ACTIVITY_STREAM_ONLY = (
    "event_id",
    "receive_time",
    "subscription_id",
    "log_index",
    "block_number",
    "collateral_token",
    "tokens",
    "payout",
    "payout_normalized",
    "amount",
    "amount_normalized",
    "version",
    "image",
    "market_id",
    "extra",
)


def live_predexon(
    sim: px.PredexonSimulator, mapper: PredexonMapper, filters: dict[str, Any], window: Window
) -> list[Record]:
    """The live mapper's records of the events the subscription would have received."""
    records = []
    for entry in sim.ground_truth(mapper.channel.name, filters):
        frame = to_json({"type": "event", "subscription_id": "sub_1", "data": entry["data"]})
        mapped, dead = mapper.map_frame(frame, now_us())  # as received live
        assert not dead
        records += [
            r
            for r in mapped
            if r.event_time_us is not None and window.from_us <= r.event_time_us <= window.to_us
        ]
    return records


@pytest.mark.parametrize("channel", ["orders", "activity"])
@pytest.mark.parametrize("faulty", [False, True], ids=["clean", "faults"])
def test_predexon_history_equals_the_live_mapping(channel: str, faulty: bool) -> None:
    async def main() -> None:
        faults = storm() if faulty else RestFaults()
        rest = PredexonRestConfig(rate_limits=faulty, faults=faults)
        async with predexon(rest) as (sim, client):
            events = [e["data"] for e in sim.ground_truth(channel)]
            users = sorted({e["user"] for e in events})[:2]
            filters: dict[str, Any] = {"users": users}
            if channel == "orders":
                filters["status"] = "confirmed"
            stamps = sorted(e["timestamp"] for e in events if e.get("timestamp"))
            window = Window(stamps[0] * 1_000_000, stamps[-1] * 1_000_000)
            mapper = PredexonMapper(channel, "px", "topic", b"", json.dumps(filters))
            history = PredexonHistory(client, mapper, filters, limit=10)
            pages = await drain(history, window)
            got = [r for p in pages for r in p.records]
            assert not any(p.dead_letters for p in pages)
            live = live_predexon(sim, mapper, filters, window)
            assert len(live) > 10
            # One query per wallet: a row of two subscribed wallets (maker and taker) comes
            # twice, with one identity; the pipeline drops the repeat.
            unique = {r.event_id: r for r in got}
            assert len(unique) == len(live)
            assert all(
                not r.event_id.startswith(("order_filled:confirmed:", "split:0x")) for r in got
            )

            def identity(value: dict[str, Any]) -> tuple[Any, ...]:
                return (
                    value["tx_hash"],
                    value.get("order_hash"),
                    value["user"],
                    value["event_type"],
                )

            drop = _TRADE_STREAM_ONLY if channel == "orders" else _ACTIVITY_STREAM_ONLY
            got_values = sorted(
                decoded(mapper.channel.schema, list(unique.values()), drop), key=identity
            )
            live_values = sorted(decoded(mapper.channel.schema, live, drop), key=identity)
            assert got_values == live_values
            if faulty:
                assert faults.rate_limited >= 3 and faults.failed == 2

    asyncio.run(main())
