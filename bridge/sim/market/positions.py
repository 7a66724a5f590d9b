"""The simulated market's position ledger: every account's position per symbol, updated by
each fill (and reversed by a bust), each change emitted as a `PositionChange`."""

from __future__ import annotations

from bridge.sim.market.orders import Order
from bridge.sim.market.records import POSITION_CHANGES, Tape, account_firm
from polymarket.v1 import dropcopy_pb2, positions_pb2


class PositionLedger:
    """Keeps `net_position == bod_position + qty_bought - qty_sold` for every position."""

    def __init__(self, tape: Tape) -> None:
        self._tape = tape
        self._positions: dict[tuple[str, str], positions_pb2.Position] = {}

    def _position(self, account: str, symbol: str) -> positions_pb2.Position:
        key = (account, symbol)
        position = self._positions.get(key)
        if position is None:
            bod = self._tape.rng.choice((0, 0, 0, 10, -5))  # some accounts carry a position in
            position = positions_pb2.Position(account=account, symbol=symbol, bod_position=bod)
            position.net_position = bod
            self._positions[key] = position
        return position

    def apply(self, buyer: Order, seller: Order, qty: int, px: int, sign: int) -> None:
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
            self._emit(order.proto.account, order.proto.symbol)

    def expire(self, symbol: str) -> None:
        """Mark every position in `symbol` expired (its instrument expired)."""
        for (account, position_symbol), position in self._positions.items():
            if position_symbol == symbol:
                position.expired = True
                self._emit(account, position_symbol)

    def _emit(self, account: str, symbol: str) -> None:
        position = self._positions[(account, symbol)]
        position.update_time.FromMicroseconds(self._tape.time_us)
        change = dropcopy_pb2.PositionChange(position=position)
        change.change_time.FromMicroseconds(self._tape.time_us)
        self._tape.emit(POSITION_CHANGES, symbol, (account_firm(account),), change)
