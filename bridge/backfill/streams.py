"""Which streams' gaps REST history can fill, and the seam to the REST history clients.

Fillable (`docs/backfill.md`): DropCopy executions, trade capture reports and position
changes (exchange Report API, position ledger); Predexon trades (`orders`) and, for a
subscription filtered by `users`, activity. Everything else has no REST history: its gaps
are closed `unfillable` at once, with the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bridge.backfill.history import History, Unfillable
from bridge.config import BackfillSettings
from bridge.records import Gap
from bridge.streams.catalogue import Stream

UNFILLABLE_KINDS: Mapping[str, str] = {
    "dropcopy.instrument_states": "the exchange has no history of instrument state changes "
    "(the stream's snapshot on connect restores the current states)",
    "predexon.orderbook": "order book deltas inside a gap cannot be recovered (a snapshot "
    "after the gap restores the book)",
    "predexon.oracle": "oracle history is per market only, not per subscription",
    "predexon.lifecycle": "Predexon has no REST history of lifecycle events",
    "predexon.collateral": "Predexon has no REST history of collateral events",
    "predexon.crypto": "Predexon has no REST history of Chainlink prices",
}
"""`<upstream>.<kind or channel>` -> why its gaps stay unfilled."""


@dataclass(frozen=True, slots=True)
class BackfillStream:
    """What a REST history client needs to know of a stream."""

    stream_id: str
    upstream: str
    kind: str
    """DropCopy stream kind or Predexon channel."""
    topic: str
    prefix: bytes
    """The wire-format prefix of the stream's value schema (as its mapper uses)."""
    filters: Mapping[str, Any] = field(default_factory=dict)
    """DropCopy: {"symbols": [...], "firms": [...]}; Predexon: the subscription's filters."""
    settings: BackfillSettings = field(default_factory=BackfillSettings)

    @classmethod
    def of(cls, stream: Stream, prefix: bytes, settings: BackfillSettings) -> BackfillStream:
        return cls(
            stream.id, stream.upstream, stream.kind, stream.topic, prefix, stream.filters, settings
        )


RestHistories = Callable[[BackfillStream, Gap], History]
"""The REST history clients: a `History` for one stream and gap (may raise `Unfillable`)."""


def unfillable_reason(stream: BackfillStream) -> str | None:
    """Why the stream's gaps cannot be filled from REST, or None when they may be."""
    reason = UNFILLABLE_KINDS.get(f"{stream.upstream}.{stream.kind}")
    if reason is not None:
        return reason
    if stream.upstream == "predexon" and stream.kind == "activity":
        users = stream.filters.get("users")
        if not users:
            return "REST activity history needs a wallet: only subscriptions filtered by users"
    return None


def history_for(stream: BackfillStream, rest: RestHistories | None) -> Callable[[Gap], History]:
    """The task's `HistoryFor`: `Unfillable` for streams REST cannot serve; else `rest`.

    Without REST clients (`rest` None) a fillable gap is not closed: the error is retried,
    so the gap stays open until a bridge with them runs the stream."""
    reason = unfillable_reason(stream)

    def resolve(gap: Gap) -> History:
        if reason is not None:
            raise Unfillable(reason)
        if rest is None:
            raise RuntimeError(f"stream {stream.stream_id}: no REST history client available")
        return rest(stream, gap)

    return resolve
