"""The DropCopy simulator's fault knobs: what goes wrong, set at start or changed while it runs."""

from __future__ import annotations

import time
from dataclasses import dataclass

import grpc

# `--token-refused-code` choices: statuses an exchange may use for a resume token it refuses.
TOKEN_REFUSED_CODES = {
    "INVALID_ARGUMENT": grpc.StatusCode.INVALID_ARGUMENT,
    "FAILED_PRECONDITION": grpc.StatusCode.FAILED_PRECONDITION,
    "OUT_OF_RANGE": grpc.StatusCode.OUT_OF_RANGE,
    "NOT_FOUND": grpc.StatusCode.NOT_FOUND,
}


@dataclass
class Faults:
    """Fault knobs, read on every call / response: mutate `sim.faults` at runtime."""

    drop_after_responses: int | None = None
    """Abort each call with UNAVAILABLE after it has sent this many responses."""
    fail_next_calls: int = 0
    """The next K call attempts (any stream) fail immediately with `fail_code`."""
    fail_code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    """UNAVAILABLE or RESOURCE_EXHAUSTED (any code works)."""
    token_max_age_s: float | None = None
    """Resume tokens issued longer ago than this are refused with `token_refused_code`."""
    token_refused_code: grpc.StatusCode = grpc.StatusCode.FAILED_PRECONDITION
    """Status for a refused (expired or beyond retention) resume token."""
    duplicate_probability: float = 0.0
    """Each data response re-sends, with this probability, the last `duplicate_count`
    records of the previous response (at-least-once delivery)."""
    duplicate_every: int | None = None
    """Every Nth data response re-sends the previous response's last records."""
    duplicate_count: int = 3
    resume_overlap: int = 0
    """A call resumed by token first re-sends this many matching records before the token."""
    idle_disconnect_s: float | None = None
    """Close with UNAVAILABLE after this long without a data record (the exchange's load
    balancer does so after 10 minutes); heartbeats do not count as data."""
    silent_after_responses: int | None = None
    """Each call goes silent after sending this many responses: no records, no heartbeats,
    yet the call stays open (and keepalive pings are answered) until the client cancels it.
    A call that went silent stays silent; new calls send this many responses again."""
    maintenance: tuple[tuple[float, float], ...] = ()
    """Maintenance windows `(start, end)` in Unix seconds (simulator time, [start, end)):
    inside one, new calls are refused with `maintenance_code` and open calls are closed
    with it (within `heartbeat_s`); afterwards resume tokens are honoured as usual."""
    maintenance_code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    """Status of maintenance refusals (the exchange does not document it)."""

    def in_maintenance(self, now_s: float | None = None) -> bool:
        """True inside one of the `maintenance` windows (at `now_s`, default now)."""
        moment = time.time() if now_s is None else now_s
        return any(start <= moment < end for start, end in self.maintenance)
