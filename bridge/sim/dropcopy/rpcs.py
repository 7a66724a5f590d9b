"""The DropCopy service the simulator serves: its four streaming RPCs and how a call is refused."""

from __future__ import annotations

import grpc
from google.protobuf.message import Message

from bridge.sim.market import EXECUTIONS, INSTRUMENT_STATES, POSITION_CHANGES, TRADE_CAPTURES
from polymarket.v1 import dropcopy_pb2, orders_pb2, refdata_pb2, trading_pb2

SERVICE = "polymarket.v1.DropCopyAPI"

# stream -> (RPC method name, request class, record class, scope, account-scoped)
STREAM_RPCS: dict[str, tuple[str, type[Message], type[Message], str, bool]] = {
    EXECUTIONS: (
        "CreateDropCopySubscription",
        dropcopy_pb2.CreateDropCopySubscriptionRequest,
        trading_pb2.Execution,
        "read:dropcopy",
        True,
    ),
    TRADE_CAPTURES: (
        "CreateTradeCaptureReportSubscription",
        dropcopy_pb2.CreateTradeCaptureReportSubscriptionRequest,
        orders_pb2.Trade,
        "read:dropcopy",
        True,
    ),
    INSTRUMENT_STATES: (
        "CreateInstrumentStateChangeSubscription",
        dropcopy_pb2.CreateInstrumentStateChangeSubscriptionRequest,
        refdata_pb2.Instrument,
        "read:instruments",
        False,
    ),
    POSITION_CHANGES: (
        "CreatePositionChangeSubscription",
        dropcopy_pb2.CreatePositionChangeSubscriptionRequest,
        dropcopy_pb2.PositionChange,
        "read:positions",
        True,
    ),
}


class Refusal(Exception):
    """Ends a call with this gRPC status; raised anywhere while a call is being served."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
