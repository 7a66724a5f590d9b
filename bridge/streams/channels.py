"""The Predexon channel table: per channel, its subscription, topic, schema, fields, key.

`CHANNELS` is the one place a channel is described; the schema generator
(`bridge.mapping.predexon_schema`), the subscription filters (`sources.predexon.filters`),
the mapper (`mapping.predexon`) and the connection all read it. The simulator keeps its own
table (`bridge.sim.predexon.protocol`), compared with this one by a test. Field kinds are
the names of `mapping.predexon_fields.KINDS`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Channel:
    """One Predexon channel: how to subscribe, its topic, schema, fields and identity."""

    name: str
    platform: str
    type: str
    topic: str
    schema: str
    event_types: frozenset[str]
    fields: tuple[tuple[str, str], ...]
    """(upstream field name, kind) in schema order; every one is optional in Avro."""
    selectors: tuple[str, ...]
    """Allowed filter keys (exactly one per subscription)."""
    key_fields: tuple[str, ...]
    """Kafka key: the first of these present in the event. (`timestamp`, in a unit Predexon
    does not publish, becomes `event_time` by its magnitude: `bridge.event_times`.)"""
    updatable: bool = True


_ONCHAIN = (("tx_hash", "string"), ("log_index", "string"), ("block_number", "string"))
_MARKET = (
    ("condition_id", "string"),
    ("market_slug", "string"),
    ("market_id", "string"),
    ("title", "string"),
    ("image", "string"),
)

CHANNELS: dict[str, Channel] = {
    c.name: c
    for c in (
        Channel(
            "orders",
            "polymarket",
            "orders",
            "predexon.polymarket.trades",
            "predexon.polymarket.TradeEvent",
            frozenset({"order_filled", "fee_refund"}),
            (
                ("status", "string"),
                ("user", "string"),
                ("taker", "string"),
                ("side", "string"),
                ("price", "decimal"),
                ("shares", "decimal"),
                ("shares_normalized", "decimal"),
                ("fee", "decimal"),
                ("refund", "decimal"),
                ("fee_charged", "decimal"),
                ("token_id", "string"),
                ("token_label", "string"),
                ("outcome", "string"),
                ("outcome_index", "int"),
                ("is_neg_risk", "bool"),
                *_MARKET,
                ("order_hash", "string"),
                ("tx_hash", "string"),
                ("log_index", "string"),
                ("timestamp", "int"),
                ("version", "int"),
                ("builder", "string"),
                ("metadata", "string"),
                ("role", "string"),
                ("complement_token_id", "string"),
                ("complement_token_label", "string"),
            ),
            ("users", "condition_ids", "market_slugs"),
            ("condition_id", "token_id"),
        ),
        Channel(
            "activity",
            "polymarket",
            "activity",
            "predexon.polymarket.activity",
            "predexon.polymarket.ActivityEvent",
            frozenset({"split", "merge", "redeem", "conversion"}),
            (
                ("user", "string"),
                *_MARKET,
                ("collateral_token", "string"),
                ("amount", "decimal"),
                ("amount_normalized", "decimal"),
                ("payout", "decimal"),
                ("payout_normalized", "decimal"),
                *_ONCHAIN,
                ("timestamp", "int"),
                ("tokens", "tokens"),
                ("version", "int"),
            ),
            ("users", "condition_ids"),
            ("condition_id",),
        ),
        Channel(
            "lifecycle",
            "polymarket",
            "lifecycle",
            "predexon.polymarket.lifecycle",
            "predexon.polymarket.LifecycleEvent",
            frozenset({"condition_prepared", "token_registered", "condition_resolution"}),
            (
                *_MARKET,
                ("oracle", "string"),
                ("question_id", "string"),
                ("is_neg_risk", "bool"),
                ("outcome_slot_count", "int"),
                ("is_invalid", "bool"),
                ("tokens", "tokens"),
                *_ONCHAIN,
                ("timestamp", "int"),
            ),
            ("condition_ids",),
            ("condition_id",),
        ),
        Channel(
            "orderbook",
            "polymarket",
            "orderbook",
            "predexon.polymarket.orderbook",
            "predexon.polymarket.OrderbookEvent",
            frozenset(
                {
                    "book_snapshot",
                    "snapshots_done",
                    "price_change",
                    "last_trade",
                    "tick_size_change",
                    "resync",
                }
            ),
            (
                ("token_id", "string"),
                ("condition_id", "string"),
                ("slug", "string"),
                ("question", "string"),
                ("outcome", "string"),
                ("timestamp", "int"),
                ("bids", "levels"),
                ("asks", "levels"),
                ("hash", "string"),
                ("side", "string"),
                ("price", "decimal"),
                ("size", "decimal"),
                ("best_bid", "decimal"),
                ("best_ask", "decimal"),
                ("fee_rate_bps", "decimal"),
                ("tick_size", "decimal"),
                ("count", "int"),
            ),
            ("token_ids", "condition_ids", "market_slugs"),
            ("token_id",),
            updatable=False,
        ),
        Channel(
            "oracle",
            "polymarket",
            "oracle",
            "predexon.polymarket.oracle",
            "predexon.polymarket.OracleEvent",
            frozenset({"proposal", "dispute", "settlement", "reset"}),
            (
                ("condition_id", "string"),
                ("market_id", "string"),
                ("title", "string"),
                ("market_slug", "string"),
                ("outcomes", "json"),
                ("tokens", "tokens"),
                ("is_neg_risk", "bool"),
                ("proposer", "string"),
                ("proposed_price", "decimal"),
                ("expiration_timestamp", "int"),
                ("request_timestamp", "int"),
                ("timestamp", "int"),
                ("tx_hash", "string"),
                ("log_index", "string"),
            ),
            ("condition_ids", "market_slugs"),
            ("condition_id",),
        ),
        Channel(
            "collateral",
            "polymarket",
            "collateral",
            "predexon.polymarket.collateral",
            "predexon.polymarket.CollateralEvent",
            frozenset({"polyusd_wrapped", "polyusd_unwrapped"}),
            (
                ("user", "string"),
                ("asset", "string"),
                ("amount", "decimal"),
                ("amount_normalized", "decimal"),
                *_ONCHAIN,
                ("timestamp", "int"),
                ("version", "int"),
            ),
            ("users",),
            ("user",),
        ),
        Channel(
            "crypto",
            "chainlink",
            "crypto",
            "predexon.chainlink.crypto",
            "predexon.chainlink.CryptoPriceEvent",
            frozenset({"price_feed"}),
            (
                ("feed", "string"),
                ("price", "decimal"),
                ("bid", "decimal"),
                ("ask", "decimal"),
                ("observed_at", "int"),
                ("timestamp", "int"),
            ),
            ("feeds",),
            ("feed",),
        ),
    )
}

CONTROL_TYPES = frozenset({"connected", "ack", "error", "pong"})
"""Frame types that are protocol, not data: handled by the connection, never mapped."""
