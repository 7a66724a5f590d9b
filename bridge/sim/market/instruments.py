"""The simulated market's instruments: the listings it starts with, and each new listing's
reference data (prices, limits, trading schedule) drawn from the seed."""

from __future__ import annotations

import datetime as dt
import json
import random
from dataclasses import dataclass, field

from polymarket.v1 import refdata_pb2, types_pb2

IS = refdata_pb2  # InstrumentState values live in refdata.proto

Listing = tuple[str, str, str, str, str, str]
"""(prefix, league, event, yyyy-mm-dd, outcome, description)."""

# The first listings of a market; a terminated one is relisted a week later.
LISTINGS: tuple[Listing, ...] = (
    ("tec", "nfl", "sbw", "2026-02-08", "kc", "Super Bowl LX winner: Kansas City"),
    ("tec", "nfl", "sbw", "2026-02-08", "phi", "Super Bowl LX winner: Philadelphia"),
    ("tec", "nba", "fin", "2026-06-11", "okc", "NBA Finals winner: Oklahoma City"),
    ("tec", "mlb", "wsr", "2026-10-24", "lad", "World Series winner: Los Angeles Dodgers"),
    ("tec", "epl", "win", "2026-05-24", "ars", "Premier League champion: Arsenal"),
    ("pol", "usp", "pres", "2028-11-07", "dem", "2028 US presidential election: Democrat"),
    ("pol", "usp", "pres", "2028-11-07", "rep", "2028 US presidential election: Republican"),
    ("pol", "fed", "fomc", "2026-03-18", "cut25", "FOMC March 2026: 25 bp cut"),
)


@dataclass(slots=True)
class Instrument:
    proto: refdata_pb2.Instrument
    template: Listing
    generation: int
    pending_states: list[int] = field(default_factory=list)
    """States it moves through next, one per market step, before any other action."""

    @property
    def symbol(self) -> str:
        return self.proto.symbol


def new_instrument(rng: random.Random, template: Listing, gen: int) -> Instrument:
    """Listing `template`, `gen` weeks after its first listing; state PENDING, about to move
    to PREOPEN then OPEN."""
    prefix, league, event, day, outcome, description = template
    event_day = dt.date.fromisoformat(day) + dt.timedelta(days=7 * gen)
    symbol = f"{prefix}-{league}-{event}-{event_day.isoformat()}-{outcome}"
    price_scale = rng.choice((100, 1000))
    qty_scale = rng.choice((1, 100))

    def date(d: dt.date) -> types_pb2.Date:
        return types_pb2.Date(year=d.year, month=d.month, day=d.day)

    relative = rng.random() < 0.5
    proto = refdata_pb2.Instrument(
        symbol=symbol,
        tick_size=1.0 / price_scale,
        base_currency="USD",
        multiplier=1.0,
        minimum_trade_qty=qty_scale,
        start_date=date(event_day - dt.timedelta(days=90)),
        expiration_date=date(event_day),
        termination_date=date(event_day + dt.timedelta(days=3)),
        description=description if gen == 0 else f"{description} (week +{gen})",
        clearing_house="pmx-clearing",
        minimum_unaffiliated_firms=rng.choice((0, 1, 2)),
        json_attributes=json.dumps(
            {"league": league.upper(), "event": event, "outcome": outcome},
            separators=(",", ":"),
        ),
        product_id=f"{prefix}-{league}-{event}",
        price_limit=refdata_pb2.PriceLimit(
            low=1,
            high=price_scale - 1,
            low_set=True,
            high_set=True,
            relative_low=0.25 if relative else 0.0,
            relative_high=0.25 if relative else 0.0,
            relative_low_set=relative,
            relative_high_set=relative,
        ),
        order_size_limit=refdata_pb2.OrderSizeLimit(
            low=qty_scale,
            high=50_000 * qty_scale,
            low_set=True,
            high_set=True,
            total_notional_low=price_scale,
            total_notional_high=5_000_000 * price_scale,
            total_notional_low_set=rng.random() < 0.5,
            total_notional_high_set=True,
        ),
        expiration_time=types_pb2.TimeOfDay(hours=23, minutes=59, seconds=59),
        trade_settlement_period=1,
        state=IS.INSTRUMENT_STATE_PENDING,
        price_scale=price_scale,
        fractional_qty_scale=qty_scale,
        settlement_currency="USD",
        settlement_price_scale=price_scale,
        metadata={"category": "sports" if prefix == "tec" else "politics", "league": league},
    )
    weekdays = [1, 2, 3, 4, 5]
    for hh, mm, minutes, state, hide, expire in (
        (13, 0, 30, IS.INSTRUMENT_STATE_PREOPEN, True, False),
        (13, 30, 510, IS.INSTRUMENT_STATE_OPEN, False, False),
        (22, 0, 900, IS.INSTRUMENT_STATE_CLOSED, False, True),
    ):
        hours = proto.trading_schedule.add(
            days_of_week=weekdays,
            time_of_day=types_pb2.TimeOfDay(hours=hh, minutes=mm, seconds=0),
            state=state,
            hide_market_data=hide,
            expire_all_orders=expire,
        )
        hours.duration.FromSeconds(minutes * 60)
    instrument = Instrument(proto, template, gen)
    instrument.pending_states = [IS.INSTRUMENT_STATE_PREOPEN, IS.INSTRUMENT_STATE_OPEN]
    return instrument
