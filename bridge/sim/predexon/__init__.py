"""A faithful simulator of Predexon's WebSocket API, as Predexon documents it.

It speaks the documented protocol: key in the URL path (`/v1/<KEY>`, or `?api_key=`),
handshake refusals (401 unknown key, 403 Free plan, 429 connection limit, 503 capacity),
`connected` on open, subscribe/update/unsubscribe answered by `ack` or `error` in request
order, plan limits, protocol pings with a pong deadline, the 4000 idle close, 4001/4002.
Events come from one seeded global stream per channel (`events`); each is recorded
in the ground truth with the time it was generated, then sent to every matching
subscription. What was actually written to each subscription (or dropped, and why) is
recorded too, so tests can tell "lost while disconnected" from "sent".

Like the real server it never blocks on a slow client: each connection has a bounded
outbound queue and events that do not fit are dropped silently; a "stalled" connection
drops everything for a while. Assumption (the docs are silent): unsubscribe and update
are acknowledged with an `ack` carrying the subscription id, like subscribe.

Python API: `PredexonSimulator(SimConfig(...))` with `await start()` / `await stop()`,
`url_for(key)`, the fault knobs below, `ground_truth()` and `sent()`;
`SimulatorThread` runs one in its own event-loop thread for synchronous tests.
CLI: `polybridge sim predexon` (`bridge.commands.sim_predexon`).

This package is the Predexon simulator; this module runs the server: lifecycle,
connections and fault knobs. The parts: `handshake` (keys, refusals), `control`
(subscriptions, plan limits), `fanout` (events to subscriptions), `events` (the seeded
event factory), `rest` (REST history), `connections` and `config` (settings, plans), and
`protocol` (the channels, which events a subscription receives, JSON: the server's own
reading of the documentation, sharing no code with the bridge).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import socket
import time
from collections.abc import Callable
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from bridge.sim.predexon.config import PLANS, PlanLimits, SimConfig
from bridge.sim.predexon.connections import SentEvent, SimConnection, SimSubscription
from bridge.sim.predexon.control import ControlHandler
from bridge.sim.predexon.events import EventFactory
from bridge.sim.predexon.fanout import Fanout
from bridge.sim.predexon.handshake import Handshake
from bridge.sim.predexon.protocol import selects, to_json
from bridge.sim.predexon.rest import PredexonRest
from bridge.sim.spans import longest_overlap
from bridge.sim.thread import LoopThread

log = logging.getLogger(__name__)

MALFORMED_KINDS = ("invalid_json", "truncated", "oversized", "wrong_types", "unknown_type")


def malformed_frame(kind: str, sub_id: str) -> str:
    """The bad frame `send_malformed` sends: one of `MALFORMED_KINDS`."""
    good = {
        "type": "event",
        "subscription_id": sub_id,
        "data": {"event_type": "price_feed", "feed": "BTC/USD", "price": 1.5},
    }
    # Built on demand: the oversized one alone takes ~20 ms, and tests send thousands.
    frames: dict[str, Callable[[], str]] = {
        "invalid_json": lambda: '{"type": "event", "subscription_id": ' + f'"{sub_id}", data: ]',
        "truncated": lambda: json.dumps(good)[:-7],
        "oversized": lambda: json.dumps(good | {"pad": "x" * (5 * 1024 * 1024)}),
        "wrong_types": lambda: json.dumps(
            good | {"data": {"event_type": "price_feed", "feed": 7, "price": "abc"}}
        ),
        "unknown_type": lambda: json.dumps(good | {"data": {"event_type": "surprise"}}),
    }
    return frames[kind]()


_CLOSE_REASONS = {
    1001: "server shutting down",
    4000: "idle: no subscriptions",
    4001: "authentication failed",
    4002: "limit exceeded",
}


class PredexonSimulator:
    """The simulated server; see the module docstring."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self.factory = EventFactory(
            self.config.seed,
            confirm_scale=self.config.confirm_scale,
            newer_keys=self.config.newer_keys,
            crypto_time_unit=self.config.crypto_time_unit,
        )
        self._rng = random.Random(self.config.seed + 1)  # framing choices, not event content
        self._server: Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closing: set[asyncio.Task[None]] = set()
        self._conns: dict[int, SimConnection] = {}
        self._conn_ids = itertools.count(1)
        self._scheduled: list[tuple[float, int, str, dict[str, Any]]] = []
        self._truth: list[dict[str, Any]] = []
        self._all_subs: dict[str, SimSubscription] = {}
        self.revoked: set[str] = set()
        self._handshake = Handshake(self.config, self.revoked, self.connections)
        self.handshakes = self._handshake.handshakes
        """HTTP status of every handshake answered (101 = accepted)."""
        self.handshake_log = self._handshake.handshake_log
        """(monotonic time the handshake request arrived, HTTP status answered), in order."""
        self.drop_log: list[tuple[float, int]] = []
        """(monotonic time, close code) of every connection the fault knobs dropped."""
        self._fanout = Fanout(
            self.config, self.factory, self._rng, self.connections, self._truth, self._scheduled
        )
        self._control = ControlHandler(
            self.config,
            self._rng,
            self.revoked,
            self.connections,
            self._all_subs,
            self._fanout.send_snapshots,
        )
        self.port = 0
        self.rest: PredexonRest | None = None
        """REST history endpoints (`rest.url`, `rest.faults`); set by `start()`."""

    # -- lifecycle ------------------------------------------------------------------
    async def start(self) -> None:
        cfg = self.config
        self._server = await serve(
            self._handle,
            cfg.host,
            cfg.port,
            process_request=self._handshake.process_request,
            ping_interval=cfg.ping_interval_s,
            ping_timeout=cfg.pong_timeout_s,
            max_size=2**20,
            compression=None,
        )
        sock = next(iter(self._server.sockets))
        self.port = sock.getsockname()[1]
        if cfg.rest.enabled:
            self.rest = PredexonRest(
                self._truth, cfg.keys, self.revoked, host=cfg.host, config=cfg.rest
            )
            await self.rest.start()
        self._tasks = [
            asyncio.create_task(self._fanout.run_generator()),
            asyncio.create_task(self._fanout.run_batches()),
        ]
        log.info("predexon simulator listening port=%s", self.port)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            self._server.close()
            if self.rest is not None:
                await self.rest.stop()
                self.rest = None
            await self._server.wait_closed()

    def url_for(self, api_key: str, *, query: bool = False) -> str:
        base = f"ws://{self.config.host}:{self.port}"
        return f"{base}/?api_key={api_key}" if query else f"{base}/v1/{api_key}"

    # -- introspection --------------------------------------------------------------
    def ground_truth(
        self, channel: str, filters: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """Every global event generated on `channel` matching `filters` (None: all), in
        order, as `{"channel", "generated_at" (Unix s), "data"}`."""
        return [
            e
            for e in self._truth
            if e["channel"] == channel and (filters is None or selects(channel, filters, e["data"]))
        ]

    def sent(self, subscription_id: str) -> list[SentEvent]:
        """What the simulator tried to send to one subscription, with each outcome."""
        return list(self._all_subs[subscription_id].sent)

    def subscriptions(self) -> list[SimSubscription]:
        """Every subscription ever acked, in order."""
        return list(self._all_subs.values())

    def longest_overlap(self, channel: str, filters: dict[str, Any] | None = None) -> float:
        """The longest stretch during which two or more subscriptions to `channel` (with
        `filters` as acked; None: any) were held at once, by any connections."""
        return longest_overlap(
            (s.opened, s.ended)
            for s in self._all_subs.values()
            if s.channel == channel and (filters is None or s.filters == filters)
        )

    def connections(self) -> list[SimConnection]:
        return [c for c in self._conns.values() if not c.closed]

    def export_ground_truth(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as out:
            for e in self._truth:
                out.write(to_json(e) + "\n")

    # -- fault knobs ----------------------------------------------------------------
    def drop_connections(self, code: int = 1006, key: str | None = None) -> int:
        """Drop every connection (of `key`): 1006 aborts TCP with no close frame; any
        other code closes with that code (1001 shutting down, 4001, 4002...)."""
        n = 0
        for conn in self.connections():
            if key is not None and conn.key != key:
                continue
            n += 1
            self._drop(conn, code)
        return n

    def _drop(self, conn: SimConnection, code: int) -> None:
        conn.closed = True
        self.drop_log.append((time.monotonic(), code))
        if code == 1006:
            conn.ws.transport.abort()
        else:
            task = asyncio.create_task(conn.ws.close(code, _CLOSE_REASONS.get(code, "")))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def stall(self, seconds: float, key: str | None = None) -> None:
        """Stop sending for `seconds`; events meanwhile are dropped (as for a slow client)."""
        until = time.monotonic() + seconds
        for conn in self.connections():
            if key is None or conn.key == key:
                conn.stalled_until = until

    def send_malformed(self, kind: str, count: int = 1) -> None:
        """Send `count` bad frames on every connection (see `malformed_frame` for the
        kinds)."""
        for conn in self.connections():
            frame = malformed_frame(kind, next(iter(conn.subs), "sub_000000000000"))
            for _ in range(count):
                conn.outbox.put_nowait((frame, []))

    def send_event(self, channel: str, data: dict[str, Any]) -> int:
        """Send `data` as it is, an event of `channel`, to every subscription of the
        channel (filters not applied, not in the ground truth): values no generator makes,
        e.g. extreme numbers. Returns how many subscriptions it was queued for."""
        subs = [s for c in self.connections() for s in c.subs.values() if s.channel == channel]
        for sub in subs:
            self._fanout.send(sub, data)
        return len(subs)

    def send_resync(self) -> None:
        """Orderbook subscriptions get `resync`, then fresh snapshots and `snapshots_done`."""
        now = time.time()
        for conn in self.connections():
            for sub in list(conn.subs.values()):
                if sub.channel == "orderbook" and not sub.wildcard:
                    self._fanout.send(sub, {"event_type": "resync", "timestamp": int(now * 1000)})
                    self._fanout.send_snapshots(sub)

    def revoke_key(self, key: str) -> None:
        """The key stops being valid: its next request gets AUTH_FAILED and close 4001."""
        self.revoked.add(key)

    # -- connection -----------------------------------------------------------------
    async def _handle(self, ws: ServerConnection) -> None:
        key, plan = self._handshake.take(ws)
        if self.config.send_buffer_bytes is not None:
            sock = ws.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.config.send_buffer_bytes)
        conn = SimConnection(next(self._conn_ids), key, plan, ws, asyncio.Queue())
        self._conns[conn.id] = conn
        sender = asyncio.create_task(self._sender(conn))
        idle = asyncio.create_task(self._idle_watch(conn))
        try:
            if self.config.connected_delay_s:
                await asyncio.sleep(self.config.connected_delay_s)
            await ws.send(
                json.dumps({"type": "connected", "message": "Connected to Predexon WebSocket"})
            )
            async for message in ws:
                await self._control.handle(conn, message)
        except ConnectionClosed:
            pass
        finally:
            conn.closed = True
            ended = time.monotonic()
            for sub in conn.subs.values():
                sub.ended = ended
            conn.subs.clear()
            sender.cancel()
            idle.cancel()
            self._conns.pop(conn.id, None)

    async def _sender(self, conn: SimConnection) -> None:
        while True:
            frame, targets = await conn.outbox.get()
            try:
                await conn.ws.send(frame)
            except ConnectionClosed:
                return
            now = time.time()
            for sub, data in targets:
                sub.sent.append(SentEvent(data, now, "sent"))
            conn.events_sent += len(targets)
            every = self.config.drop_every_events
            if every and conn.events_sent >= every and not conn.closed:
                self._drop(conn, self.config.drop_code)
                return

    async def _idle_watch(self, conn: SimConnection) -> None:
        period = min(1.0, self.config.idle_timeout_s / 4)
        while not conn.closed:
            await asyncio.sleep(period)
            if conn.subs:
                conn.idle_since = time.monotonic()
            elif time.monotonic() - conn.idle_since >= self.config.idle_timeout_s:
                conn.closed = True
                await conn.ws.close(4000, "idle: no subscriptions")
                return


STOP_TIMEOUT_S = 30.0
"""Bound for stopping the simulator: closing a WebSocket whose peer went away (a SIGKILLed
bridge, a stalled connection) waits for websockets' close timeout, 10 s per connection."""


class SimulatorThread(LoopThread[PredexonSimulator]):
    """Runs a `PredexonSimulator` in its own event-loop thread (for synchronous tests).

    `with SimulatorThread(config) as runner: runner.sim.url_for(...)`; call knobs with
    `runner.call(runner.sim.drop_connections, 1006)` so they run on the simulator's loop.
    """

    def __init__(self, config: SimConfig | None = None) -> None:
        super().__init__(
            PredexonSimulator(config),
            name="predexon-sim",
            start_timeout_s=10,
            stop_timeout_s=STOP_TIMEOUT_S,
            join_timeout_s=10,
            call_timeout_s=10,
        )
        self.sim = self.server


__all__ = [
    "MALFORMED_KINDS",
    "PLANS",
    "STOP_TIMEOUT_S",
    "PlanLimits",
    "PredexonSimulator",
    "SentEvent",
    "SimConfig",
    "SimConnection",
    "SimSubscription",
    "SimulatorThread",
    "malformed_frame",
]
