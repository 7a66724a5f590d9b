"""The simulator's market generator: deterministic, realistic, internally consistent."""

from __future__ import annotations

from collections import Counter, defaultdict

from bridge.sim.market import MarketGenerator, MarketRecord
from polymarket.v1 import enums_pb2, refdata_pb2

START_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z


def generate(seed: int, count: int) -> list[MarketRecord]:
    generator = MarketGenerator(seed)
    out: list[MarketRecord] = []
    step = 0
    while len(out) < count:
        step += 1
        out.extend(generator.step(START_US + step * 1_000))
    return out


def test_same_seed_and_clock_give_identical_records() -> None:
    first = [
        (r.stream, r.time_us, r.message.SerializeToString(deterministic=True))
        for r in generate(7, 2000)
    ]
    again = [
        (r.stream, r.time_us, r.message.SerializeToString(deterministic=True))
        for r in generate(7, 2000)
    ]
    other = [
        (r.stream, r.time_us, r.message.SerializeToString(deterministic=True))
        for r in generate(8, 2000)
    ]
    assert first == again
    assert first != other


def test_event_times_never_decrease_and_match_the_records_own_time() -> None:
    records = generate(1, 5000)
    times = [r.time_us for r in records]
    assert times == sorted(times)
    for record in records:
        message = record.message
        if record.stream == "executions":
            assert message.transact_time.ToMicroseconds() == record.time_us
        elif record.stream == "position_changes":
            assert message.change_time.ToMicroseconds() == record.time_us
        elif record.stream == "trade_captures":
            assert message.aggressor.transact_time.ToMicroseconds() <= record.time_us


def test_every_lifecycle_appears() -> None:
    records = generate(2, 20_000)
    exec_types = Counter(r.message.type for r in records if r.stream == "executions")
    for name in ("NEW", "PARTIAL_FILL", "FILL", "REPLACE", "CANCELED", "REJECTED", "EXPIRED"):
        assert exec_types[getattr(enums_pb2, f"EXECUTION_TYPE_{name}")] > 0, name
    trade_states = Counter(r.message.state for r in records if r.stream == "trade_captures")
    for name in ("NEW", "CLEARED", "BUSTED"):
        assert trade_states[getattr(enums_pb2, f"TRADE_STATE_{name}")] > 0, name
    states = Counter(r.message.state for r in records if r.stream == "instrument_states")
    for name in (
        "PENDING",
        "PREOPEN",
        "OPEN",
        "HALTED",
        "SUSPENDED",
        "CLOSED",
        "EXPIRED",
        "TERMINATED",
    ):
        assert states[getattr(refdata_pb2, f"INSTRUMENT_STATE_{name}")] > 0, name
    symbols = {r.symbol for r in records}
    assert "tec-nfl-sbw-2026-02-08-kc" in symbols


def test_first_instrument_states_are_pending_preopen_open() -> None:
    per_symbol: dict[str, list[int]] = defaultdict(list)
    for record in generate(3, 3000):
        if record.stream == "instrument_states":
            per_symbol[record.symbol].append(record.message.state)
    for states in per_symbol.values():
        assert (
            states[:3]
            == [
                refdata_pb2.INSTRUMENT_STATE_PENDING,
                refdata_pb2.INSTRUMENT_STATE_PREOPEN,
                refdata_pb2.INSTRUMENT_STATE_OPEN,
            ][: len(states[:3])]
        )


def test_positions_follow_the_fills_and_busts() -> None:
    records = generate(4, 20_000)
    bought: Counter[tuple[str, str]] = Counter()
    sold: Counter[tuple[str, str]] = Counter()
    busted = set()
    for record in records:
        if (
            record.stream == "trade_captures"
            and record.message.state == enums_pb2.TRADE_STATE_BUSTED
        ):
            busted.add(record.message.id)
    for record in records:
        if record.stream != "executions" or not record.message.last_shares:
            continue
        execution = record.message
        key = (execution.order.account, execution.order.symbol)
        target = bought if execution.order.side == enums_pb2.SIDE_BUY else sold
        if execution.trade_id not in busted:
            target[key] += execution.last_shares
    latest = {}
    for record in records:
        if record.stream == "position_changes":
            position = record.message.position
            assert (
                position.net_position
                == position.bod_position + position.qty_bought - position.qty_sold
            )
            latest[(position.account, position.symbol)] = position
    for key, position in latest.items():
        assert position.qty_bought == bought[key]
        assert position.qty_sold == sold[key]


def test_orders_carry_raw_fixed_point_values_within_scale() -> None:
    for record in generate(5, 5000):
        if record.stream != "executions":
            continue
        order = record.message.order
        assert order.price_scale in (100, 1000)
        assert order.fractional_quantity_scale in (1, 100)
        assert 0 < order.price < order.price_scale
        assert order.cum_qty + order.leaves_qty <= order.order_qty or order.leaves_qty == 0
        assert sum(order.price_to_quantity_filled.values()) == order.cum_qty
        assert order.account.startswith(record.firms[0] + "/accounts/")
