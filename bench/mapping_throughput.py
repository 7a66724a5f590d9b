"""Mapping throughput: DropCopy message -> Avro bytes, records per second on one core.

Run: `.venv/bin/python -m bench.mapping_throughput [--seconds S]`

For each stream it measures, on realistic fully populated messages (every field set, as the
exchange sends them):
- naive: a generic descriptor-walking proto -> dict conversion + `fastavro.schemaless_writer`
  (what a straightforward implementation costs);
- transcoder: the generated direct encoder of `bridge.serde.transcode` (payload only);
- mapper: `DropCopyMapper.map_response`, everything a record needs (key, event id, event
  time, wrapper fields, prefix, `Record`), on 100-record responses.

`--unknown-fields` appends a field the compiled contract lacks to every message and to its
first nested message (what a newer exchange sends): the cost of keeping them raw.
"""

from __future__ import annotations

import argparse
import io
import random
import time
from collections.abc import Callable
from typing import Any

import fastavro
from google.protobuf.descriptor import FieldDescriptor

from bridge.mapping.dropcopy import DropCopyMapper
from bridge.serde.avro import SingleObjectFormat, load_schema
from bridge.serde.transcode import compile_encoder, timestamp_micros
from bridge.streams.kinds import KINDS, StreamKind
from polymarket.v1 import dropcopy_pb2, orders_pb2, refdata_pb2, trading_pb2

RESPONSE_SIZE = 100
"""Records per gRPC response: what the exchange batches under load."""

SAMPLES = 500
"""Distinct messages cycled through, enough to defeat any per-object caching."""

BASE_S = 1_767_000_000
"""A January 2026 epoch second, so timestamps have their real varint width."""


def _ts(msg: Any, rng: random.Random) -> None:
    msg.seconds = BASE_S + rng.randrange(86_400 * 30)
    msg.nanos = rng.randrange(1_000_000_000)


def make_execution(rng: random.Random, n: int) -> trading_pb2.Execution:
    """A fill with every field set, sizes like the exchange's (raw fixed-point integers)."""
    sym = f"tec-nfl-sbw-2026-02-08-{rng.choice(['kc', 'phi', 'sf', 'det'])}"
    firm, user = rng.choice(["acme-capital", "bluefin-trading"]), rng.choice(["alice", "bob"])
    e = trading_pb2.Execution(
        id=f"EX{n:012d}",
        last_shares=rng.randrange(1, 5000) * 100,
        last_px=rng.randrange(1, 1000),
        type=rng.choice([1, 2]),
        text="partial fill" if rng.random() < 0.5 else "fill",
        order_reject_reason=0,
        trade_id=f"TR{n:012d}",
        aggressor=rng.random() < 0.5,
        commission_notional_collected=rng.randrange(10_000),
        unsolicited_cancel_reason=0,
        trace_id=f"{rng.getrandbits(128):032x}",
        commission_spread_px=rng.randrange(10),
    )
    _ts(e.transact_time, rng)
    e.transact_trade_date.year, e.transact_trade_date.month, e.transact_trade_date.day = 2026, 1, 9
    leg = e.leg_prices.add(symbol=sym, anchor=True, px=rng.randrange(1000), qty=100, side="BUY")
    leg.reference_px = rng.randrange(1000)
    o = e.order
    o.id, o.type, o.side = f"OR{n // 3:012d}", 2, rng.choice([1, 2])
    o.order_qty, o.symbol, o.clord_id = rng.randrange(1, 10_000) * 100, sym, f"cl-{n}"
    o.time_in_force, o.account = 2, f"firms/{firm}/accounts/main"
    o.cum_qty, o.avg_px, o.leaves_qty = rng.randrange(10**6), rng.randrange(1000), 4200
    o.state, o.participant, o.price = 1, f"firms/{firm}/users/{user}", rng.randrange(1000)
    o.stop_price, o.min_qty, o.all_or_none = 0, 100, False
    o.cross_id, o.host_cross_id = f"x{n}", f"hx{n}"
    o.submitting_participant = f"firms/{firm}/users/{user}"
    o.client_account_id, o.client_participant_id = "acct-7", "part-3"
    o.parent_order_id, o.commissions_basis_points = f"OR{n // 7:012d}", "1.5"
    o.participate_dont_initiate, o.cash_order_qty, o.strict_limit = False, 0, True
    o.best_limit, o.immediately_executable_limit, o.last_trade_id = False, False, f"TR{n:012d}"
    for _ in range(rng.randrange(1, 4)):
        o.price_to_quantity_filled[rng.randrange(1, 1000)] = rng.randrange(1, 10**6)
    o.commission_notional_total_collected = rng.randrange(10**6)
    o.self_match_prevention_instruction, o.order_capacity = 1, 3
    o.ignore_price_validity_checks, o.price_scale, o.fractional_quantity_scale = False, 1000, 100
    o.maker_commissions_basis_points, o.manual_order_indicator = "0.5", 2
    for ts in (o.insert_time, o.create_time, o.good_till_time, o.last_transact_time):
        _ts(ts, rng)
    return e


def make_trade(rng: random.Random, n: int) -> orders_pb2.Trade:
    t = orders_pb2.Trade(
        id=f"TR{n:012d}",
        trade_type=1,
        state=rng.choice([1, 2, 3]),
        reporting_counterparty=1,
        text="regular",
        trade_link_id=f"L{n}",
    )
    t.aggressor.CopyFrom(make_execution(rng, 2 * n))
    t.passive.CopyFrom(make_execution(rng, 2 * n + 1))
    t.metadata["venue"], t.metadata["session"] = "pmx", "day"
    return t


def make_instrument(rng: random.Random, n: int) -> refdata_pb2.Instrument:
    i = refdata_pb2.Instrument(
        symbol=f"tec-nba-fin-2026-06-11-t{n}",
        tick_size=0.001,
        base_currency="USD",
        multiplier=1.0,
        minimum_trade_qty=100,
        description="NBA Finals winner",
        clearing_house="pmx-clearing",
        minimum_unaffiliated_firms=0,
        non_tradable=False,
        json_attributes='{"league":"nba","outcome":"okc"}',
        product_id="tec-nba-fin",
        trade_settlement_period=1,
        state=rng.randrange(9),
        price_scale=1000,
        fractional_qty_scale=100,
        settlement_currency="USD",
        settlement_price_scale=1000,
    )
    for d, (y, m, day) in (
        (i.start_date, (2026, 1, 1)),
        (i.expiration_date, (2026, 6, 30)),
        (i.termination_date, (2026, 7, 31)),
    ):
        d.year, d.month, d.day = y, m, day
    for state in (2, 1, 0):
        h = i.trading_schedule.add(state=state, hide_market_data=False, expire_all_orders=True)
        h.days_of_week.extend([1, 2, 3, 4, 5])
        h.time_of_day.hours, h.time_of_day.minutes = 9, 30
        h.duration.seconds = 3600 * rng.randrange(1, 8)
    i.price_limit.low, i.price_limit.high, i.price_limit.low_set, i.price_limit.high_set = (
        1,
        999,
        True,
        True,
    )
    i.order_size_limit.low, i.order_size_limit.high = 100, 10**7
    i.expiration_time.hours = 23
    i.metadata["league"], i.metadata["season"] = "nba", "2025-26"
    return i


def make_position_change(rng: random.Random, n: int) -> dropcopy_pb2.PositionChange:
    c = dropcopy_pb2.PositionChange()
    p = c.position
    p.account, p.symbol = "firms/acme-capital/accounts/main", f"tec-nfl-sbw-2026-02-08-s{n % 50}"
    p.net_position, p.qty_bought, p.qty_sold = rng.randrange(-(10**6), 10**6), 10**6, 5 * 10**5
    p.cost, p.realized, p.bod_position = rng.randrange(10**9), rng.randrange(-(10**8), 10**8), 0
    _ts(p.update_time, rng)
    _ts(c.change_time, rng)
    return c


MAKERS: dict[str, Callable[[random.Random, int], Any]] = {
    "executions": make_execution,
    "trade_captures": make_trade,
    "instrument_states": make_instrument,
    "position_changes": make_position_change,
}

PAYLOAD_FIELD = {
    "executions": "execution",
    "trade_captures": "trade",
    "instrument_states": "instrument",
    "position_changes": "position_change",
}


def naive_datum(message: Any) -> dict[str, Any]:
    """Generic proto -> Avro-ready dict by walking the descriptor at run time."""
    out: dict[str, Any] = {}
    for f in message.DESCRIPTOR.fields:
        value = getattr(message, f.name)
        mt = f.message_type
        if mt is not None and mt.GetOptions().map_entry:
            if mt.fields_by_name["key"].type == FieldDescriptor.TYPE_STRING:
                out[f.name] = dict(sorted(value.items()))
            else:
                out[f.name] = [{"key": k, "value": value[k]} for k in sorted(value)]
        elif f.is_repeated:
            out[f.name] = [_naive_value(f, v) for v in value]
        elif mt is not None:
            out[f.name] = _naive_value(f, value) if message.HasField(f.name) else None
        else:
            out[f.name] = _naive_value(f, value)
    return out


def _naive_value(f: FieldDescriptor, value: Any) -> Any:
    if f.type == FieldDescriptor.TYPE_MESSAGE:
        if f.message_type.full_name == "google.protobuf.Timestamp":
            return timestamp_micros(value)
        return naive_datum(value)
    if f.type == FieldDescriptor.TYPE_ENUM:
        known = f.enum_type.values_by_number.get(value)
        return known.name if known else "UNRECOGNIZED"
    return value


def _rate(fn: Callable[[], int], seconds: float) -> float:
    """Records per second of `fn` (which returns how many records it handled), best of 3."""
    best = 0.0
    for _ in range(3):
        done, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds / 3:
            done += fn()
        best = max(best, done / elapsed)
    return best


UNKNOWN_FIELD = b"\xc2\x3e\x08newfield"
"""Field 1000, length-delimited: a number no compiled message uses."""


def with_unknown_fields(message: Any) -> Any:
    """`message` as parsed from a newer exchange: an unknown field on it and on its first
    set nested message."""
    nested = next((v for f, v in message.ListFields() if f.message_type is not None), None)
    if nested is not None and hasattr(nested, "MergeFromString"):
        nested.MergeFromString(UNKNOWN_FIELD)
    message.MergeFromString(UNKNOWN_FIELD)
    return message


def measure(
    kind: StreamKind, seconds: float, unknown_fields: bool = False
) -> tuple[float, float, float]:
    rng = random.Random(7)
    messages = [MAKERS[kind.name](rng, n) for n in range(SAMPLES)]
    if unknown_fields:
        messages = [with_unknown_fields(m) for m in messages]
    schema = load_schema(kind.schema)
    named = schema["__named_schemas"]
    payload_schema = named[schema["fields"][4]["type"]]
    parsed = fastavro.parse_schema(payload_schema, named_schemas=dict(named))
    encoder = compile_encoder(messages[0].DESCRIPTOR, payload_schema, named, "x")

    def naive() -> int:
        for m in messages:
            out = io.BytesIO()
            fastavro.schemaless_writer(out, parsed, naive_datum(m))
        return len(messages)

    def transcoded() -> int:
        fn = encoder.fn
        for m in messages:
            buf = bytearray()
            fn(m, buf, {}, {})
        return len(messages)

    responses = []
    for start in range(0, SAMPLES, RESPONSE_SIZE):
        response = kind.response_type()
        getattr(response, kind.list_field).extend(messages[start : start + RESPONSE_SIZE])
        responses.append(response)
    topic = kind.topic
    mapper = DropCopyMapper(kind, "bench", topic, SingleObjectFormat().prefix(kind.schema, topic))

    def mapped() -> int:
        n = 0
        for r in responses:
            records, dead = mapper.map_response(r, 1_767_000_000_000_000)
            assert not dead, dead[0].error
            n += len(records)
        return n

    return _rate(naive, seconds), _rate(transcoded, seconds), _rate(mapped, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    parser.add_argument(
        "--unknown-fields",
        action="store_true",
        help="messages carry fields the compiled contract lacks (kept raw)",
    )
    args = parser.parse_args()
    print(f"{'stream':<18} {'naive rec/s':>12} {'transcoder':>12} {'mapper':>12} {'speed-up':>9}")
    for kind in KINDS.values():
        naive, fast, full = measure(kind, args.seconds, args.unknown_fields)
        print(
            f"{kind.name:<18} {naive:>12,.0f} {fast:>12,.0f} {full:>12,.0f} {fast / naive:>8.1f}x"
        )


if __name__ == "__main__":
    main()
