"""The Predexon simulator's own reading of the protocol (`bridge.sim.predexon.protocol`),
checked against examples of the documented rules, not against the bridge's code.

The last tests compare the simulator's channel table with the bridge's: the two are
written independently from the same documentation, so a disagreement is a misreading on
one side."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from bridge.serde.exact_json import RawNumber, loads
from bridge.sim.predexon import SimConfig
from bridge.sim.predexon.protocol import CHANNELS, WILDCARD, channel_named, selects, to_json
from bridge.streams.channels import CHANNELS as BRIDGE_CHANNELS

ALICE, BOB, CAROL = "0xa11ce", "0xb0b", "0xca401"


def trade(**fields: str) -> dict[str, str]:
    return {"event_type": "order_filled", "status": "confirmed"} | fields


def test_users_select_a_trade_on_either_side() -> None:
    filters = {"users": [ALICE, BOB]}
    assert selects("orders", filters, trade(user=ALICE, taker=CAROL))
    assert selects("orders", filters, trade(user=CAROL, taker=BOB))
    assert not selects("orders", filters, trade(user=CAROL, taker=CAROL))
    assert not selects("orders", filters, trade())  # no user at all
    activity = {"event_type": "split", "user": BOB}
    assert selects("activity", filters, activity)
    assert not selects("activity", {"users": [ALICE]}, activity)
    assert selects("collateral", {"users": [BOB]}, {"event_type": "polyusd_wrapped", "user": BOB})


def test_each_selector_compares_its_own_fields() -> None:
    assert selects("lifecycle", {"condition_ids": ["0xc1"]}, {"condition_id": "0xc1"})
    assert not selects("lifecycle", {"condition_ids": ["0xc1"]}, {"condition_id": "0xc2"})
    assert selects("orders", {"market_slugs": ["will-it-rain"]}, trade(market_slug="will-it-rain"))
    # The orderbook names the market's slug `slug`.
    book = {"event_type": "price_change", "token_id": "77", "slug": "will-it-rain"}
    assert selects("orderbook", {"market_slugs": ["will-it-rain"]}, book)
    assert selects("orderbook", {"token_ids": ["12", "77"]}, book)
    assert not selects("orderbook", {"token_ids": ["12"]}, book)
    proposal = {"event_type": "proposal", "market_slug": "m"}
    assert selects("oracle", {"market_slugs": ["m"]}, proposal)
    price = {"event_type": "price_feed", "feed": "BTC/USD"}
    assert selects("crypto", {"feeds": ["ETH/USD", "BTC/USD"]}, price)
    assert not selects("crypto", {"feeds": ["ETH/USD"]}, price)
    # A selector matches on its own fields only: a user id in a condition id is no match.
    assert not selects("orders", {"condition_ids": [ALICE]}, trade(user=ALICE))


def test_the_wildcard_selects_every_event_of_the_channel() -> None:
    everything = {"condition_ids": [WILDCARD]}
    assert WILDCARD == "*"
    assert selects("lifecycle", everything, {"event_type": "condition_prepared"})
    assert selects("orderbook", {"token_ids": ["*"]}, {"event_type": "resync"})
    assert selects("crypto", {"feeds": ["*"]}, {"event_type": "price_feed", "feed": "X/Y"})


def test_orders_send_confirmed_trades_unless_status_says_otherwise() -> None:
    pending = trade(user=ALICE, status="pending")
    confirmed = trade(user=ALICE, status="confirmed")
    refund = {"event_type": "fee_refund", "user": ALICE}  # no status: the confirmed side
    wanted = {"users": [ALICE]}
    assert [selects("orders", wanted, e) for e in (pending, confirmed, refund)] == [
        False,
        True,
        True,
    ]
    only_pending = wanted | {"status": "pending"}
    assert [selects("orders", only_pending, e) for e in (pending, confirmed, refund)] == [
        True,
        False,
        False,
    ]
    every = wanted | {"status": "all"}
    assert all(selects("orders", every, e) for e in (pending, confirmed, refund))
    # Status applies before the selector, also for a wildcard.
    assert not selects("orders", {"users": ["*"]}, pending)
    assert selects("orders", {"users": ["*"], "status": "all"}, pending)


def test_filters_the_server_refuses_select_nothing() -> None:
    event = trade(user=ALICE, condition_id="0xc1")
    assert not selects("orders", {}, event)
    assert not selects("orders", {"status": "all"}, event)
    assert not selects("orders", {"users": ALICE}, event)  # not a list
    assert not selects("orders", {"users": [ALICE], "condition_ids": ["0xc1"]}, event)


def test_a_subscription_names_its_channel_by_platform_and_type() -> None:
    assert channel_named("polymarket", "orders") == "orders"
    assert channel_named("chainlink", "crypto") == "crypto"
    assert channel_named("polymarket", "crypto") is None
    assert channel_named(None, "orders") is None


def test_json_is_compact_in_key_order_with_exact_decimals() -> None:
    frame = {
        "type": "event",
        "subscription_id": "sub_1",
        "data": {"price": Decimal("0.10"), "shares": Decimal("1E+3"), "n": 7, "ok": True},
        "levels": [{"size": "0"}, None],
    }
    text = to_json(frame)
    assert text == (
        '{"type":"event","subscription_id":"sub_1",'
        '"data":{"price":0.10,"shares":1E+3,"n":7,"ok":true},"levels":[{"size":"0"},null]}'
    )
    assert json.loads(text)["data"]["n"] == 7
    # What a client keeping numbers exact reads back is the text that was written.
    assert loads(text)["data"]["price"] == RawNumber("0.10")
    assert to_json({"é": "ü"}) == json.dumps({"é": "ü"}, separators=(",", ":"))
    for bad in (Decimal("NaN"), Decimal("Infinity"), float("nan")):
        with pytest.raises(ValueError):
            to_json({"price": bad})


def test_the_channel_table_agrees_with_the_bridge() -> None:
    """Written apart from the same documentation: names, subscription and filter keys."""
    assert list(CHANNELS) == list(BRIDGE_CHANNELS)
    for name, channel in CHANNELS.items():
        theirs = BRIDGE_CHANNELS[name]
        assert (channel.platform, channel.type) == (theirs.platform, theirs.type), name
        assert channel.selectors == theirs.selectors, name


def test_the_simulator_serves_every_channel_by_default() -> None:
    assert SimConfig().channels == tuple(CHANNELS)
