"""What the Predexon simulator is started with: its settings (some are live fault knobs) and the
plans' limits."""

from __future__ import annotations

from dataclasses import dataclass, field

from bridge.sim.predexon.protocol import CHANNELS
from bridge.sim.predexon.rest import PredexonRestConfig


@dataclass(frozen=True, slots=True)
class PlanLimits:
    subs_per_connection: int
    items_per_sub: int
    items_total: int
    wildcard_connections_per_channel: int
    connections: int
    """Concurrent connections per key (undocumented numbers; 429 above)."""


PLANS: dict[str, PlanLimits] = {
    "dev": PlanLimits(10, 10, 100, 0, 5),
    "pro": PlanLimits(100, 500, 50_000, 2, 50),
}


@dataclass
class SimConfig:
    """Simulator settings; the fault knobs among them may be changed while it runs."""

    host: str = "127.0.0.1"
    port: int = 0
    seed: int = 0
    rate: float = 20.0
    """Events generated per second on each channel."""
    keys: dict[str, str] = field(
        default_factory=lambda: {"sim-pro-key": "pro", "sim-dev-key": "dev", "sim-free-key": "free"}
    )
    channels: tuple[str, ...] = tuple(CHANNELS)
    ping_interval_s: float = 30.0
    pong_timeout_s: float = 60.0
    idle_timeout_s: float = 120.0
    confirm_scale: float = 1.0
    """Multiplies the 3-5 s pending -> confirmed delay (0.01 for fast tests)."""
    bare_ratio: float = 0.0
    """Share of events sent as the bare `data` object instead of the envelope."""
    duplicate_ratio: float = 0.0
    """Share of event frames sent twice."""
    outbound_frames: int = 5_000
    """Frames queued per connection before new events are dropped (the real 1 MB buffer)."""
    send_buffer_bytes: int | None = None
    """Each connection's kernel send buffer (SO_SNDBUF); None: the OS default, autotuned to
    megabytes on loopback. Bounded, a slow reader backs up into `outbound_frames` within
    seconds instead of into the kernel, where every pong waits behind it."""
    batch_interval_s: float = 0.25
    """Wildcard orderbook `event_batch` period, as documented."""
    max_requests_per_s: int = 50
    """Control messages per connection per second before RATE_LIMIT."""
    capacity_full: bool = False
    """Refuse new connections with 503."""
    allow_keyless: bool = False
    """Accept `/v1` without a key; every request then gets AUTH_REQUIRED."""
    plan_required: dict[str, str] = field(default_factory=dict)
    """channel -> plan needed to subscribe to it (PLAN_REQUIRED otherwise)."""
    tick_s: float = 0.02
    """Generator period: events are produced in small bursts this often."""
    connected_delay_s: float = 0.0
    """Wait this long after the handshake before sending `connected` (a busy server)."""
    drop_every_events: int = 0
    """Drop a connection (with `drop_code`) once it has been sent this many events; 0: never.
    A flaky server or load balancer, for the reconnect benchmark."""
    drop_code: int = 1006
    """Close code of `drop_every_events` drops (1006: abort TCP, see `drop_connections`)."""
    newer_keys: bool = False
    """Events carry keys the bridge does not know, as a newer Predexon would send
    (`EventFactory._add_newer_keys`)."""
    crypto_time_unit: str = "s"
    """Unit of the crypto channel's `price_feed` times (`timestamp`, `observed_at`): "s",
    "ms" or "us". Predexon does not publish it; other servers were seen to send ms."""
    rest: PredexonRestConfig = field(default_factory=PredexonRestConfig)
    """REST history (`/v2/polymarket/trades`, `/activity`): `bridge.sim.predexon.rest`."""
