"""Everything the DropCopy simulator is started with (`SimConfig`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bridge.sim.dropcopy.faults import Faults
from bridge.sim.dropcopy.rest import RestConfig
from bridge.sim.market import DEFAULT_FIRMS
from bridge.sim.tokens import DEFAULT_API_AUDIENCE, ClientRegistration


@dataclass(frozen=True)
class SimConfig:
    """Everything the simulator is started with. Defaults suit tests: no live generation."""

    host: str = "127.0.0.1"
    port: int = 0
    seed: int = 0
    rate: float = 0.0
    """Records per second (all streams together) generated live; 0 = none."""
    prefill: int = 0
    """Records generated before serving, with simulated event times ending about now."""
    max_records: int | None = None
    """Stop generating after this many records in total; then only heartbeats flow."""
    start_time_us: int | None = None
    """Event time of the first prefilled record; None = now - prefill * 1 ms."""
    batch: int = 100
    heartbeat_s: float = 1.0
    tls: bool = False
    files_dir: Path | None = None
    """Where TLS files and generated client keys go; None = a temp dir removed on stop."""
    auth: bool = True
    api_audience: str = DEFAULT_API_AUDIENCE
    token_lifetime_s: int = 180
    token_port: int = 0
    clients: tuple[ClientRegistration, ...] = ()
    retention_records: int | None = None
    retention_age_s: float | None = None
    firms: tuple[str, ...] = DEFAULT_FIRMS
    faults: Faults = field(default_factory=Faults)
    """Initial fault settings (copied into `sim.faults`)."""
    secret: bytes | None = None
    """Signs resume and access tokens; None = random per instance."""
    rest: RestConfig = field(default_factory=RestConfig)
    """The REST history (Report API searches, position ledger): `bridge.sim.dropcopy.rest`."""
    contract: str = "current"
    """Wire contract served (`bridge.sim.contract`): "current" = `proto/` as compiled;
    "newer" = with the fields the exchange added since, sent on the wire and described by
    server reflection."""
