"""`PredexonSource`: one Predexon subscription (channel + filters) as one stream of batches.

Predexon cannot replay, so the source's job besides mapping is to account for time:

- `Position.live_time_us` is the last instant the subscription is known to have been
  acked and delivering *with everything generated up to it already yielded*: the live
  evidence (a timely pong, see `liveness`) the last yielded frame arrived with while
  more are buffered, else the connection's newest. Idle, an empty batch carrying the new
  live time is yielded about every second (`LIVENESS_INTERVAL_S`), so the committed live
  time keeps up with the clock.
- Each time coverage is lost - a disconnect, a buffer overflow, a filter change that
  replaces the subscription, or a bridge restart (`stream(start)` with a live time) - the
  next batch after the new subscription's ack carries exactly one `Gap(from_us=<last live
  time>, to_us=<ack receive time>)`. A window in which the server may have dropped events
  for a backlog (`Lagged`) is a gap of its own while the subscription stays live. Gaps
  never overlap and together with the live windows cover all time after the first ack.
- Events arrive at least once within a connection; repeats are yielded as they come (the
  pipeline drops repeated `event_id`s).

Errors: `AuthError` / `UpstreamError(retriable=False)` from the connection manager are
raised from `stream()` with a message naming the subscription and never the API key;
everything retriable is retried by the manager (`ReconnectPolicy`: fast after a healthy
connection drops, backoff while attempts fail) and shows up only as gaps.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from bridge.mapping.predexon import PredexonMapper
from bridge.records import Batch, ConnectionPool, Gap, Position, SourceStatus
from bridge.sources.predexon.liveness import HURRY_PING_S
from bridge.sources.predexon.placement import PredexonConnectionManager
from bridge.sources.predexon.subscription import (
    Acked,
    Failed,
    Frame,
    Handle,
    Lagged,
    Lost,
    SubscriptionSpec,
)
from bridge.streams.channels import CHANNELS

log = logging.getLogger(__name__)

LIVENESS_INTERVAL_S = 1.0
"""Idle batches at this period let the pipeline commit an advancing live time: a crash
then costs at most about a second of extra gap (the pipeline may commit less often)."""


class PredexonSource:
    """Yields `Batch`es for one subscription; implements `bridge.records.Source`."""

    def __init__(
        self,
        manager: PredexonConnectionManager,
        spec: SubscriptionSpec,
        mapper: PredexonMapper,
        *,
        liveness_interval_s: float = LIVENESS_INTERVAL_S,
    ) -> None:
        self.manager = manager
        self.spec = spec
        self.mapper = mapper
        self.stream_id = spec.stream_id
        self.liveness_interval_s = liveness_interval_s
        self._handle: Handle | None = None
        self.reconnects: Counter[str] = Counter()
        """Subscriptions lost and renewed, by cause (`polybridge_reconnects_total`): the
        connection's (close_1006, pong_timeout, ...) or `overflow` (resubscribed)."""

    @classmethod
    def create(
        cls,
        manager: PredexonConnectionManager,
        stream_id: str,
        channel: str,
        filters: dict[str, Any],
        *,
        topic: str | None = None,
        prefix: bytes,
    ) -> PredexonSource:
        """Build the spec and mapper for one configured subscription.

        `topic` defaults to the channel's topic; `prefix` is the wire format's value
        prefix for the channel's schema (`WireFormat.prefix(CHANNELS[channel].schema, topic)`).
        """
        spec = SubscriptionSpec(stream_id, channel, filters)
        topic = topic or CHANNELS[channel].topic
        mapper = PredexonMapper(channel, stream_id, topic, prefix, spec.filters_json)
        return cls(manager, spec, mapper)

    @property
    def unknown_fields(self) -> int:
        """Records mapped so far that keep keys Predexon added after this version in an
        `extra`; /metrics shows it as polybridge_unknown_fields_total."""
        return self.mapper.unknown_field_records

    def status(self) -> SourceStatus:
        """The subscription's state for /metrics and /readyz (`bridge.records.SourceStatus`):
        no `connected` (its connection is shared and replaced) and no maintenance windows."""
        return SourceStatus(
            reconnects=dict(self.reconnects),
            unknown_fields=self.unknown_fields,
            pool=ConnectionPool(id(self.manager), self.manager.connection_attempts),
        )

    def update_filters(self, filters: dict[str, Any]) -> None:
        """Change the subscription's filters (update, or replace on the orderbook)."""
        self.spec = SubscriptionSpec(self.spec.stream_id, self.spec.channel, filters)
        self.mapper.filters_json = self.spec.filters_json
        if self._handle is not None:
            self.manager.update(self._handle, filters)

    async def open(self, timeout_s: float) -> int | None:
        """Subscribe before the stream is ours (`bridge.records.OpensAhead`); `stream()`
        then goes on from this subscription. Its ack's instant, or None without one (not
        acked within `timeout_s`, or lost first: `stream()` accounts for that as usual)."""
        if self._handle is None:
            self._handle = self.manager.register(self.spec)
        handle = self._handle
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            first = handle.items[0] if handle.items else None
            if isinstance(first, Acked):
                return first.at_us
            left = deadline - loop.time()
            if first is not None or left <= 0:
                return None
            await handle.wait(left)

    def handing_over(self, seconds: float) -> None:
        """Report the live time often for `seconds`: pings and idle batches every 0.1 s."""
        self.liveness_interval_s = min(self.liveness_interval_s, HURRY_PING_S)
        if self._handle is not None and self._handle.conn is not None:
            self._handle.conn.hurry(seconds)

    def close(self) -> None:
        """Drop a subscription `open()` made that `stream()` never took over."""
        handle, self._handle = self._handle, None
        if handle is not None:
            self.manager.unregister(handle)

    def _detail(self) -> dict[str, str]:
        return {"channel": self.spec.channel, "filters": self.spec.filters_json}

    async def stream(self, start: Position | None) -> AsyncIterator[Batch]:
        """Batches from now on; see the module docstring for positions and gaps."""
        live_us: int | None = None
        event_us: int | None = None
        pending_gap: tuple[int | None, str] | None = None
        if start is not None:
            event_us = start.event_time_us
            live_us = start.live_time_us
            if start.live_time_us is not None:
                pending_gap = (start.live_time_us, "restarted")
        live = False
        handle = self._handle or self.manager.register(self.spec)
        self._handle = handle
        try:
            while True:
                await handle.wait(self.liveness_interval_s)
                item = handle.pop()
                if item is None:
                    alive = handle.alive_us()
                    if live and alive is not None:
                        live_us = max(live_us or 0, alive)
                        yield Batch([], self._position(live_us, event_us))
                    continue
                if isinstance(item, Failed):
                    raise item.error
                if isinstance(item, Lost):
                    if item.reason != "filters_changed":  # a configured change, not a fault
                        self.reconnects[item.cause or item.reason] += 1
                    if live:
                        start_us = max(live_us or 0, item.last_alive_us or 0) or None
                        # Nothing received after the last yielded frame may be claimed live.
                        pending_gap = (start_us, item.reason)
                        live_us = start_us
                    live = False
                    log.info(
                        "predexon stream=%s coverage lost reason=%s", self.stream_id, item.reason
                    )
                    continue
                if isinstance(item, Lagged):
                    lag_from = max(live_us or 0, item.from_us)
                    if live and lag_from < item.to_us:
                        live_us = item.to_us
                        gap = self._gap(lag_from, item.to_us, "slow_consumer")
                        yield Batch([], self._position(live_us, event_us), gaps=[gap])
                    continue
                if isinstance(item, Acked):
                    live = True
                    gaps: list[Gap] = []
                    if pending_gap is not None:
                        from_us, reason = pending_gap
                        # Acked before the previous owner's last live time (opened ahead
                        # of a hand-over): no gap; what both received is dropped as repeats.
                        if from_us is None or from_us < item.at_us:
                            gaps.append(self._gap(from_us, item.at_us, reason))
                        pending_gap = None
                    live_us = max(live_us or 0, item.at_us)
                    yield Batch([], self._position(live_us, event_us), gaps=gaps)
                    continue
                assert isinstance(item, Frame)
                if not live:
                    continue  # a straggler of a lost subscription: inside the gap window
                if item.message is None:
                    records, dead = self.mapper.map_frame(item.raw, item.receive_time_us)
                else:
                    # A bare event (no envelope) belongs to the subscription it was routed to.
                    records, dead = self.mapper.map_message(
                        item.message, item.raw, item.receive_time_us, handle.subscription_id
                    )
                for record in records:
                    if record.event_time_us is not None:
                        event_us = max(event_us or 0, record.event_time_us)
                live_us = max(live_us or 0, item.alive_us or 0) or None
                if not handle.items:  # nothing pending, not even a `Lagged` window
                    alive = handle.alive_us()
                    if alive is not None:
                        live_us = max(live_us or 0, alive)
                yield Batch(records, self._position(live_us, event_us), dead)
        finally:
            if self._handle is handle:
                self._handle = None
            self.manager.unregister(handle)

    def _gap(self, from_us: int | None, to_us: int, reason: str) -> Gap:
        return Gap(
            from_us=from_us,
            to_us=to_us,
            reason=reason,
            channel=self.spec.channel,
            filters=self.spec.filters_json,
        )

    def _position(self, live_us: int | None, event_us: int | None) -> Position:
        return Position(event_time_us=event_us, live_time_us=live_us, detail=self._detail())


__all__ = ["PredexonSource", "SubscriptionSpec"]
