"""Seeded market activity for the DropCopy simulator: instruments, orders, trades, positions.

`MarketGenerator.step(now_us)` advances the market by one action (list an instrument, change
its trading state, rest an order, cross two orders, replace, cancel, expire, clear or bust a
trade) and returns the records that action produced, each tagged with its stream, symbol,
owning firms and event time. The same seed and the same clock readings give byte-identical
records. Prices and quantities are raw fixed-point integers (`price_scale` 100 or 1000,
`fractional_quantity_scale` 1 or 100), never floats.

Invariants the bridge's tests may rely on:
- an order's executions go NEW -> (PARTIAL_FILL ...) -> FILL / CANCELED / EXPIRED, or are a
  single REJECTED; REPLACE changes price/quantity of a resting order;
- every fill appears as two executions (aggressor, passive), one `Trade` (state NEW, re-sent as
  CLEARED, some later re-sent as BUSTED) and two position changes;
- `net_position == bod_position + qty_bought - qty_sold` (a bust reverses its fill);
- instruments go PENDING -> PREOPEN -> OPEN, sometimes HALTED / SUSPENDED /
  MATCH_AND_CLOSE_AUCTION and back, CLOSED, EXPIRED, TERMINATED; a terminated instrument is
  replaced by a new listing so the market never runs dry.
"""

from __future__ import annotations

import random

from bridge.sim.market.instruments import IS, LISTINGS, Instrument, Listing, new_instrument
from bridge.sim.market.matching import OrderBooks
from bridge.sim.market.orders import Participants
from bridge.sim.market.positions import PositionLedger
from bridge.sim.market.records import (
    EXECUTIONS,
    INSTRUMENT_STATES,
    POSITION_CHANGES,
    STREAMS,
    TRADE_CAPTURES,
    MarketRecord,
    Tape,
)
from polymarket.v1 import enums_pb2, refdata_pb2

DEFAULT_FIRMS: tuple[str, ...] = (
    "firms/acme-capital",
    "firms/bluefin-trading",
    "firms/cobalt-markets",
)

_TRADABLE = (IS.INSTRUMENT_STATE_OPEN,)

# Relative weights of the actions `step` picks among once the market is open. Fills and
# resting orders dominate, as on a real venue; state changes are rare but frequent enough
# that a few thousand records show every lifecycle.
_ACTION_WEIGHTS: dict[str, int] = {
    "rest": 30,
    "cross": 34,
    "replace": 7,
    "cancel": 8,
    "expire": 2,
    "clear": 14,
    "instrument": 2,
}


class MarketGenerator:
    """Deterministic market: `step(now_us)` returns the next action's records.

    It picks the action and runs the instruments' lifecycle; the order books
    (`matching`), orders (`orders`) and positions (`positions`) do the
    rest, all drawing from one seeded random source in the same order for the same clock.
    """

    def __init__(self, seed: int = 0, firms: tuple[str, ...] = DEFAULT_FIRMS) -> None:
        self._rng = random.Random(seed)
        self._firms = firms
        self._tape = Tape(self._rng)
        self._positions = PositionLedger(self._tape)
        self._books = OrderBooks(
            self._tape, Participants.generate(self._rng, firms), self._positions
        )
        self._instruments: list[Instrument] = []
        self._listed = False

    # -- public ----------------------------------------------------------------------------

    @property
    def firms(self) -> tuple[str, ...]:
        return self._firms

    @property
    def symbols(self) -> list[str]:
        """Symbols of the instruments currently listed (not yet terminated)."""
        return [i.symbol for i in self._instruments]

    def step(self, now_us: int) -> list[MarketRecord]:
        """Advance by one action at `now_us` (clamped to be strictly increasing)."""
        self._tape.begin(now_us)
        if not self._listed:
            # The first step lists the initial instruments (state PENDING).
            self._listed = True
            for template in LISTINGS:
                self._list_instrument(template, 0)
            return self._tape.records
        staged = [i for i in self._instruments if i.pending_states]
        if staged:
            self._advance_lifecycle(self._rng.choice(staged))
            return self._tape.records
        action = self._rng.choices(list(_ACTION_WEIGHTS), list(_ACTION_WEIGHTS.values()))[0]
        open_instruments = [
            i for i in self._instruments if i.proto.state in _TRADABLE and not i.proto.non_tradable
        ]
        books = self._books
        if action == "instrument" or not open_instruments:
            self._instrument_event()
        elif action == "clear" and books.has_pending_trades:
            books.clear_trade()
        else:
            instrument = self._rng.choice(open_instruments)
            resting = books.resting(instrument.symbol)
            if action in ("replace", "cancel", "expire") and resting:
                order = self._rng.choice(resting)
                if action == "replace":
                    books.replace(order)
                elif action == "cancel":
                    books.cancel(order)
                else:
                    books.end(order, enums_pb2.EXECUTION_TYPE_EXPIRED, "good-till-time reached")
            elif action == "cross" and resting:
                books.cross(instrument)
            else:
                books.rest(instrument)
        return self._tape.records

    # -- instrument lifecycle --------------------------------------------------------------

    def _list_instrument(self, template: Listing, gen: int) -> None:
        instrument = new_instrument(self._rng, template, gen)
        self._instruments.append(instrument)
        self._books.open(instrument.symbol)
        self._emit_instrument(instrument)

    def _emit_instrument(self, instrument: Instrument) -> None:
        copy = refdata_pb2.Instrument()
        copy.CopyFrom(instrument.proto)
        self._tape.emit(INSTRUMENT_STATES, instrument.symbol, (), copy)

    def _set_state(self, instrument: Instrument, state: int) -> None:
        instrument.proto.state = state  # type: ignore[assignment]
        if state in (IS.INSTRUMENT_STATE_EXPIRED, IS.INSTRUMENT_STATE_TERMINATED):
            instrument.proto.non_tradable = True
        self._emit_instrument(instrument)
        if state == IS.INSTRUMENT_STATE_EXPIRED:
            for order in list(self._books.resting(instrument.symbol)):
                self._books.end(order, enums_pb2.EXECUTION_TYPE_EXPIRED, "instrument expired")
            self._positions.expire(instrument.symbol)
        elif state == IS.INSTRUMENT_STATE_TERMINATED:
            self._instruments.remove(instrument)
            self._books.close(instrument.symbol)
            self._list_instrument(instrument.template, instrument.generation + 1)

    def _advance_lifecycle(self, instrument: Instrument) -> None:
        self._set_state(instrument, instrument.pending_states.pop(0))

    def _instrument_event(self) -> None:
        instrument = self._rng.choice(self._instruments)
        state = instrument.proto.state
        roll = self._rng.random()
        if state == IS.INSTRUMENT_STATE_OPEN:
            if roll < 0.35:
                self._set_state(instrument, IS.INSTRUMENT_STATE_HALTED)
                instrument.pending_states = [IS.INSTRUMENT_STATE_OPEN]
            elif roll < 0.6:
                self._set_state(instrument, IS.INSTRUMENT_STATE_SUSPENDED)
                instrument.pending_states = [
                    IS.INSTRUMENT_STATE_PREOPEN,
                    IS.INSTRUMENT_STATE_OPEN,
                ]
            elif roll < 0.9:
                # End of a trading day: auction, close, reopen next session.
                self._set_state(instrument, IS.INSTRUMENT_STATE_MATCH_AND_CLOSE_AUCTION)
                instrument.pending_states = [
                    IS.INSTRUMENT_STATE_CLOSED,
                    IS.INSTRUMENT_STATE_PREOPEN,
                    IS.INSTRUMENT_STATE_OPEN,
                ]
            else:
                # The event happened: the market closes for good.
                self._set_state(instrument, IS.INSTRUMENT_STATE_CLOSED)
                instrument.pending_states = [
                    IS.INSTRUMENT_STATE_EXPIRED,
                    IS.INSTRUMENT_STATE_TERMINATED,
                ]
        elif not instrument.pending_states:
            self._set_state(instrument, IS.INSTRUMENT_STATE_OPEN)


__all__ = [
    "DEFAULT_FIRMS",
    "EXECUTIONS",
    "INSTRUMENT_STATES",
    "POSITION_CHANGES",
    "STREAMS",
    "TRADE_CAPTURES",
    "MarketGenerator",
    "MarketRecord",
]
