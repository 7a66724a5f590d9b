"""The simulator's bytes decode with descriptors built only from the exchange's documentation.

The message tables below are copied from the field tables of the exchange's DropCopy
documentation (not from our .proto files or generated code). Enum-typed fields are declared
as int32: on the wire both are the same varint, and comparing numbers is what we want here.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    duration_pb2,
    json_format,
    message_factory,
    timestamp_pb2,
)
from google.protobuf.timestamp_pb2 import Timestamp

from bridge.sim.dropcopy import DropCopySimulator, SimConfig
from polymarket.v1 import dropcopy_pb2
from tests.bridge_harness import run_within

F = descriptor_pb2.FieldDescriptorProto
SCALARS = {
    "string": F.TYPE_STRING,
    "bytes": F.TYPE_BYTES,
    "int64": F.TYPE_INT64,
    "int32": F.TYPE_INT32,
    "bool": F.TYPE_BOOL,
    "double": F.TYPE_DOUBLE,
    "enum": F.TYPE_INT32,
}
WELL_KNOWN = {"Timestamp": ".google.protobuf.Timestamp", "Duration": ".google.protobuf.Duration"}

# message -> [(number, name, type)], type: scalar, "enum", a message name, "repeated X",
# or "map<K,V>". Copied from the documentation's tables.
FACT_SHEET: dict[str, list[tuple[int, str, str]]] = {
    "CreateDropCopySubscriptionResponse": [
        (1, "resume_token", "bytes"),
        (2, "executions", "repeated Execution"),
    ],
    "CreateInstrumentStateChangeSubscriptionResponse": [
        (1, "resume_token", "bytes"),
        (2, "instruments", "repeated Instrument"),
    ],
    "CreatePositionChangeSubscriptionResponse": [
        (1, "resume_token", "bytes"),
        (2, "position_changes", "repeated PositionChange"),
    ],
    "CreateTradeCaptureReportSubscriptionResponse": [
        (1, "resume_token", "bytes"),
        (2, "trade_capture_reports", "repeated Trade"),
    ],
    "PositionChange": [(1, "position", "Position"), (2, "change_time", "Timestamp")],
    "Trade": [
        (1, "id", "string"),
        (2, "aggressor", "Execution"),
        (3, "passive", "Execution"),
        (4, "trade_type", "enum"),
        (5, "state", "enum"),
        (6, "reporting_counterparty", "enum"),
        (7, "text", "string"),
        (8, "trade_link_id", "string"),
        (9, "metadata", "map<string,string>"),
    ],
    "Position": [
        (1, "account", "string"),
        (2, "symbol", "string"),
        (3, "net_position", "int64"),
        (4, "qty_bought", "int64"),
        (5, "qty_sold", "int64"),
        (6, "cost", "int64"),
        (7, "realized", "int64"),
        (8, "bod_position", "int64"),
        (9, "expired", "bool"),
        (11, "update_time", "Timestamp"),
    ],
    "Instrument": [
        (1, "symbol", "string"),
        (2, "tick_size", "double"),
        (3, "base_currency", "string"),
        (4, "multiplier", "double"),
        (5, "minimum_trade_qty", "int64"),
        (6, "start_date", "Date"),
        (7, "expiration_date", "Date"),
        (8, "termination_date", "Date"),
        (9, "trading_schedule", "repeated TradingHours"),
        (10, "description", "string"),
        (11, "clearing_house", "string"),
        (12, "minimum_unaffiliated_firms", "int64"),
        (16, "non_tradable", "bool"),
        (17, "json_attributes", "string"),
        (18, "product_id", "string"),
        (19, "price_limit", "PriceLimit"),
        (20, "order_size_limit", "OrderSizeLimit"),
        (22, "expiration_time", "TimeOfDay"),
        (23, "trade_settlement_period", "int64"),
        (24, "state", "enum"),
        (25, "price_scale", "int64"),
        (31, "fractional_qty_scale", "int64"),
        (32, "settlement_currency", "string"),
        (34, "settlement_price_scale", "int64"),
        (35, "metadata", "map<string,string>"),
    ],
    "OrderSizeLimit": [
        (1, "low", "int64"),
        (2, "high", "int64"),
        (3, "low_set", "bool"),
        (4, "high_set", "bool"),
        (5, "total_notional_low", "int64"),
        (6, "total_notional_high", "int64"),
        (7, "total_notional_low_set", "bool"),
        (8, "total_notional_high_set", "bool"),
    ],
    "PriceLimit": [
        (1, "low", "int64"),
        (2, "high", "int64"),
        (3, "low_set", "bool"),
        (4, "high_set", "bool"),
        (5, "relative_low", "double"),
        (6, "relative_high", "double"),
        (7, "relative_low_set", "bool"),
        (8, "relative_high_set", "bool"),
    ],
    "TradingHours": [
        (1, "days_of_week", "repeated int32"),
        (2, "time_of_day", "TimeOfDay"),
        (3, "duration", "Duration"),
        (4, "state", "enum"),
        (5, "hide_market_data", "bool"),
        (6, "expire_all_orders", "bool"),
    ],
    "Execution": [
        (1, "id", "string"),
        (2, "order", "Order"),
        (3, "last_shares", "int64"),
        (4, "last_px", "int64"),
        (5, "type", "enum"),
        (6, "text", "string"),
        (7, "order_reject_reason", "enum"),
        (8, "transact_time", "Timestamp"),
        (9, "leg_prices", "repeated LegPrice"),
        (10, "trade_id", "string"),
        (11, "aggressor", "bool"),
        (12, "commission_notional_collected", "int64"),
        (13, "unsolicited_cancel_reason", "enum"),
        (14, "trace_id", "string"),
        (15, "commission_spread_px", "int64"),
        (16, "transact_trade_date", "Date"),
    ],
    "Order": [
        (1, "id", "string"),
        (2, "type", "enum"),
        (3, "side", "enum"),
        (4, "order_qty", "int64"),
        (5, "symbol", "string"),
        (6, "clord_id", "string"),
        (7, "time_in_force", "enum"),
        (8, "account", "string"),
        (9, "cum_qty", "int64"),
        (10, "avg_px", "int64"),
        (11, "leaves_qty", "int64"),
        (12, "state", "enum"),
        (13, "participant", "string"),
        (14, "price", "int64"),
        (15, "insert_time", "Timestamp"),
        (16, "stop_price", "int64"),
        (17, "min_qty", "int64"),
        (18, "create_time", "Timestamp"),
        (19, "all_or_none", "bool"),
        (20, "cross_id", "string"),
        (21, "host_cross_id", "string"),
        (22, "submitting_participant", "string"),
        (23, "client_account_id", "string"),
        (24, "client_participant_id", "string"),
        (25, "parent_order_id", "string"),
        (26, "commissions_basis_points", "string"),
        (27, "participate_dont_initiate", "bool"),
        (28, "cash_order_qty", "int64"),
        (30, "strict_limit", "bool"),
        (34, "good_till_time", "Timestamp"),
        (36, "best_limit", "bool"),
        (37, "immediately_executable_limit", "bool"),
        (39, "last_trade_id", "string"),
        (42, "commission_notional_total_collected", "int64"),
        (43, "self_match_prevention_instruction", "enum"),
        (44, "order_capacity", "enum"),
        (45, "ignore_price_validity_checks", "bool"),
        (47, "last_transact_time", "Timestamp"),
        (50, "maker_commissions_basis_points", "string"),
        (51, "manual_order_indicator", "enum"),
        # Added after the January bundle (the documentation's "Values").
        (41, "price_to_quantity_filled", "map<int64,int64>"),
        (48, "price_scale", "int64"),
        (49, "fractional_quantity_scale", "int64"),
    ],
    "Date": [(1, "year", "int32"), (2, "month", "int32"), (3, "day", "int32")],
    "LegPrice": [
        (1, "symbol", "string"),
        (2, "anchor", "bool"),
        (3, "px", "int64"),
        (4, "qty", "int64"),
        (5, "side", "string"),
        (6, "reference_px", "int64"),
    ],
    "TimeOfDay": [(1, "hours", "int32"), (2, "minutes", "int32"), (3, "seconds", "int32")],
}
PACKAGE = "factsheet.v1"


def _set_type(field: Any, type_name: str) -> None:
    if type_name in SCALARS:
        field.type = SCALARS[type_name]
    else:
        field.type = F.TYPE_MESSAGE
        field.type_name = WELL_KNOWN.get(type_name, f".{PACKAGE}.{type_name}")


def build_pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    for well_known in (timestamp_pb2, duration_pb2):
        proto = descriptor_pb2.FileDescriptorProto()
        well_known.DESCRIPTOR.CopyToProto(proto)
        pool.Add(proto)
    file = descriptor_pb2.FileDescriptorProto(
        name="factsheet.proto",
        package=PACKAGE,
        syntax="proto3",
        dependency=["google/protobuf/timestamp.proto", "google/protobuf/duration.proto"],
    )
    for message_name, fields in FACT_SHEET.items():
        message = file.message_type.add(name=message_name)
        for number, name, type_spec in fields:
            field = message.field.add(name=name, number=number, label=F.LABEL_OPTIONAL)
            if type_spec.startswith("repeated "):
                field.label = F.LABEL_REPEATED
                _set_type(field, type_spec.split(" ", 1)[1])
            elif type_spec.startswith("map<"):
                key, value = type_spec[4:-1].split(",")
                entry_name = "".join(p.title() for p in name.split("_")) + "Entry"
                entry = message.nested_type.add(name=entry_name)
                entry.options.map_entry = True
                _set_type(entry.field.add(name="key", number=1, label=F.LABEL_OPTIONAL), key)
                _set_type(entry.field.add(name="value", number=2, label=F.LABEL_OPTIONAL), value)
                field.label = F.LABEL_REPEATED
                field.type = F.TYPE_MESSAGE
                field.type_name = f".{PACKAGE}.{message_name}.{entry_name}"
            else:
                _set_type(field, type_spec)
    pool.Add(file)
    return pool


STREAMS = {
    "CreateDropCopySubscription": (
        dropcopy_pb2.CreateDropCopySubscriptionRequest,
        dropcopy_pb2.CreateDropCopySubscriptionResponse,
        "CreateDropCopySubscriptionResponse",
    ),
    "CreateTradeCaptureReportSubscription": (
        dropcopy_pb2.CreateTradeCaptureReportSubscriptionRequest,
        dropcopy_pb2.CreateTradeCaptureReportSubscriptionResponse,
        "CreateTradeCaptureReportSubscriptionResponse",
    ),
    "CreateInstrumentStateChangeSubscription": (
        dropcopy_pb2.CreateInstrumentStateChangeSubscriptionRequest,
        dropcopy_pb2.CreateInstrumentStateChangeSubscriptionResponse,
        "CreateInstrumentStateChangeSubscriptionResponse",
    ),
    "CreatePositionChangeSubscription": (
        dropcopy_pb2.CreatePositionChangeSubscriptionRequest,
        dropcopy_pb2.CreatePositionChangeSubscriptionResponse,
        "CreatePositionChangeSubscriptionResponse",
    ),
}


async def raw_responses(prefill: int) -> dict[str, list[bytes]]:
    """Every response's bytes, per method, replaying the whole journal (no parsing)."""
    sim = DropCopySimulator(SimConfig(seed=11, prefill=prefill, heartbeat_s=0.05, batch=200))
    await sim.start()
    out: dict[str, list[bytes]] = {}
    try:
        metadata = [
            ("authorization", f"Bearer {sim.issue_token()}"),
            ("x-participant-id", "firms/acme-capital/users/alice"),
        ]
        async with grpc.aio.insecure_channel(sim.address) as channel:
            for method, (request_class, _, _) in STREAMS.items():
                request: Any = request_class(resume_time=Timestamp(seconds=0))
                if "firms" in request_class.DESCRIPTOR.fields_by_name:
                    request.firms.extend(sim.firms)
                call = channel.unary_stream(
                    f"/polymarket.v1.DropCopyAPI/{method}",
                    request_serializer=request_class.SerializeToString,
                )(request, metadata=metadata)
                responses: list[bytes] = []
                while True:
                    response = await call.read()
                    responses.append(response)
                    if len(response) < 40:  # only a resume token: the heartbeat
                        break
                call.cancel()
                out[method] = responses
    finally:
        await sim.stop()
    return out


def set_fields(message: Any, seen: dict[str, set[str]]) -> None:
    """Record, per message type, every field holding a non-default value; recurse."""
    name = message.DESCRIPTOR.name
    for field, value in message.ListFields():
        seen.setdefault(name, set()).add(field.name)
        if field.type != F.TYPE_MESSAGE:
            continue
        if field.message_type.GetOptions().map_entry:
            continue
        values = value if field.is_repeated else [value]
        for item in values:
            set_fields(item, seen)


def test_simulator_bytes_decode_identically_with_fact_sheet_descriptors() -> None:
    pool = build_pool()
    responses = run_within(lambda: raw_responses(20_000), 60)
    seen: dict[str, set[str]] = {}
    for method, (_, generated_class, fact_name) in STREAMS.items():
        independent_class = message_factory.GetMessageClass(
            pool.FindMessageTypeByName(f"{PACKAGE}.{fact_name}")
        )
        assert len(responses[method]) > 1, method
        for data in responses[method]:
            independent = independent_class.FromString(data)
            generated = generated_class.FromString(data)
            as_dict = dict(preserving_proto_field_name=True, use_integers_for_enums=True)
            assert json_format.MessageToDict(independent, **as_dict) == json_format.MessageToDict(
                generated, **as_dict
            )
            # Nothing landed in unknown fields: the sizes agree with a re-encoding.
            assert independent.ByteSize() == len(data) == generated.ByteSize()
            set_fields(independent, seen)
    missing = {
        message_name: sorted({name for _, name, _ in fields} - seen.get(message_name, set()))
        for message_name, fields in FACT_SHEET.items()
    }
    missing = {name: fields for name, fields in missing.items() if fields}
    assert missing == {}, f"fields the simulator never filled: {missing}"
