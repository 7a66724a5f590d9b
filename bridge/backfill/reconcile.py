"""Planning reconciliation windows: which recent window a periodic REST check fills next.

Opt-in (Predexon trades): every `interval_s` the backfill task fills the window from the
previous check's end to `lag_s` ago like a gap, without a follow-up record, so what the
stream missed is written. Consecutive windows meet: each starts where the previous ended.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from bridge.records import Gap
from bridge.timeutil import now_us

RECONCILIATION = "reconciliation"
"""The reason of a reconciliation window (no gap record to close)."""


@dataclass(frozen=True, slots=True)
class Reconcile:
    """The periodic REST check of one stream (see the module docstring)."""

    interval_s: float
    lag_s: float
    channel: str
    filters: str


class ReconcileSchedule:
    """When the next reconciliation window is due, and which window it is."""

    def __init__(self, plan: Reconcile) -> None:
        self.plan = plan
        self._reconciled_to: int | None = None
        """End of the last window handed out (None: none yet)."""
        self._next_at = 0.0
        """`time.monotonic()` of the next check (0: the first check is due at once)."""

    def due_window(self) -> Gap | None:
        """The next window when a check is due (and the next check scheduled), else None."""
        plan = self.plan
        if time.monotonic() < self._next_at:
            return None
        self._next_at = time.monotonic() + plan.interval_s
        now = now_us()
        to_us = now - int(plan.lag_s * 1_000_000)
        from_us = self._reconciled_to
        if from_us is None:
            from_us = to_us - int(plan.interval_s * 1_000_000)
        if to_us <= from_us:
            return None
        self._reconciled_to = to_us
        return Gap(from_us, to_us, RECONCILIATION, plan.channel, plan.filters, now, False)

    def seconds_until_due(self) -> float:
        return max(0.0, self._next_at - time.monotonic())
