"""Counters the DropCopy simulator keeps, for tests to wait on and assert against."""

from __future__ import annotations

from dataclasses import dataclass, field

from bridge.sim.market import STREAMS
from bridge.sim.spans import longest_overlap


@dataclass
class SimStats:
    """Counters tests can wait on."""

    calls: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STREAMS, 0))
    responses: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STREAMS, 0))
    generated: int = 0
    silenced: int = 0
    """Calls that went silent (`Faults.silent_after_responses`)."""
    maintenance_refusals: int = 0
    """Calls refused or closed because of a maintenance window (`Faults.maintenance`)."""
    call_spans: dict[str, list[list[float]]] = field(
        default_factory=lambda: {stream: [] for stream in STREAMS}
    )
    """Per stream, [opened, closed] (monotonic seconds; closed = inf while open) of every
    call that got past authorization: how many clients held the stream at once."""

    def longest_overlap(self, stream: str) -> float:
        """The longest stretch during which two or more calls of `stream` were open."""
        return longest_overlap((start, end) for start, end in self.call_spans[stream])
