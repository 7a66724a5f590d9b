"""The exchange's maintenance windows: when refused connections are expected, not a failure.

The exchange is down for maintenance every week (Thursday 06:00-08:00 America/New_York by
default) and in extra windows it announces ad hoc. New connections are refused while a
window is open; afterwards streams resume from their resume tokens. The weekly window is
wall-clock time in its own time zone (`zoneinfo`), so it moves in UTC with daylight saving
time: 06:00 New York is 11:00 UTC in winter and 10:00 UTC in summer. A window whose end is
not after its start (e.g. 22:00-02:00) ends on the next day.

`MaintenanceSchedule.window_at(moment)` is the window open at `moment` (start inclusive,
end exclusive), or None. Windows that overlap or touch are one window: the returned end
is where the chain of them ends, so a client waits once, to the real end.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
# Chained windows are merged at most this many times (a guard, not a realistic count).
_MAX_CHAIN = 64


@dataclass(frozen=True, slots=True)
class Window:
    """One maintenance window: [start, end), both in UTC."""

    start: dt.datetime
    end: dt.datetime
    kind: str
    """`weekly` or `announced` (an extra window); `weekly+announced` when merged."""

    def contains(self, moment: dt.datetime) -> bool:
        return self.start <= moment < self.end


@dataclass(frozen=True, slots=True)
class WeeklyWindow:
    """Every `weekday` from `start` to `end`, wall-clock time in `timezone`."""

    weekday: int
    """0 = Monday .. 6 = Sunday (`datetime.weekday()`)."""
    start: dt.time
    end: dt.time
    timezone: ZoneInfo

    def occurrences(self, moment: dt.datetime) -> Iterable[Window]:
        """The occurrences that could contain `moment`: those starting on the local day of
        `moment` or the day before (a window crossing midnight), and the next day's (for
        chaining)."""
        local_day = moment.astimezone(self.timezone).date()
        for offset in (-1, 0, 1):
            day = local_day + dt.timedelta(days=offset)
            if day.weekday() != self.weekday:
                continue
            end_day = day if self.end > self.start else day + dt.timedelta(days=1)
            yield Window(
                dt.datetime.combine(day, self.start, tzinfo=self.timezone).astimezone(dt.UTC),
                dt.datetime.combine(end_day, self.end, tzinfo=self.timezone).astimezone(dt.UTC),
                "weekly",
            )


class MaintenanceSchedule:
    """The weekly window (optional) and the announced extra windows (see module docstring)."""

    def __init__(
        self,
        weekly: WeeklyWindow | None,
        extra: Sequence[tuple[dt.datetime, dt.datetime]] = (),
    ) -> None:
        for start, end in extra:
            if start.tzinfo is None or end.tzinfo is None:
                raise ValueError("maintenance windows need timezone-aware times")
            if end <= start:
                raise ValueError(f"maintenance window ends ({end}) before it starts ({start})")
        self.weekly = weekly
        self.extra = tuple(
            Window(start.astimezone(dt.UTC), end.astimezone(dt.UTC), "announced")
            for start, end in extra
        )

    def _candidates(self, moment: dt.datetime) -> list[Window]:
        found = list(self.weekly.occurrences(moment)) if self.weekly else []
        return found + list(self.extra)

    def window_at(self, moment: dt.datetime) -> Window | None:
        """The window open at `moment` (aware), merged with the windows it runs into."""
        if moment.tzinfo is None:
            raise ValueError("window_at needs a timezone-aware time")
        # Everything in UTC: aware times sharing one zone compare by wall clock, not instant.
        moment = moment.astimezone(dt.UTC)
        open_now = [w for w in self._candidates(moment) if w.contains(moment)]
        if not open_now:
            return None
        start = min(w.start for w in open_now)
        end = max(w.end for w in open_now)
        kinds = {w.kind for w in open_now}
        for _ in range(_MAX_CHAIN):
            following = [w for w in self._candidates(end) if w.start <= end < w.end]
            if not following:
                break
            end = max(w.end for w in following)
            kinds |= {w.kind for w in following}
        return Window(start, end, "+".join(sorted(kinds, key=("weekly", "announced").index)))


def parse_clock(text: str) -> dt.time:
    """`HH:MM` (or `HH:MM:SS`) as a time of day."""
    try:
        value = dt.time.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"not a time of day (HH:MM): {text!r}") from exc
    if value.tzinfo is not None:
        raise ValueError(f"a time of day takes no offset (set the timezone instead): {text!r}")
    return value
