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

import datetime as dt
import json
import random
from dataclasses import dataclass, field

from google.protobuf.message import Message

from polymarket.v1 import (
    dropcopy_pb2,
    enums_pb2,
    orders_pb2,
    positions_pb2,
    refdata_pb2,
    trading_pb2,
    types_pb2,
)

EXECUTIONS = "executions"
TRADE_CAPTURES = "trade_captures"
INSTRUMENT_STATES = "instrument_states"
POSITION_CHANGES = "position_changes"
STREAMS: tuple[str, ...] = (EXECUTIONS, TRADE_CAPTURES, INSTRUMENT_STATES, POSITION_CHANGES)

DEFAULT_FIRMS: tuple[str, ...] = (
    "firms/acme-capital",
    "firms/bluefin-trading",
    "firms/cobalt-markets",
)

IS = refdata_pb2  # InstrumentState values live in refdata.proto
_TRADABLE = (IS.INSTRUMENT_STATE_OPEN,)
_USERS = ("alice", "bob", "carol", "dave", "erin", "frank")

# (prefix, league, event, yyyy-mm-dd, outcome, description); the first listings of a market.
_LISTINGS: tuple[tuple[str, str, str, str, str, str], ...] = (
    ("tec", "nfl", "sbw", "2026-02-08", "kc", "Super Bowl LX winner: Kansas City"),
    ("tec", "nfl", "sbw", "2026-02-08", "phi", "Super Bowl LX winner: Philadelphia"),
    ("tec", "nba", "fin", "2026-06-11", "okc", "NBA Finals winner: Oklahoma City"),
    ("tec", "mlb", "wsr", "2026-10-24", "lad", "World Series winner: Los Angeles Dodgers"),
    ("tec", "epl", "win", "2026-05-24", "ars", "Premier League champion: Arsenal"),
    ("pol", "usp", "pres", "2028-11-07", "dem", "2028 US presidential election: Democrat"),
    ("pol", "usp", "pres", "2028-11-07", "rep", "2028 US presidential election: Republican"),
    ("pol", "fed", "fomc", "2026-03-18", "cut25", "FOMC March 2026: 25 bp cut"),
)

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


@dataclass(frozen=True, slots=True)
class MarketRecord:
    """One record for one stream: the message plus what the journal indexes it by."""

    stream: str
    symbol: str
    firms: tuple[str, ...]
    """Firms the record belongs to (accounts' firms); empty for instrument records."""
    time_us: int
    """Event time in microseconds since the epoch (see `bridge.sim.journal`)."""
    message: Message


@dataclass(slots=True)
class _Instrument:
    proto: refdata_pb2.Instrument
    template: tuple[str, str, str, str, str, str]
    generation: int
    pending_states: list[int] = field(default_factory=list)

    @property
    def symbol(self) -> str:
        return self.proto.symbol


@dataclass(slots=True)
class _Order:
    proto: trading_pb2.Order
    firm: str
    instrument: _Instrument


@dataclass(slots=True)
class _PendingTrade:
    proto: orders_pb2.Trade
    buyer: _Order
    seller: _Order
    qty: int
    px: int
    bust: bool


def _account_firm(account: str) -> str:
    return "/".join(account.split("/", 2)[:2])


class MarketGenerator:
    """Deterministic market: `step(now_us)` returns the next action's records."""

    def __init__(self, seed: int = 0, firms: tuple[str, ...] = DEFAULT_FIRMS) -> None:
        self._rng = random.Random(seed)
        self._firms = firms
        self._accounts: dict[str, list[str]] = {
            firm: [f"{firm}/accounts/{firm.split('/')[1][:3].upper()}-{n}" for n in (1, 2)]
            for firm in firms
        }
        self._users: dict[str, list[str]] = {
            firm: [f"{firm}/users/{u}" for u in self._rng.sample(_USERS, 2)] for firm in firms
        }
        self._instruments: list[_Instrument] = []
        self._book: dict[str, list[_Order]] = {}
        self._positions: dict[tuple[str, str], positions_pb2.Position] = {}
        self._pending_trades: list[_PendingTrade] = []
        self._counter = 0
        self._last_us = 0
        self._date_cache: tuple[int, types_pb2.Date] = (-1, types_pb2.Date())
        self._out: list[MarketRecord] = []
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
        self._last_us = max(now_us, self._last_us + 1)
        self._out = []
        if not self._listed:
            # The first step lists the initial instruments (state PENDING).
            self._listed = True
            for template in _LISTINGS:
                self._list_instrument(template, 0)
            return self._out
        staged = [i for i in self._instruments if i.pending_states]
        if staged:
            self._advance_lifecycle(self._rng.choice(staged))
            return self._out
        action = self._rng.choices(list(_ACTION_WEIGHTS), list(_ACTION_WEIGHTS.values()))[0]
        open_instruments = [
            i for i in self._instruments if i.proto.state in _TRADABLE and not i.proto.non_tradable
        ]
        if action == "instrument" or not open_instruments:
            self._instrument_event()
        elif action == "clear" and self._pending_trades:
            self._clear_trade()
        else:
            instrument = self._rng.choice(open_instruments)
            resting = self._book[instrument.symbol]
            if action in ("replace", "cancel", "expire") and resting:
                order = self._rng.choice(resting)
                if action == "replace":
                    self._replace(order)
                elif action == "cancel":
                    self._cancel(order)
                else:
                    self._end(order, enums_pb2.EXECUTION_TYPE_EXPIRED, "good-till-time reached")
            elif action == "cross" and resting:
                self._cross(instrument)
            else:
                self._rest(instrument)
        return self._out

    # -- helpers ---------------------------------------------------------------------------

    def _next_id(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}-{self._rng.getrandbits(40):010x}{self._counter:08d}"

    def _emit(self, stream: str, symbol: str, firms: tuple[str, ...], message: Message) -> None:
        self._out.append(MarketRecord(stream, symbol, firms, self._last_us, message))

    def _today(self) -> types_pb2.Date:
        day = self._last_us // 86_400_000_000
        if self._date_cache[0] != day:
            d = dt.date(1970, 1, 1) + dt.timedelta(days=day)
            self._date_cache = (day, types_pb2.Date(year=d.year, month=d.month, day=d.day))
        return self._date_cache[1]

    # -- instruments -----------------------------------------------------------------------

    def _list_instrument(self, template: tuple[str, str, str, str, str, str], gen: int) -> None:
        prefix, league, event, day, outcome, description = template
        event_day = dt.date.fromisoformat(day) + dt.timedelta(days=7 * gen)
        symbol = f"{prefix}-{league}-{event}-{event_day.isoformat()}-{outcome}"
        rng = self._rng
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
        instrument = _Instrument(proto, template, gen)
        instrument.pending_states = [IS.INSTRUMENT_STATE_PREOPEN, IS.INSTRUMENT_STATE_OPEN]
        self._instruments.append(instrument)
        self._book[symbol] = []
        self._emit_instrument(instrument)

    def _emit_instrument(self, instrument: _Instrument) -> None:
        copy = refdata_pb2.Instrument()
        copy.CopyFrom(instrument.proto)
        self._emit(INSTRUMENT_STATES, instrument.symbol, (), copy)

    def _set_state(self, instrument: _Instrument, state: int) -> None:
        instrument.proto.state = state  # type: ignore[assignment]
        if state in (IS.INSTRUMENT_STATE_EXPIRED, IS.INSTRUMENT_STATE_TERMINATED):
            instrument.proto.non_tradable = True
        self._emit_instrument(instrument)
        if state == IS.INSTRUMENT_STATE_EXPIRED:
            for order in list(self._book[instrument.symbol]):
                self._end(order, enums_pb2.EXECUTION_TYPE_EXPIRED, "instrument expired")
            for (account, symbol), position in self._positions.items():
                if symbol == instrument.symbol:
                    position.expired = True
                    self._emit_position(account, symbol)
        elif state == IS.INSTRUMENT_STATE_TERMINATED:
            self._instruments.remove(instrument)
            del self._book[instrument.symbol]
            self._list_instrument(instrument.template, instrument.generation + 1)

    def _advance_lifecycle(self, instrument: _Instrument) -> None:
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

    # -- orders ----------------------------------------------------------------------------

    def _new_order(
        self, instrument: _Instrument, side: int, price: int, aggressive: bool
    ) -> _Order:
        rng = self._rng
        firm = rng.choice(self._firms)
        user = rng.choice(self._users[firm])
        account = rng.choice(self._accounts[firm])
        qty_scale = instrument.proto.fractional_qty_scale
        qty = rng.choice((1, 2, 5, 10, 25, 50, 100, 250)) * qty_scale
        if qty_scale > 1 and rng.random() < 0.3:
            qty += rng.randrange(1, qty_scale)  # a fractional contract quantity
        now = self._last_us
        if aggressive:
            tif = rng.choice(
                (
                    enums_pb2.TIME_IN_FORCE_IMMEDIATE_OR_CANCEL,
                    enums_pb2.TIME_IN_FORCE_DAY,
                    enums_pb2.TIME_IN_FORCE_GOOD_TILL_CANCEL,
                    enums_pb2.TIME_IN_FORCE_FILL_OR_KILL,
                )
            )
            order_type = rng.choice(
                (enums_pb2.ORDER_TYPE_LIMIT, enums_pb2.ORDER_TYPE_MARKET_TO_LIMIT)
            )
        else:
            tif = rng.choice(
                (
                    enums_pb2.TIME_IN_FORCE_DAY,
                    enums_pb2.TIME_IN_FORCE_GOOD_TILL_CANCEL,
                    enums_pb2.TIME_IN_FORCE_GOOD_TILL_TIME,
                )
            )
            order_type = enums_pb2.ORDER_TYPE_LIMIT
            if rng.random() < 0.08:
                stops = (enums_pb2.ORDER_TYPE_STOP_LIMIT, enums_pb2.ORDER_TYPE_STOP)
                order_type = rng.choice(stops)
        proto = trading_pb2.Order(
            id=self._next_id("ord"),
            type=order_type,
            side=side,  # type: ignore[arg-type]
            order_qty=qty,
            symbol=instrument.symbol,
            clord_id=f"{rng.getrandbits(64):016x}",
            time_in_force=tif,
            account=account,
            leaves_qty=qty,
            state=enums_pb2.ORDER_STATE_NEW,
            participant=user,
            price=price,
            min_qty=qty_scale if rng.random() < 0.1 else 0,
            all_or_none=tif == enums_pb2.TIME_IN_FORCE_FILL_OR_KILL,
            submitting_participant=rng.choice(self._users[firm]),
            client_account_id=f"CA{rng.randrange(10_000, 99_999)}",
            client_participant_id=f"trader-{rng.randrange(100, 999)}",
            parent_order_id=self._next_id("ord") if rng.random() < 0.05 else "",
            commissions_basis_points=rng.choice(("0", "2.5", "5", "10")),
            participate_dont_initiate=not aggressive and rng.random() < 0.15,
            cash_order_qty=qty * price // qty_scale
            if order_type == enums_pb2.ORDER_TYPE_MARKET_TO_LIMIT
            else 0,
            strict_limit=rng.random() < 0.1,
            best_limit=rng.random() < 0.05,
            immediately_executable_limit=aggressive and rng.random() < 0.2,
            self_match_prevention_instruction=rng.choice(
                (
                    enums_pb2.SELF_MATCH_PREVENTION_INSTRUCTION_UNDEFINED,
                    enums_pb2.SELF_MATCH_PREVENTION_INSTRUCTION_REJECT_AGGRESSOR,
                    enums_pb2.SELF_MATCH_PREVENTION_INSTRUCTION_CANCEL_RESTING,
                    enums_pb2.SELF_MATCH_PREVENTION_INSTRUCTION_REMOVE_BOTH,
                )
            ),
            order_capacity=rng.choice(
                (
                    enums_pb2.ORDER_CAPACITY_PRINCIPAL,
                    enums_pb2.ORDER_CAPACITY_AGENCY,
                    enums_pb2.ORDER_CAPACITY_PROPRIETARY,
                )
            ),
            ignore_price_validity_checks=rng.random() < 0.02,
            price_scale=instrument.proto.price_scale,
            fractional_quantity_scale=qty_scale,
            maker_commissions_basis_points=rng.choice(("0", "1", "1.5")),
            manual_order_indicator=rng.choice(
                (
                    enums_pb2.MANUAL_ORDER_INDICATOR_AUTOMATED,
                    enums_pb2.MANUAL_ORDER_INDICATOR_MANUAL,
                )
            ),
        )
        if order_type in (enums_pb2.ORDER_TYPE_STOP_LIMIT, enums_pb2.ORDER_TYPE_STOP):
            proto.stop_price = price
        proto.insert_time.FromMicroseconds(now)
        proto.create_time.FromMicroseconds(now - rng.randrange(50, 5_000))
        proto.last_transact_time.FromMicroseconds(now)
        if tif == enums_pb2.TIME_IN_FORCE_GOOD_TILL_TIME:
            proto.good_till_time.FromMicroseconds(now + rng.randrange(60, 86_400) * 1_000_000)
        return _Order(proto, firm, instrument)

    def _execution(
        self,
        order: _Order,
        exec_type: int,
        *,
        last_shares: int = 0,
        last_px: int = 0,
        trade_id: str = "",
        aggressor: bool = False,
        text: str = "",
        reject_reason: int = 0,
        unsolicited: int = 0,
    ) -> None:
        rng = self._rng
        order.proto.last_transact_time.FromMicroseconds(self._last_us)
        notional = last_shares * last_px // order.proto.fractional_quantity_scale
        commission = notional * 25 // 10_000 if last_shares and aggressor else 0
        order.proto.commission_notional_total_collected += commission
        execution = trading_pb2.Execution(
            id=self._next_id("exe"),
            order=order.proto,
            last_shares=last_shares,
            last_px=last_px,
            type=exec_type,  # type: ignore[arg-type]
            text=text,
            order_reject_reason=reject_reason,  # type: ignore[arg-type]
            trade_id=trade_id,
            aggressor=aggressor,
            commission_notional_collected=commission,
            unsolicited_cancel_reason=unsolicited,  # type: ignore[arg-type]
            trace_id=f"{rng.getrandbits(128):032x}",
            commission_spread_px=rng.choice((0, 1, 2)) if last_shares else 0,
            transact_trade_date=self._today(),
        )
        execution.transact_time.FromMicroseconds(self._last_us)
        if last_shares and rng.random() < 0.1:
            # A fill priced through an implied spread: legs on the sibling outcomes.
            scale = order.proto.price_scale
            for anchor, symbol in ((True, order.proto.symbol), (False, f"{order.proto.symbol}-no")):
                execution.leg_prices.add(
                    symbol=symbol,
                    anchor=anchor,
                    px=last_px if anchor else scale - last_px,
                    qty=last_shares,
                    side="BUY" if (order.proto.side == enums_pb2.SIDE_BUY) == anchor else "SELL",
                    reference_px=last_px,
                )
        self._emit(EXECUTIONS, order.proto.symbol, (order.firm,), execution)

    def _random_price(self, instrument: _Instrument) -> int:
        scale = instrument.proto.price_scale
        mid = scale // 2 + self._rng.randrange(-scale // 4, scale // 4)
        return max(1, min(scale - 1, mid))

    def _rest(self, instrument: _Instrument) -> None:
        side = self._rng.choice((enums_pb2.SIDE_BUY, enums_pb2.SIDE_SELL))
        order = self._new_order(instrument, side, self._random_price(instrument), False)
        if self._rng.random() < 0.05:
            order.proto.state = enums_pb2.ORDER_STATE_REJECTED
            order.proto.leaves_qty = 0
            reason = self._rng.randrange(1, 8)
            self._execution(
                order,
                enums_pb2.EXECUTION_TYPE_REJECTED,
                text=enums_pb2.OrdRejectReason.Name(reason).lower(),
                reject_reason=reason,
            )
            return
        self._execution(order, enums_pb2.EXECUTION_TYPE_NEW)
        self._book[instrument.symbol].append(order)

    def _replace(self, order: _Order) -> None:
        proto = order.proto
        scale = proto.price_scale
        proto.price = max(1, min(scale - 1, proto.price + self._rng.choice((-2, -1, 1, 2))))
        if proto.stop_price:
            proto.stop_price = proto.price
        new_qty = proto.cum_qty + max(proto.fractional_quantity_scale, proto.leaves_qty // 2)
        proto.order_qty = new_qty
        proto.leaves_qty = new_qty - proto.cum_qty
        proto.clord_id = f"{self._rng.getrandbits(64):016x}"
        proto.state = enums_pb2.ORDER_STATE_REPLACED
        self._execution(order, enums_pb2.EXECUTION_TYPE_REPLACE, text="replaced by participant")

    def _cancel(self, order: _Order) -> None:
        unsolicited = 0
        text = "canceled by participant"
        if self._rng.random() < 0.2:
            unsolicited = self._rng.choice(
                (
                    enums_pb2.UNSOLICITED_CXL_REASON_CONNECTION_LOSS,
                    enums_pb2.UNSOLICITED_CXL_REASON_LOGOUT,
                    enums_pb2.UNSOLICITED_CXL_REASON_OTHER,
                )
            )
            text = "canceled by exchange"
        self._end(order, enums_pb2.EXECUTION_TYPE_CANCELED, text, unsolicited)

    def _end(self, order: _Order, exec_type: int, text: str, unsolicited: int = 0) -> None:
        order.proto.state = (
            enums_pb2.ORDER_STATE_CANCELED
            if exec_type == enums_pb2.EXECUTION_TYPE_CANCELED
            else enums_pb2.ORDER_STATE_EXPIRED
        )
        order.proto.leaves_qty = 0
        self._execution(order, exec_type, text=text, unsolicited=unsolicited)
        book = self._book.get(order.proto.symbol)
        if book is not None and order in book:
            book.remove(order)

    def _fill(self, order: _Order, qty: int, px: int, trade_id: str, aggressor: bool) -> None:
        proto = order.proto
        filled_before = proto.cum_qty
        proto.cum_qty += qty
        proto.leaves_qty -= qty
        proto.avg_px = (proto.avg_px * filled_before + px * qty) // proto.cum_qty
        proto.price_to_quantity_filled[px] = proto.price_to_quantity_filled.get(px, 0) + qty
        proto.last_trade_id = trade_id
        done = proto.leaves_qty == 0
        proto.state = (
            enums_pb2.ORDER_STATE_FILLED if done else enums_pb2.ORDER_STATE_PARTIALLY_FILLED
        )
        exec_type = enums_pb2.EXECUTION_TYPE_FILL if done else enums_pb2.EXECUTION_TYPE_PARTIAL_FILL
        self._execution(
            order, exec_type, last_shares=qty, last_px=px, trade_id=trade_id, aggressor=aggressor
        )

    def _cross(self, instrument: _Instrument) -> None:
        rng = self._rng
        book = self._book[instrument.symbol]
        passive = rng.choice(book)
        passive_buys = passive.proto.side == enums_pb2.SIDE_BUY
        side = enums_pb2.SIDE_SELL if passive_buys else enums_pb2.SIDE_BUY
        aggressor = self._new_order(instrument, side, passive.proto.price, True)
        if aggressor.proto.account == passive.proto.account:
            aggressor.proto.account = next(
                a for a in self._accounts[aggressor.firm] if a != passive.proto.account
            )
        self._execution(aggressor, enums_pb2.EXECUTION_TYPE_NEW)
        if aggressor.proto.all_or_none and aggressor.proto.order_qty > passive.proto.leaves_qty:
            self._end(aggressor, enums_pb2.EXECUTION_TYPE_CANCELED, "fill or kill not satisfied")
            return
        qty = min(aggressor.proto.leaves_qty, passive.proto.leaves_qty)
        px = passive.proto.price
        trade_id = self._next_id("trd")
        cross = rng.random() < 0.05
        if cross:
            cross_id = self._next_id("crs")
            aggressor.proto.cross_id = cross_id
            aggressor.proto.host_cross_id = f"host-{cross_id}"
        self._fill(aggressor, qty, px, trade_id, True)
        agg_exec = self._out[-1].message
        self._fill(passive, qty, px, trade_id, False)
        pas_exec = self._out[-1].message
        if passive.proto.leaves_qty == 0:
            book.remove(passive)
        trade_type = (
            enums_pb2.TRADE_TYPE_CROSS
            if cross
            else rng.choice((enums_pb2.TRADE_TYPE_REGULAR,) * 9 + (enums_pb2.TRADE_TYPE_BLOCK,))
        )
        trade = orders_pb2.Trade(
            id=trade_id,
            aggressor=agg_exec,  # type: ignore[arg-type]
            passive=pas_exec,  # type: ignore[arg-type]
            trade_type=trade_type,
            state=enums_pb2.TRADE_STATE_NEW,
            reporting_counterparty=aggressor.proto.side,
            text="" if trade_type == enums_pb2.TRADE_TYPE_REGULAR else "negotiated",
            trade_link_id=""
            if trade_type == enums_pb2.TRADE_TYPE_REGULAR
            else self._next_id("lnk"),
            metadata={"venue": "PMX", "match_engine": f"me-{rng.randrange(1, 4)}"},
        )
        firms = tuple(dict.fromkeys((aggressor.firm, passive.firm)))
        self._emit(TRADE_CAPTURES, instrument.symbol, firms, trade)
        buyer, seller = (aggressor, passive) if side == enums_pb2.SIDE_BUY else (passive, aggressor)
        self._apply_position(buyer, seller, qty, px, 1)
        self._pending_trades.append(
            _PendingTrade(trade, buyer, seller, qty, px, bust=rng.random() < 0.05)
        )
        if aggressor.proto.leaves_qty:
            if aggressor.proto.time_in_force in (
                enums_pb2.TIME_IN_FORCE_DAY,
                enums_pb2.TIME_IN_FORCE_GOOD_TILL_CANCEL,
            ):
                book.append(aggressor)
            else:
                self._end(aggressor, enums_pb2.EXECUTION_TYPE_CANCELED, "immediate or cancel")

    def _clear_trade(self) -> None:
        pending = self._pending_trades[0]
        trade = orders_pb2.Trade()
        trade.CopyFrom(pending.proto)
        firms = tuple(
            dict.fromkeys(
                (
                    _account_firm(trade.aggressor.order.account),
                    _account_firm(trade.passive.order.account),
                )
            )
        )
        if trade.state == enums_pb2.TRADE_STATE_NEW:
            trade.state = enums_pb2.TRADE_STATE_CLEARED
            if not pending.bust:
                self._pending_trades.pop(0)
            else:
                pending.proto = trade
        else:
            trade.state = enums_pb2.TRADE_STATE_BUSTED
            trade.text = "busted: erroneous trade"
            self._pending_trades.pop(0)
            self._apply_position(pending.buyer, pending.seller, pending.qty, pending.px, -1)
        self._emit(TRADE_CAPTURES, trade.aggressor.order.symbol, firms, trade)

    # -- positions -------------------------------------------------------------------------

    def _position(self, account: str, symbol: str) -> positions_pb2.Position:
        key = (account, symbol)
        position = self._positions.get(key)
        if position is None:
            bod = self._rng.choice((0, 0, 0, 10, -5))  # some accounts carry a position in
            position = positions_pb2.Position(account=account, symbol=symbol, bod_position=bod)
            position.net_position = bod
            self._positions[key] = position
        return position

    def _apply_position(self, buyer: _Order, seller: _Order, qty: int, px: int, sign: int) -> None:
        """Apply (sign=1) or reverse (sign=-1, a bust) one fill to both accounts."""
        for order, direction in ((buyer, 1), (seller, -1)):
            position = self._position(order.proto.account, order.proto.symbol)
            before = position.net_position
            if direction > 0:
                position.qty_bought += sign * qty
            else:
                position.qty_sold += sign * qty
            position.cost += sign * direction * qty * px
            position.net_position = position.bod_position + position.qty_bought - position.qty_sold
            if before and (before > 0) != (direction > 0):
                # Reducing a position realizes (px - average entry) on the closed quantity.
                closed = min(abs(before), qty)
                entry = abs(position.cost) // max(1, abs(position.net_position) + closed)
                position.realized += sign * (px - entry) * closed * (1 if before > 0 else -1)
            self._emit_position(order.proto.account, order.proto.symbol)

    def _emit_position(self, account: str, symbol: str) -> None:
        position = self._positions[(account, symbol)]
        position.update_time.FromMicroseconds(self._last_us)
        change = dropcopy_pb2.PositionChange(position=position)
        change.change_time.FromMicroseconds(self._last_us)
        self._emit(POSITION_CHANGES, symbol, (_account_firm(account),), change)
