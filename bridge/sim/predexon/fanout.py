"""Predexon events, from generation to each subscription: one seeded global stream per channel,
recorded as ground truth, then framed and queued for every matching subscription (or dropped,
as the real server drops for a stalled or slow client)."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
import time
from collections.abc import Callable
from typing import Any

from bridge.sim.predexon.config import SimConfig
from bridge.sim.predexon.connections import SentEvent, SimConnection, SimSubscription
from bridge.sim.predexon.events import EventFactory
from bridge.sim.predexon.protocol import selects, to_json


class Fanout:
    """Generates events (`run_generator`) and delivers them (`send`, `run_batches`).

    `truth` and `scheduled` are the simulator's lists, shared so tests can inspect them;
    `rng` is shared with subscription ids, so a seed gives the same run as before.
    """

    def __init__(
        self,
        config: SimConfig,
        factory: EventFactory,
        rng: random.Random,
        connections: Callable[[], list[SimConnection]],
        truth: list[dict[str, Any]],
        scheduled: list[tuple[float, int, str, dict[str, Any]]],
    ) -> None:
        self._config = config
        self._factory = factory
        self._rng = rng
        self._connections = connections
        self._truth = truth
        self._scheduled = scheduled
        self._seq = itertools.count()

    async def run_generator(self) -> None:
        """Produce `config.rate` events a second per channel, each sent when it is due (some
        events schedule follow-ups, e.g. an order confirmed seconds after it is pending)."""
        cfg = self._config
        owed = dict.fromkeys(cfg.channels, 0.0)
        last = time.monotonic()
        while True:
            await asyncio.sleep(cfg.tick_s)
            mono = time.monotonic()
            now = time.time()
            for channel in cfg.channels:
                owed[channel] += cfg.rate * (mono - last)
                while owed[channel] >= 1.0:
                    owed[channel] -= 1.0
                    for delay, data in self._factory.make(channel, now):
                        heapq.heappush(
                            self._scheduled, (mono + delay, next(self._seq), channel, data)
                        )
            last = mono
            while self._scheduled and self._scheduled[0][0] <= mono:
                _, _, channel, data = heapq.heappop(self._scheduled)
                self._emit(channel, data)

    def _emit(self, channel: str, data: dict[str, Any]) -> None:
        self._truth.append({"channel": channel, "generated_at": time.time(), "data": data})
        for conn in self._connections():
            for sub in list(conn.subs.values()):
                if sub.channel == channel and selects(channel, sub.filters, data):
                    if sub.wildcard and channel == "orderbook":
                        sub.batch.append(data)
                    else:
                        self.send(sub, data)

    def send(self, sub: SimSubscription, data: dict[str, Any]) -> None:
        """Queue one event for `sub`, or record why it was dropped."""
        conn = sub.conn
        if time.monotonic() < conn.stalled_until:
            sub.sent.append(SentEvent(data, time.time(), "dropped_stalled"))
            return
        if conn.outbox.qsize() >= self._config.outbound_frames:
            sub.sent.append(SentEvent(data, time.time(), "dropped_slow_consumer"))
            return
        if self._rng.random() < self._config.bare_ratio:
            frame = to_json(data)
        else:
            frame = to_json({"type": "event", "subscription_id": sub.id, "data": data})
        conn.outbox.put_nowait((frame, [(sub, data)]))
        if self._rng.random() < self._config.duplicate_ratio:
            conn.outbox.put_nowait((frame, [(sub, data)]))

    def send_snapshots(self, sub: SimSubscription) -> None:
        """An orderbook subscription's opening book snapshots, then `snapshots_done`."""
        tokens = self._factory.tokens_for(sub.filters)
        now = time.time()
        for token in tokens:
            self.send(sub, self._factory.book_snapshot(token, now))
        self.send(sub, {"event_type": "snapshots_done", "count": len(tokens)})

    async def run_batches(self) -> None:
        """Every `batch_interval_s`, send each wildcard orderbook subscription its
        `event_batch` of the updates collected since."""
        while True:
            await asyncio.sleep(self._config.batch_interval_s)
            for conn in self._connections():
                for sub in conn.subs.values():
                    if not sub.batch:
                        continue
                    events, sub.batch = sub.batch, []
                    if time.monotonic() < conn.stalled_until:
                        now = time.time()
                        sub.sent.extend(SentEvent(e, now, "dropped_stalled") for e in events)
                        continue
                    frame = to_json(
                        {
                            "type": "event_batch",
                            "subscription_id": sub.id,
                            "count": len(events),
                            "events": events,
                            "gap": False,
                        }
                    )
                    conn.outbox.put_nowait((frame, [(sub, e) for e in events]))
