"""Seeded, realistic Predexon events for every channel (the simulator's data source).

All randomness comes from one `random.Random(seed)`, so a seed gives the same markets,
users and event sequence. Numbers are `Decimal`s and are written to JSON as exact text,
like Predexon: prices, shares and fees are JSON numbers on trades and activity, strings on
the orderbook; `log_index` and `block_number` are hex strings; timestamps are Unix seconds
(orderbook: milliseconds; crypto: `crypto_time_unit`, seconds by default).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

FEEDS = ("BTC/USD", "ETH/USD", "SOL/USD", "XRP/USD", "BNB/USD", "DOGE/USD", "HYPE/USD")
_FEED_PRICE = {
    "BTC/USD": Decimal("97000"),
    "ETH/USD": Decimal("3400"),
    "SOL/USD": Decimal("190"),
    "XRP/USD": Decimal("2.3"),
    "BNB/USD": Decimal("690"),
    "DOGE/USD": Decimal("0.32"),
    "HYPE/USD": Decimal("24"),
}
EXCHANGE_V1 = "0x4bfb41d5b3570defd03c39a9a4d8de6bd8b8982e"
EXCHANGE_V2 = "0xe111180000d2663c0091e4f400237545b87b996b"
USDC = "0x2791bca1f2de4661ed88a30c99a7a9449aa84174"
POLYUSD = "0x5e3b1ca0a1fc1b2b5ce1bd0ac0bb2a0b7e4a5d3f"
ORACLE = "0x6a9d222616c90fca5754cd1333cfd9b7fb6a4f74"
CRYPTO_TIME_UNITS = {"s": 1, "ms": 1_000, "us": 1_000_000}
"""Units the crypto channel's times can be sent in: per second."""
_CENT = Decimal("0.01")
_MICRO = Decimal("0.000001")


@dataclass(frozen=True, slots=True)
class Market:
    condition_id: str
    question_id: str
    market_id: str
    slug: str
    title: str
    image: str
    is_neg_risk: bool
    tokens: tuple[tuple[str, str], ...]
    """(token_id, label) per outcome."""


class Universe:
    """The fixed world events happen in: markets, tokens and wallets (from the seed)."""

    def __init__(self, rng: random.Random, markets: int = 6, users: int = 8) -> None:
        self.markets: list[Market] = []
        for i in range(markets):
            slug = f"will-event-{i}-happen-{rng.randrange(2026, 2030)}"
            tokens = tuple(
                (str(rng.getrandbits(252)), label)
                for label in (("Yes", "No") if i % 3 else ("Up", "Down"))
            )
            self.markets.append(
                Market(
                    condition_id=_hex(rng, 32),
                    question_id=_hex(rng, 32),
                    market_id=str(500_000 + rng.randrange(100_000)),
                    slug=slug,
                    title=f"Will event {i} happen?",
                    image=f"https://polymarket-upload.s3.us-east-2.amazonaws.com/{slug}.png",
                    is_neg_risk=i % 2 == 1,
                    tokens=tokens,
                )
            )
        self.users = [_hex(rng, 20) for _ in range(users)]
        self.token_market = {t: m for m in self.markets for t, _ in m.tokens}


def _hex(rng: random.Random, nbytes: int) -> str:
    return "0x" + rng.getrandbits(nbytes * 8).to_bytes(nbytes, "big").hex()


class EventFactory:
    """Makes events; `make(channel, now_s)` returns `[(delay_s, data), ...]` to emit.

    A delay > 0 schedules follow-ups: confirmed fills 3-5 s (times `confirm_scale`) after
    their pending rows, `fee_refund`s 2-50 ms after a V1 confirmation.
    """

    def __init__(
        self,
        seed: int,
        *,
        confirm_scale: float = 1.0,
        newer_keys: bool = False,
        crypto_time_unit: str = "s",
    ) -> None:
        if crypto_time_unit not in CRYPTO_TIME_UNITS:
            raise ValueError(f"crypto_time_unit must be one of {sorted(CRYPTO_TIME_UNITS)}")
        self.rng = random.Random(seed)
        self._crypto_per_s = CRYPTO_TIME_UNITS[crypto_time_unit]
        self.universe = Universe(self.rng)
        self.confirm_scale = confirm_scale
        self.newer_keys = newer_keys
        self._made = 0
        self._block = 68_000_000
        self._log = 0
        self._prices = dict(_FEED_PRICE)

    # -- helpers ---------------------------------------------------------------------
    def _market(self) -> Market:
        return self.rng.choice(self.universe.markets)

    def _onchain(self, now_s: float) -> dict[str, Any]:
        self._block += self.rng.randrange(1, 3)
        self._log = self.rng.randrange(0, 900)
        return {
            "tx_hash": _hex(self.rng, 32),
            "log_index": hex(self._log),
            "block_number": hex(self._block),
            "timestamp": int(now_s),
        }

    def _market_fields(self, m: Market) -> dict[str, Any]:
        return {
            "title": m.title,
            "market_slug": m.slug,
            "market_id": m.market_id,
            "image": m.image,
        }

    def _tokens(self, m: Market, won: int | None = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for i, (token_id, label) in enumerate(m.tokens):
            t: dict[str, Any] = {"token_id": token_id, "label": label}
            if won is not None:
                t["won"] = i == won
            out.append(t)
        return out

    def make(self, channel: str, now_s: float) -> list[tuple[float, dict[str, Any]]]:
        events: list[tuple[float, dict[str, Any]]] = getattr(self, f"_make_{channel}")(now_s)
        if self.newer_keys:
            for _, data in events:
                self._add_newer_keys(data)
        return events

    def _add_newer_keys(self, data: dict[str, Any]) -> None:
        """Keys a newer Predexon might send, unknown to the bridge's mapper: one on every
        event (an exact decimal inside, to show it is kept as sent) and one on each token."""
        self._made += 1
        data["venue_sequence"] = {"n": self._made, "weight": Decimal("1.10")}
        for token in data.get("tokens") or ():
            token["icon"] = f"https://example.invalid/{token['token_id'][:8]}.png"

    # -- orders ----------------------------------------------------------------------
    def _make_orders(self, now_s: float) -> list[tuple[float, dict[str, Any]]]:
        rng = self.rng
        m = self._market()
        outcome_index = rng.randrange(len(m.tokens))
        token_id, label = m.tokens[outcome_index]
        comp_id, comp_label = m.tokens[1 - outcome_index]
        version = rng.choice((1, 2))
        tx = _hex(rng, 32)
        taker_user = rng.choice(self.universe.users)
        taker_side = rng.choice(("BUY", "SELL"))
        maker_side = "SELL" if taker_side == "BUY" else "BUY"
        price = Decimal(rng.randrange(1, 100)) * _CENT
        makers = rng.sample([u for u in self.universe.users if u != taker_user], rng.randint(1, 3))
        delay = rng.uniform(3.0, 5.0) * self.confirm_scale
        block_time = int(now_s + delay)
        base_log = rng.randrange(0, 800)
        common = {
            "token_id": token_id,
            "token_label": label,
            "outcome": label,
            "outcome_index": outcome_index,
            "is_neg_risk": m.is_neg_risk,
            "condition_id": m.condition_id,
            "market_slug": m.slug,
            "market_id": m.market_id,
            "title": m.title,
            "image": m.image,
            "tx_hash": tx,
            "version": version,
            "builder": _hex(rng, 20) if version == 2 else None,
            "metadata": _hex(rng, 32) if version == 2 else None,
            "complement_token_id": comp_id,
            "complement_token_label": comp_label,
        }
        rows: list[dict[str, Any]] = []
        total = Decimal(0)
        total_fee = Decimal(0)
        for i, maker in enumerate(makers):
            shares_n = (Decimal(rng.randrange(1_000, 500_000)) * _CENT).quantize(_MICRO)
            total += shares_n
            fee = (shares_n * price * Decimal("0.001")).quantize(_MICRO)
            total_fee += fee
            rows.append(
                {
                    "user": maker,
                    "taker": taker_user,
                    "side": maker_side,
                    "shares_normalized": shares_n,
                    "fee": fee,
                    "order_hash": _hex(rng, 32),
                    "log_index": hex(base_log + i),
                    "role": "maker",
                }
            )
        rows.append(
            {
                "user": taker_user,
                "taker": EXCHANGE_V2 if version == 2 else EXCHANGE_V1,
                "side": taker_side,
                "shares_normalized": total,
                "fee": total_fee,
                "order_hash": _hex(rng, 32),
                "log_index": hex(base_log + len(makers)),
                "role": "taker",
            }
        )
        out: list[tuple[float, dict[str, Any]]] = []
        for row in rows:
            for status in ("pending", "confirmed"):
                # Pending price may differ slightly from the confirmed one (Predexon's docs).
                p = price if status == "confirmed" or rng.random() < 0.8 else price + _CENT
                shares_n = row["shares_normalized"]
                event = {
                    "event_type": "order_filled",
                    "status": status,
                    "user": row["user"],
                    "taker": row["taker"],
                    "side": row["side"],
                    "price": p,
                    "shares": int(shares_n * 1_000_000),
                    "shares_normalized": shares_n,
                    "fee": row["fee"],
                    **common,
                    "order_hash": row["order_hash"],
                    "log_index": row["log_index"] if status == "confirmed" else None,
                    "timestamp": int(now_s) if status == "pending" else block_time,
                    "role": row["role"],
                }
                out.append((0.0 if status == "pending" else delay, event))
            if version == 1 and row["role"] == "maker" and rng.random() < 0.5:
                out.append(
                    (
                        delay + rng.uniform(0.002, 0.050),
                        {
                            "event_type": "fee_refund",
                            "user": row["user"],
                            "token_id": token_id,
                            "condition_id": m.condition_id,
                            "market_slug": m.slug,
                            "title": m.title,
                            "order_hash": row["order_hash"],
                            "tx_hash": tx,
                            "refund": (row["fee"] / 2).quantize(_MICRO),
                            "fee_charged": row["fee"],
                        },
                    )
                )
        return out

    # -- activity --------------------------------------------------------------------
    def _make_activity(self, now_s: float) -> list[tuple[float, dict[str, Any]]]:
        rng = self.rng
        m = self._market()
        kind = rng.choice(("split", "merge", "redeem", "conversion"))
        amount_n = (Decimal(rng.randrange(100, 1_000_000)) * _CENT).quantize(_MICRO)
        event: dict[str, Any] = {
            "event_type": kind,
            "user": rng.choice(self.universe.users),
            "condition_id": None if kind == "conversion" else m.condition_id,
            "collateral_token": USDC,
            "amount": int(amount_n * 1_000_000),
            "amount_normalized": amount_n,
            **self._onchain(now_s),
            **self._market_fields(m),
            "tokens": self._tokens(m),
            "version": rng.choice((1, 2)),
        }
        if kind == "redeem":
            payout_n = amount_n if rng.random() < 0.5 else Decimal(0)
            event["payout"] = int(payout_n * 1_000_000)
            event["payout_normalized"] = payout_n
        return [(0.0, event)]

    # -- lifecycle -------------------------------------------------------------------
    def _make_lifecycle(self, now_s: float) -> list[tuple[float, dict[str, Any]]]:
        rng = self.rng
        m = self._market()
        kind = rng.choice(("condition_prepared", "token_registered", "condition_resolution"))
        event: dict[str, Any] = {
            "event_type": kind,
            "condition_id": m.condition_id,
            "oracle": ORACLE,
            "question_id": m.question_id,
            "is_neg_risk": m.is_neg_risk,
            "tokens": self._tokens(m, rng.randrange(2) if kind == "condition_resolution" else None),
            **self._market_fields(m),
            **self._onchain(now_s),
        }
        if kind == "condition_prepared":
            event["outcome_slot_count"] = len(m.tokens)
        if kind == "condition_resolution":
            event["is_invalid"] = rng.random() < 0.05
        return [(0.0, event)]

    # -- oracle ----------------------------------------------------------------------
    def _make_oracle(self, now_s: float) -> list[tuple[float, dict[str, Any]]]:
        rng = self.rng
        m = self._market()
        return [
            (
                0.0,
                {
                    "event_type": rng.choice(("proposal", "dispute", "settlement", "reset")),
                    "condition_id": m.condition_id,
                    "market_id": m.market_id,
                    "title": m.title,
                    "market_slug": m.slug,
                    "outcomes": [label for _, label in m.tokens],
                    "tokens": self._tokens(m),
                    "is_neg_risk": m.is_neg_risk,
                    "proposer": rng.choice(self.universe.users),
                    "proposed_price": rng.choice((Decimal(0), Decimal(1), Decimal("0.5"))),
                    "expiration_timestamp": int(now_s) + 7200,
                    "request_timestamp": int(now_s) - rng.randrange(60, 3600),
                    "timestamp": int(now_s),
                },
            )
        ]

    # -- collateral ------------------------------------------------------------------
    def _make_collateral(self, now_s: float) -> list[tuple[float, dict[str, Any]]]:
        rng = self.rng
        amount_n = (Decimal(rng.randrange(100, 10_000_000)) * _CENT).quantize(_MICRO)
        return [
            (
                0.0,
                {
                    "event_type": rng.choice(("polyusd_wrapped", "polyusd_unwrapped")),
                    "user": rng.choice(self.universe.users),
                    "asset": POLYUSD,
                    "amount": int(amount_n * 1_000_000),
                    "amount_normalized": amount_n,
                    **self._onchain(now_s),
                    "version": 2,
                },
            )
        ]

    # -- crypto ----------------------------------------------------------------------
    def _make_crypto(self, now_s: float) -> list[tuple[float, dict[str, Any]]]:
        rng = self.rng
        feed = rng.choice(FEEDS)
        price = self._prices[feed] * (1 + Decimal(rng.randrange(-50, 51)) / 100_000)
        price = price.quantize(Decimal("0.00000001"))
        self._prices[feed] = price
        spread = (price * Decimal("0.0001")).quantize(Decimal("0.00000001"))
        return [
            (
                0.0,
                {
                    "event_type": "price_feed",
                    "feed": feed,
                    "price": price,
                    "bid": price - spread,
                    "ask": price + spread,
                    "observed_at": int(now_s * self._crypto_per_s),
                    "timestamp": int(now_s * self._crypto_per_s),
                },
            )
        ]

    # -- orderbook -------------------------------------------------------------------
    def _book_common(self, token_id: str, now_s: float) -> dict[str, Any]:
        m = self.universe.token_market[token_id]
        label = dict(m.tokens)[token_id]
        return {
            "token_id": token_id,
            "condition_id": m.condition_id,
            "slug": m.slug,
            "outcome": label,
            "timestamp": int(now_s * 1000),
        }

    def _make_orderbook(self, now_s: float) -> list[tuple[float, dict[str, Any]]]:
        rng = self.rng
        m = self._market()
        token_id = rng.choice(m.tokens)[0]
        kind = rng.choices(("price_change", "last_trade", "tick_size_change"), (85, 14, 1))[0]
        price = str(Decimal(rng.randrange(1, 100)) * _CENT)
        size = str(Decimal(rng.randrange(0, 100_000)) * _CENT) if rng.random() > 0.1 else "0"
        event: dict[str, Any] = {"event_type": kind, **self._book_common(token_id, now_s)}
        if kind == "price_change":
            bid = Decimal(rng.randrange(1, 98)) * _CENT
            event |= {
                "side": rng.choice(("BUY", "SELL")),
                "price": price,
                "size": size,
                "best_bid": str(bid),
                "best_ask": str(bid + _CENT),
            }
        elif kind == "last_trade":
            event |= {
                "side": rng.choice(("BUY", "SELL")),
                "price": price,
                "size": str(Decimal(rng.randrange(1, 10_000)) * _CENT),
                "fee_rate_bps": "0",
            }
        else:
            event["tick_size"] = rng.choice(("0.01", "0.001"))
        return [(0.0, event)]

    def book_snapshot(self, token_id: str, now_s: float) -> dict[str, Any]:
        """A full book for one token, as sent after an orderbook subscription's ack."""
        rng = self.rng
        m = self.universe.token_market[token_id]
        mid = rng.randrange(10, 90)
        common = self._book_common(token_id, now_s)
        return {
            "event_type": "book_snapshot",
            **common,
            "question": m.title,
            "bids": [
                {"price": str(Decimal(mid - i) * _CENT), "size": str(rng.randrange(1, 5000))}
                for i in range(1, 6)
            ],
            "asks": [
                {"price": str(Decimal(mid + i) * _CENT), "size": str(rng.randrange(1, 5000))}
                for i in range(0, 5)
            ],
            "hash": _hex(rng, 20)[2:],
        }

    def tokens_for(self, filters: dict[str, Any]) -> list[str]:
        """The token ids an orderbook subscription covers (for its snapshots)."""
        markets = self.universe.markets
        if "token_ids" in filters:
            return [t for t in filters["token_ids"] if t in self.universe.token_market]
        if "condition_ids" in filters:
            wanted = set(filters["condition_ids"])
            return [t for m in markets if m.condition_id in wanted for t, _ in m.tokens]
        if "market_slugs" in filters:
            wanted = set(filters["market_slugs"])
            return [t for m in markets if m.slug in wanted for t, _ in m.tokens]
        return []
