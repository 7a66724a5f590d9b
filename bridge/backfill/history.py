"""The contract between a gap filler and an upstream's REST history.

A `History` fetches the records of one stream for a time window, page by page, from a
cursor; each page says where the next one starts, so a backfill interrupted anywhere (a
crash) resumes after the last page it committed, and no page is fetched twice.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from bridge.records import DeadLetter, Gap, Record


@dataclass(frozen=True, slots=True)
class Window:
    """The upstream time to fetch: [from_us, to_us], inclusive (REST bounds are not
    documented as exclusive; repeats are dropped by event id)."""

    from_us: int
    to_us: int


def window_of(gap: Gap) -> Window | None:
    """The REST window of `gap`, or None when it has no start (nothing covered before)."""
    return None if gap.from_us is None else Window(gap.from_us, gap.to_us)


@dataclass(frozen=True, slots=True)
class Page:
    """Records mapped from one REST page, rows that did not map, and the cursor after it
    (None: the window is exhausted)."""

    records: list[Record]
    dead_letters: list[DeadLetter]
    cursor: str | None


class History(Protocol):
    """REST history of one stream."""

    def pages(self, window: Window, cursor: str | None) -> AsyncIterator[Page]:
        """Pages of the window from `cursor` (None: its start), oldest first where the
        upstream allows. Rate limits are waited out inside; a window the upstream cannot
        serve (beyond retention, a filter REST cannot express) raises `Unfillable`."""
        ...


class Unfillable(Exception):
    """The upstream cannot serve this window for this stream; the message says why."""
