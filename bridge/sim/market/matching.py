"""The simulated market's order books and matching: orders rest, are replaced, canceled or
expire, cross into fills and trades, and trades later clear (or are busted)."""

from __future__ import annotations

from dataclasses import dataclass

from bridge.sim.market.instruments import Instrument
from bridge.sim.market.orders import Order, Participants, emit_execution, new_order
from bridge.sim.market.positions import PositionLedger
from bridge.sim.market.records import TRADE_CAPTURES, Tape, account_firm
from polymarket.v1 import enums_pb2, orders_pb2


@dataclass(slots=True)
class PendingTrade:
    """A trade not yet cleared; `bust` = it will be busted after clearing."""

    proto: orders_pb2.Trade
    buyer: Order
    seller: Order
    qty: int
    px: int
    bust: bool


class OrderBooks:
    """Resting orders per symbol, and trades waiting to clear (oldest first)."""

    def __init__(self, tape: Tape, participants: Participants, positions: PositionLedger) -> None:
        self._tape = tape
        self._participants = participants
        self._positions = positions
        self._book: dict[str, list[Order]] = {}
        self._pending_trades: list[PendingTrade] = []

    def open(self, symbol: str) -> None:
        """Start an empty book for a newly listed instrument."""
        self._book[symbol] = []

    def close(self, symbol: str) -> None:
        """Forget a terminated instrument's book."""
        del self._book[symbol]

    def resting(self, symbol: str) -> list[Order]:
        return self._book[symbol]

    @property
    def has_pending_trades(self) -> bool:
        return bool(self._pending_trades)

    def _random_price(self, instrument: Instrument) -> int:
        scale = instrument.proto.price_scale
        mid = scale // 2 + self._tape.rng.randrange(-scale // 4, scale // 4)
        return max(1, min(scale - 1, mid))

    def rest(self, instrument: Instrument) -> None:
        side = self._tape.rng.choice((enums_pb2.SIDE_BUY, enums_pb2.SIDE_SELL))
        order = new_order(
            self._tape, self._participants, instrument, side, self._random_price(instrument), False
        )
        if self._tape.rng.random() < 0.05:
            order.proto.state = enums_pb2.ORDER_STATE_REJECTED
            order.proto.leaves_qty = 0
            reason = self._tape.rng.randrange(1, 8)
            emit_execution(
                self._tape,
                order,
                enums_pb2.EXECUTION_TYPE_REJECTED,
                text=enums_pb2.OrdRejectReason.Name(reason).lower(),
                reject_reason=reason,
            )
            return
        emit_execution(self._tape, order, enums_pb2.EXECUTION_TYPE_NEW)
        self._book[instrument.symbol].append(order)

    def replace(self, order: Order) -> None:
        proto = order.proto
        scale = proto.price_scale
        proto.price = max(1, min(scale - 1, proto.price + self._tape.rng.choice((-2, -1, 1, 2))))
        if proto.stop_price:
            proto.stop_price = proto.price
        new_qty = proto.cum_qty + max(proto.fractional_quantity_scale, proto.leaves_qty // 2)
        proto.order_qty = new_qty
        proto.leaves_qty = new_qty - proto.cum_qty
        proto.clord_id = f"{self._tape.rng.getrandbits(64):016x}"
        proto.state = enums_pb2.ORDER_STATE_REPLACED
        emit_execution(
            self._tape, order, enums_pb2.EXECUTION_TYPE_REPLACE, text="replaced by participant"
        )

    def cancel(self, order: Order) -> None:
        unsolicited = 0
        text = "canceled by participant"
        if self._tape.rng.random() < 0.2:
            unsolicited = self._tape.rng.choice(
                (
                    enums_pb2.UNSOLICITED_CXL_REASON_CONNECTION_LOSS,
                    enums_pb2.UNSOLICITED_CXL_REASON_LOGOUT,
                    enums_pb2.UNSOLICITED_CXL_REASON_OTHER,
                )
            )
            text = "canceled by exchange"
        self.end(order, enums_pb2.EXECUTION_TYPE_CANCELED, text, unsolicited)

    def end(self, order: Order, exec_type: int, text: str, unsolicited: int = 0) -> None:
        order.proto.state = (
            enums_pb2.ORDER_STATE_CANCELED
            if exec_type == enums_pb2.EXECUTION_TYPE_CANCELED
            else enums_pb2.ORDER_STATE_EXPIRED
        )
        order.proto.leaves_qty = 0
        emit_execution(self._tape, order, exec_type, text=text, unsolicited=unsolicited)
        book = self._book.get(order.proto.symbol)
        if book is not None and order in book:
            book.remove(order)

    def _fill(self, order: Order, qty: int, px: int, trade_id: str, aggressor: bool) -> None:
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
        emit_execution(
            self._tape,
            order,
            exec_type,
            last_shares=qty,
            last_px=px,
            trade_id=trade_id,
            aggressor=aggressor,
        )

    def cross(self, instrument: Instrument) -> None:
        rng = self._tape.rng
        book = self._book[instrument.symbol]
        passive = rng.choice(book)
        passive_buys = passive.proto.side == enums_pb2.SIDE_BUY
        side = enums_pb2.SIDE_SELL if passive_buys else enums_pb2.SIDE_BUY
        aggressor = new_order(
            self._tape, self._participants, instrument, side, passive.proto.price, True
        )
        if aggressor.proto.account == passive.proto.account:
            aggressor.proto.account = next(
                a for a in self._participants.accounts[aggressor.firm] if a != passive.proto.account
            )
        emit_execution(self._tape, aggressor, enums_pb2.EXECUTION_TYPE_NEW)
        if aggressor.proto.all_or_none and aggressor.proto.order_qty > passive.proto.leaves_qty:
            self.end(aggressor, enums_pb2.EXECUTION_TYPE_CANCELED, "fill or kill not satisfied")
            return
        qty = min(aggressor.proto.leaves_qty, passive.proto.leaves_qty)
        px = passive.proto.price
        trade_id = self._tape.next_id("trd")
        cross = rng.random() < 0.05
        if cross:
            cross_id = self._tape.next_id("crs")
            aggressor.proto.cross_id = cross_id
            aggressor.proto.host_cross_id = f"host-{cross_id}"
        self._fill(aggressor, qty, px, trade_id, True)
        agg_exec = self._tape.records[-1].message
        self._fill(passive, qty, px, trade_id, False)
        pas_exec = self._tape.records[-1].message
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
            else self._tape.next_id("lnk"),
            metadata={"venue": "PMX", "match_engine": f"me-{rng.randrange(1, 4)}"},
        )
        firms = tuple(dict.fromkeys((aggressor.firm, passive.firm)))
        self._tape.emit(TRADE_CAPTURES, instrument.symbol, firms, trade)
        buyer, seller = (aggressor, passive) if side == enums_pb2.SIDE_BUY else (passive, aggressor)
        self._positions.apply(buyer, seller, qty, px, 1)
        self._pending_trades.append(
            PendingTrade(trade, buyer, seller, qty, px, bust=rng.random() < 0.05)
        )
        if aggressor.proto.leaves_qty:
            if aggressor.proto.time_in_force in (
                enums_pb2.TIME_IN_FORCE_DAY,
                enums_pb2.TIME_IN_FORCE_GOOD_TILL_CANCEL,
            ):
                book.append(aggressor)
            else:
                self.end(aggressor, enums_pb2.EXECUTION_TYPE_CANCELED, "immediate or cancel")

    def clear_trade(self) -> None:
        pending = self._pending_trades[0]
        trade = orders_pb2.Trade()
        trade.CopyFrom(pending.proto)
        firms = tuple(
            dict.fromkeys(
                (
                    account_firm(trade.aggressor.order.account),
                    account_firm(trade.passive.order.account),
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
            self._positions.apply(pending.buyer, pending.seller, pending.qty, pending.px, -1)
        self._tape.emit(TRADE_CAPTURES, trade.aggressor.order.symbol, firms, trade)
