"""How long two holders of one upstream stream overlapped: the simulators record when each
call or subscription opened and closed, and the high-availability tests bound the overlap."""

from __future__ import annotations

from collections.abc import Iterable


def longest_overlap(spans: Iterable[tuple[float, float]]) -> float:
    """The longest stretch during which two or more of the `(opened, closed)` spans were
    open at once (closed = inf while still open)."""
    longest, horizon = 0.0, float("-inf")
    for start, end in sorted(spans):
        if start < horizon:  # overlaps an earlier span still open
            longest = max(longest, min(end, horizon) - start)
        horizon = max(horizon, end)
    return longest
