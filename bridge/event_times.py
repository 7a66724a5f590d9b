"""Which upstream times may become an event time: the unit by magnitude, and plausibility.

An event time goes into a record's `event_time` (Avro timestamp-micros) and from there into
the stream's position in the state topic. A wrong one poisons both: readers that turn
timestamp-micros into dates (fastavro, most Java date types) fail beyond year 9999, and a
position far in the future is resumed from. So a time becomes an event time only when it is
*plausible*: from `EARLIEST_US` (2000-01-01) to `AHEAD_US` (one day) past the bridge's
clock. Anything else leaves the event time null; the raw value stays in its own field.

Where an upstream does not publish a time's unit (Predexon), the unit is read from the
magnitude of the number (`micros_by_magnitude`): below 10^11 seconds, below 10^14
milliseconds, below 10^17 microseconds. A plausible time (2000 to now: about 10^9 s, 10^12
ms, 10^15 us) lies inside its unit's band, a factor of 9 or more from either edge, so none is
read in the wrong unit. Larger numbers (nanoseconds, 2^63-1) have no unit here.
"""

from __future__ import annotations

from datetime import UTC, datetime

EARLIEST_US = 946_684_800_000_000
"""2000-01-01T00:00:00Z: no upstream of the bridge has events before it."""
AHEAD_US = 86_400_000_000
"""One day: how far past the bridge's clock a time may be (clock skew between hosts is
seconds; a day is far beyond it and far below any unit error)."""

_UNITS = ((10**11, 1_000_000), (10**14, 1_000), (10**17, 1))
"""(exclusive upper bound of the number, microseconds per unit): seconds, ms, us."""


def micros_by_magnitude(value: int) -> int | None:
    """`value` (seconds, milliseconds or microseconds since the epoch, told apart by
    magnitude) in microseconds; None for zero, negatives and numbers of no unit."""
    if value <= 0:
        return None
    for bound, per_unit in _UNITS:
        if value < bound:
            return value * per_unit
    return None


def is_plausible(time_us: int, now_us: int) -> bool:
    """Whether `time_us` may be an event time when the bridge's clock reads `now_us`."""
    return EARLIEST_US <= time_us <= now_us + AHEAD_US


def plausible_or_none(time_us: int | None, now_us: int) -> int | None:
    """`time_us` if it is plausible at `now_us`, else None."""
    return time_us if time_us is not None and is_plausible(time_us, now_us) else None


def describe_us(time_us: int) -> str:
    """A time in microseconds as ISO-8601 UTC, or the number when no date holds it."""
    try:
        moment = datetime.fromtimestamp(time_us / 1e6, tz=UTC)
    except (OverflowError, ValueError, OSError):
        return f"{time_us} us since the epoch (no date: beyond years 1-9999)"
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


BOUNDS_TEXT = "from 2000-01-01T00:00:00Z to one day after the bridge's clock"
"""The plausibility bounds in words, for error messages."""
