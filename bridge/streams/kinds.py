"""The four DropCopy streams: which RPC, request, response list and default topic each uses,
the scope it needs, and how it resumes and recognizes repeats."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from polymarket.v1 import dropcopy_pb2


@dataclass(frozen=True, slots=True)
class StreamKind:
    name: str
    rpc: str
    """Method name on `polymarket.v1.DropCopyAPI`."""
    request_type: Any
    response_type: Any
    list_field: str
    """The repeated field of the response that holds the records."""
    topic: str
    """Default topic (before the configured prefix)."""
    schema: str
    """Full name of the topic's Avro value schema in avro/."""
    scope: str
    """The OAuth scope the exchange requires for the RPC."""
    account_scoped: bool
    """Needs `x-participant-id` and accepts `firms`."""
    replays_by_time: bool
    """Records carry an event time, so a refused resume token falls back to replay by time
    (instrument states carry none: they subscribe live, the snapshot restores every state)."""
    latest_per_key: bool
    """A repeat is a record equal to its key's latest one (`LatestPerKey`: a return to an
    earlier state is kept); otherwise one among the recent event ids (`RecentIds`)."""


KINDS: dict[str, StreamKind] = {
    k.name: k
    for k in (
        StreamKind(
            "executions",
            "CreateDropCopySubscription",
            dropcopy_pb2.CreateDropCopySubscriptionRequest,
            dropcopy_pb2.CreateDropCopySubscriptionResponse,
            "executions",
            "polymarket.dropcopy.executions",
            "polymarket.v1.dropcopy.ExecutionRecord",
            scope="read:dropcopy",
            account_scoped=True,
            replays_by_time=True,
            latest_per_key=False,
        ),
        StreamKind(
            "trade_captures",
            "CreateTradeCaptureReportSubscription",
            dropcopy_pb2.CreateTradeCaptureReportSubscriptionRequest,
            dropcopy_pb2.CreateTradeCaptureReportSubscriptionResponse,
            "trade_capture_reports",
            "polymarket.dropcopy.trade-captures",
            "polymarket.v1.dropcopy.TradeCaptureRecord",
            scope="read:dropcopy",
            account_scoped=True,
            replays_by_time=True,
            latest_per_key=False,
        ),
        StreamKind(
            "instrument_states",
            "CreateInstrumentStateChangeSubscription",
            dropcopy_pb2.CreateInstrumentStateChangeSubscriptionRequest,
            dropcopy_pb2.CreateInstrumentStateChangeSubscriptionResponse,
            "instruments",
            "polymarket.dropcopy.instrument-states",
            "polymarket.v1.dropcopy.InstrumentStateRecord",
            scope="read:instruments",
            account_scoped=False,
            replays_by_time=False,
            latest_per_key=True,
        ),
        StreamKind(
            "position_changes",
            "CreatePositionChangeSubscription",
            dropcopy_pb2.CreatePositionChangeSubscriptionRequest,
            dropcopy_pb2.CreatePositionChangeSubscriptionResponse,
            "position_changes",
            "polymarket.dropcopy.position-changes",
            "polymarket.v1.dropcopy.PositionChangeRecord",
            scope="read:positions",
            account_scoped=True,
            replays_by_time=True,
            latest_per_key=False,
        ),
    )
}
