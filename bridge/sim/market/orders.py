"""The simulated market's orders and executions: who trades (firms, users, accounts), each new
order's fields drawn from the seed, and the `Execution` record of every change to an order."""

from __future__ import annotations

import random
from dataclasses import dataclass

from bridge.sim.market.instruments import Instrument
from bridge.sim.market.records import EXECUTIONS, Tape
from polymarket.v1 import enums_pb2, trading_pb2

_USERS = ("alice", "bob", "carol", "dave", "erin", "frank")


@dataclass(frozen=True, slots=True)
class Participants:
    """Per firm, the accounts orders are booked to and the users who enter them."""

    firms: tuple[str, ...]
    accounts: dict[str, list[str]]
    users: dict[str, list[str]]

    @classmethod
    def generate(cls, rng: random.Random, firms: tuple[str, ...]) -> Participants:
        accounts = {
            firm: [f"{firm}/accounts/{firm.split('/')[1][:3].upper()}-{n}" for n in (1, 2)]
            for firm in firms
        }
        users = {firm: [f"{firm}/users/{u}" for u in rng.sample(_USERS, 2)] for firm in firms}
        return cls(firms, accounts, users)


@dataclass(slots=True)
class Order:
    proto: trading_pb2.Order
    firm: str
    instrument: Instrument


def new_order(
    tape: Tape,
    participants: Participants,
    instrument: Instrument,
    side: int,
    price: int,
    aggressive: bool,
) -> Order:
    """A fresh order (state NEW) by a random participant; `aggressive` = it will cross."""
    rng = tape.rng
    firm = rng.choice(participants.firms)
    user = rng.choice(participants.users[firm])
    account = rng.choice(participants.accounts[firm])
    qty_scale = instrument.proto.fractional_qty_scale
    qty = rng.choice((1, 2, 5, 10, 25, 50, 100, 250)) * qty_scale
    if qty_scale > 1 and rng.random() < 0.3:
        qty += rng.randrange(1, qty_scale)  # a fractional contract quantity
    now = tape.time_us
    if aggressive:
        tif = rng.choice(
            (
                enums_pb2.TIME_IN_FORCE_IMMEDIATE_OR_CANCEL,
                enums_pb2.TIME_IN_FORCE_DAY,
                enums_pb2.TIME_IN_FORCE_GOOD_TILL_CANCEL,
                enums_pb2.TIME_IN_FORCE_FILL_OR_KILL,
            )
        )
        order_type = rng.choice((enums_pb2.ORDER_TYPE_LIMIT, enums_pb2.ORDER_TYPE_MARKET_TO_LIMIT))
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
        id=tape.next_id("ord"),
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
        submitting_participant=rng.choice(participants.users[firm]),
        client_account_id=f"CA{rng.randrange(10_000, 99_999)}",
        client_participant_id=f"trader-{rng.randrange(100, 999)}",
        parent_order_id=tape.next_id("ord") if rng.random() < 0.05 else "",
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
    return Order(proto, firm, instrument)


def emit_execution(
    tape: Tape,
    order: Order,
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
    """Record `exec_type` happening to `order` now (its proto already updated)."""
    rng = tape.rng
    order.proto.last_transact_time.FromMicroseconds(tape.time_us)
    notional = last_shares * last_px // order.proto.fractional_quantity_scale
    commission = notional * 25 // 10_000 if last_shares and aggressor else 0
    order.proto.commission_notional_total_collected += commission
    execution = trading_pb2.Execution(
        id=tape.next_id("exe"),
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
        transact_trade_date=tape.today(),
    )
    execution.transact_time.FromMicroseconds(tape.time_us)
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
    tape.emit(EXECUTIONS, order.proto.symbol, (order.firm,), execution)
