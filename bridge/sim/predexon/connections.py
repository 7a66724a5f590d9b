"""What the Predexon simulator knows of each open connection and subscription, including every
event it tried to send them (and what became of it)."""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import ServerConnection


@dataclass(slots=True)
class SentEvent:
    """One event the simulator tried to send to one subscription."""

    data: dict[str, Any]
    at: float
    status: str
    """sent, dropped_stalled, dropped_slow_consumer."""


@dataclass(eq=False)
class SimSubscription:
    id: str
    channel: str
    filters: dict[str, Any]
    conn: SimConnection
    items: int
    wildcard: bool
    sent: list[SentEvent] = field(default_factory=list)
    batch: list[dict[str, Any]] = field(default_factory=list)
    opened: float = field(default_factory=time.monotonic)
    ended: float = math.inf
    """Monotonic time of the unsubscribe or of the connection's end (inf while held)."""


@dataclass(eq=False)
class SimConnection:
    id: int
    key: str | None
    plan: str
    ws: ServerConnection
    outbox: asyncio.Queue[tuple[str, list[tuple[SimSubscription, dict[str, Any]]]]]
    subs: dict[str, SimSubscription] = field(default_factory=dict)
    stalled_until: float = 0.0
    idle_since: float = field(default_factory=time.monotonic)
    request_times: list[float] = field(default_factory=list)
    closed: bool = False
    events_sent: int = 0


def reply(conn: SimConnection, message: dict[str, Any]) -> None:
    """Queue a control answer (ack, error) behind whatever the connection has queued."""
    conn.outbox.put_nowait((json.dumps(message), []))


def error(conn: SimConnection, code: str, message: str) -> None:
    reply(conn, {"type": "error", "code": code, "message": message})
