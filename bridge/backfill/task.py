"""Filling a stream's gaps from REST history, exactly once, beside the live stream.

One task per stream, on the instance that runs the stream, with its own transactional
producer (`<app_id>.<stream id>.backfill`), so it never holds up the stream's transactions:

1. **Fence, settle, read.** `init()` fences an older owner of the backfill id (another
   instance, or `polybridge backfill`) and settles its open transaction. Then the cursor is
   read from the state topic (`<stream id>/backfill`), and the gaps topic tells which of
   the stream's gaps are still open (no follow-up yet); they are appended to the cursor.
   Gaps the stream commits later arrive through `notify()` (the pipeline's commit hook).
2. **Fill the first gap.** Its window is fetched through a `History` from the cursor's page
   cursor. Records whose event id the stream's topic already holds (read back
   read_committed) or this fill already wrote are dropped; the rest go into the stream's
   topics with the header `polybridge.source: rest`, at most `max_records_per_transaction`
   per transaction, each transaction carrying the cursor record. A page split over several
   transactions keeps the cursor before it until its last part: after a crash it is fetched
   again, and the parts already committed are dropped as already in Kafka. Dead letters go
   with a page's last part, so they are written once.
3. **Close it.** The transaction with the last page also writes the gap's follow-up record
   (status filled, partially_filled or unfillable, with a detail) and the cursor without the
   gap. A `History` that raises `Unfillable` closes the gap at once the same way.
4. Between transactions the task yields to the event loop; REST rate limits are waited
   inside the `History`. A REST error (anything else a `History` raises) or a Kafka error
   keeps the gap open: the task aborts and tries again `retry_interval_s` later from the
   committed cursor. Fencing (another owner of the backfill id) ends the fill; the task
   starts over (fencing back) only when the stream writes a new gap.

This module is the loop (which gap, which page, when to retry) and its counters; each
transaction is written by `bridge.backfill.writer`, reconciliation windows are planned by
`bridge.backfill.reconcile`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from bridge.backfill.cursor import (
    PARTIALLY_FILLED,
    UNFILLABLE,
    Cursor,
    GapRecord,
    cursor_of,
    still_open,
)
from bridge.backfill.history import History, Page, Unfillable, window_of
from bridge.backfill.known import Known, NaturalKey
from bridge.backfill.reconcile import Reconcile, ReconcileSchedule
from bridge.backfill.writer import BackfillWriter, FollowUp, Transaction, outcome_of
from bridge.eos.contract import Producer, SideTopics
from bridge.errors import FencedError, KafkaError
from bridge.kafka.readback import ReadStopped, unless_stopped
from bridge.kafka.state import StateEntry
from bridge.records import Gap, Record
from bridge.timeutil import now_us

log = logging.getLogger(__name__)


class BackfillIO(Protocol):
    """What the task needs of Kafka (`bridge.backfill.kafka.KafkaBackfillIO`)."""

    transactional_id: str

    def new_producer(self) -> Producer: ...

    def cursor_entry(self, stop: threading.Event | None = None) -> StateEntry | None:
        """The committed cursor; `stop`, once set, ends a read that waits (`ReadStopped`)."""
        ...

    def gap_records(self) -> list[GapRecord]: ...

    def known_records(self, topic: str, since_us: int) -> list[tuple[str, bytes | None]]:
        """(event id, value) of the stream's committed records in `topic` since `since_us`."""
        ...


HistoryFor = Callable[[Gap], History]
"""The REST history of the stream for one gap; raises `Unfillable` when there is none
(instrument states, order books, a filter REST cannot express, ...)."""


@dataclass(slots=True)
class BackfillStats:
    """Counters of one stream's backfill (for /metrics and the command's summary)."""

    open_gaps: int = 0
    oldest_open_detected_us: int | None = None
    fetched: int = 0
    already_in_kafka: int = 0
    written: int = 0
    dead_letters: int = 0
    gaps_closed: dict[str, int] = field(default_factory=dict)
    rest_errors: dict[str, int] = field(default_factory=dict)
    """REST failures by HTTP status (`other` when the error carries none)."""
    transactions: int = 0
    running: bool = False


class _Stopped(Exception):
    """The stop event was set between two transactions."""


class BackfillTask:
    """Fills one stream's gaps (see the module docstring)."""

    def __init__(
        self,
        *,
        stream_id: str,
        upstream: str,
        topic: str,
        history_for: HistoryFor,
        io: BackfillIO,
        side: SideTopics,
        instance_id: str,
        max_records_per_transaction: int = 1_000,
        retry_interval_s: float = 60.0,
        stats: BackfillStats | None = None,
        on_progress: Callable[[BackfillStats], None] | None = None,
        natural: NaturalKey | None = None,
        reconcile: Reconcile | None = None,
    ) -> None:
        self.stream_id = stream_id
        self.upstream = upstream
        self.topic = topic
        self.stats = stats if stats is not None else BackfillStats()
        self._history_for = history_for
        self._io = io
        self._writer = BackfillWriter(
            stream_id=stream_id,
            upstream=upstream,
            instance_id=instance_id,
            topic=topic,
            side=side,
            new_producer=io.new_producer,
        )
        self._max = max_records_per_transaction
        self._retry_s = retry_interval_s
        self._on_progress = on_progress
        self._new: list[Gap] = []
        self._wake = asyncio.Event()
        self._cursor = Cursor()
        self._known: Known | None = None
        self._natural = natural
        self._reconcile = ReconcileSchedule(reconcile) if reconcile is not None else None

    # -- what the stream tells us -------------------------------------------------------

    def notify(self, gaps: Sequence[Gap]) -> None:
        """The stream committed `gaps` (called on the event loop, after the commit)."""
        now = now_us()
        self._new.extend(replace(g, detected_at_us=now) for g in gaps)
        self._wake.set()

    # -- the loop -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Fill gaps until `stop` is set; errors are logged and retried, never raised."""
        self.stats.running = True
        started = False
        try:
            while not stop.is_set():
                try:
                    if not started:
                        await self._start(stop)
                        started = True
                    self._reconcile_if_due()
                    self._take_new()
                    if not self._cursor.gaps:
                        await self._wait(stop, self._until_reconcile())
                        continue
                    await self._fill_first(stop)
                except _Stopped:
                    break
                except FencedError as exc:
                    log.warning(
                        "stream=%s backfill fenced (%s); it starts again at the next gap",
                        self.stream_id,
                        exc,
                    )
                    await self._writer.aclose()
                    started = False
                    self._wake.clear()
                    await self._wait(stop, None)
                except KafkaError as exc:
                    log.warning(
                        "stream=%s backfill kafka error, retrying in %g s: %s",
                        self.stream_id,
                        self._retry_s,
                        exc,
                    )
                    await self._writer.aclose()
                    self._known = None
                    started = False
                    await self._wait(stop, self._retry_s)
                except Exception as exc:  # REST: the History's errors
                    self._count_rest_error(exc)
                    log.warning(
                        "stream=%s backfill REST error, gap stays open, retrying in %g s: %s",
                        self.stream_id,
                        self._retry_s,
                        exc,
                    )
                    await self._writer.abort()
                    self._known = None
                    await self._wait(stop, self._retry_s)
        finally:
            self.stats.running = False
            await self._writer.aclose()

    async def fill(self, gap: Gap, stop: asyncio.Event) -> None:
        """Fill one window before anything else in the cursor (the `backfill` command).

        Raises what `run` would retry: `KafkaError` (fencing included) and REST errors."""
        try:
            await self._start(stop)
        except _Stopped:
            return
        if gap.identity not in {g.identity for g in self._cursor.gaps}:
            self._cursor = Cursor((gap, *self._cursor.gaps))
        elif self._cursor.gaps[0].identity != gap.identity:
            rest = tuple(g for g in self._cursor.gaps if g.identity != gap.identity)
            self._cursor = Cursor((gap, *rest))
        self._new.clear()
        try:
            await self._fill_first(stop)
        except _Stopped:
            pass  # the cursor says where a next run (or the bridge) resumes
        finally:
            await self._writer.aclose()

    async def _start(self, stop: asyncio.Event) -> None:
        """Fence, settle, read the cursor, and add the gaps still open on the gaps topic.
        The cursor read may wait for transactions open on the state topic; a stop ends it
        (`_Stopped`)."""
        await self._writer.start()
        try:
            entry = await unless_stopped(stop, self._io.cursor_entry)
        except ReadStopped:
            raise _Stopped from None
        cursor = cursor_of(entry)
        records = await asyncio.to_thread(self._io.gap_records)
        cursor = cursor.add(still_open(records))
        self._cursor = cursor
        self._known = None
        self._publish()
        log.info(
            "stream=%s backfill started: %d open gap(s)%s",
            self.stream_id,
            len(cursor.gaps),
            f", resuming from page cursor {cursor.page_cursor!r}" if cursor.page_cursor else "",
        )

    def _reconcile_if_due(self) -> None:
        if self._reconcile is not None and (window := self._reconcile.due_window()):
            self._new.append(window)

    def _until_reconcile(self) -> float | None:
        """Seconds until the next reconciliation window (None: no reconciliation)."""
        return None if self._reconcile is None else self._reconcile.seconds_until_due()

    def _take_new(self) -> None:
        if self._new:
            self._cursor = self._cursor.add(self._new)
            self._new = []
            self._publish()

    async def _wait(self, stop: asyncio.Event, timeout: float | None) -> None:
        """Until a new gap, `stop`, or `timeout`."""
        if self._new:
            return
        self._wake.clear()
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    # -- one gap ------------------------------------------------------------------------

    async def _fill_first(self, stop: asyncio.Event) -> None:
        gap = self._cursor.gaps[0]
        window = window_of(gap)
        if window is None:
            await self._close(gap, UNFILLABLE, "the gap has no start: nothing was covered before")
            return
        try:
            history = self._history_for(gap)
        except Unfillable as exc:
            await self._close(gap, UNFILLABLE, str(exc))
            return
        pages = history.pages(window, self._cursor.page_cursor)
        served = False
        try:
            while (page := await _next_page(pages, stop)) is not None:
                served = True
                if self._known is None:
                    # Read after the first page, not before: a history may wait for the
                    # upstream to settle first, and the stream goes on writing meanwhile.
                    found = await asyncio.to_thread(
                        self._io.known_records, self.topic, window.from_us
                    )
                    self._known = Known(found, self._natural)
                done = await self._write_page(gap, page, stop)
                if done:
                    return
        except Unfillable as exc:
            if served or self._cursor.page_cursor is not None:
                await self._close(gap, PARTIALLY_FILLED, f"history ended early: {exc}")
            else:
                await self._close(gap, UNFILLABLE, str(exc))
            return
        finally:
            aclose = getattr(pages, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
        # The history ended without a page saying so (cursor None): the window is done.
        await self._close(gap, *outcome_of(self._cursor))

    async def _write_page(self, gap: Gap, page: Page, stop: asyncio.Event) -> bool:
        """Write one page (in parts of at most `_max` records); True when it closed the
        gap (its cursor was None)."""
        known = self._known if self._known is not None else Known(())
        stats = self.stats
        stats.fetched += len(page.records)
        new: list[Record] = []
        for record in page.records:
            if known.holds(record):
                stats.already_in_kafka += 1
                continue
            new.append(record)
        parts = [new[i : i + self._max] for i in range(0, len(new), self._max)] or [[]]
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            cursor = self._cursor
            if last:
                cursor = Cursor(
                    cursor.gaps,
                    page.cursor,
                    cursor.records + len(new),
                    cursor.dead_letters + len(page.dead_letters),
                )
            letters = page.dead_letters if last else []
            follow_up = None
            if last and page.cursor is None:
                follow_up = FollowUp(*outcome_of(cursor), cursor.records)
                cursor = self._with_new(cursor.next_gap())
            await self._transact(Transaction(part, letters, cursor, gap, follow_up))
            if index < len(parts) - 1:
                await asyncio.sleep(0)
                if stop.is_set():
                    raise _Stopped
        await asyncio.sleep(0)
        return page.cursor is None

    def _with_new(self, cursor: Cursor) -> Cursor:
        """`cursor` with the gaps notified meanwhile (so the next cursor record lists them)."""
        if self._new:
            cursor = cursor.add(self._new)
            self._new = []
        return cursor

    async def _close(self, gap: Gap, status: str, detail: str) -> None:
        cursor = self._cursor
        records = cursor.records if cursor.gaps and cursor.gaps[0] == gap else 0
        after = self._with_new(cursor.next_gap())
        await self._transact(Transaction([], [], after, gap, FollowUp(status, detail, records)))

    async def _transact(self, txn: Transaction) -> None:
        """One transaction (`BackfillWriter.write`), then the bookkeeping of its commit."""
        try:
            await self._writer.write(txn)
        except BaseException:
            # What this transaction dropped as "written by us" was not written after all.
            self._known = None
            raise
        self._cursor = txn.cursor
        stats = self.stats
        stats.written += len(txn.records)
        stats.dead_letters += len(txn.letters)
        stats.transactions += 1
        follow_up, gap = txn.follow_up, txn.gap
        if follow_up is not None:
            status = follow_up.status
            stats.gaps_closed[status] = stats.gaps_closed.get(status, 0) + 1
            self._known = None  # the next gap reads its own window back
            log.info(
                "stream=%s gap from=%s to=%s reason=%s %s: %s",
                self.stream_id,
                gap.from_us,
                gap.to_us,
                gap.reason,
                status,
                follow_up.detail,
            )
        self._publish()

    def _publish(self) -> None:
        gaps = self._cursor.gaps
        self.stats.open_gaps = len(gaps)
        self.stats.oldest_open_detected_us = min((g.detected_at_us for g in gaps), default=None)
        if self._on_progress is not None:
            self._on_progress(self.stats)

    def _count_rest_error(self, exc: BaseException) -> None:
        status = getattr(exc, "status", None) or getattr(exc, "status_code", None)
        label = str(status) if status is not None else "other"
        self.stats.rest_errors[label] = self.stats.rest_errors.get(label, 0) + 1


def lag_seconds(stats: BackfillStats, now: float | None = None) -> float:
    """Age of the oldest open gap, seconds (0 when none)."""
    if stats.oldest_open_detected_us is None:
        return 0.0
    wall = time.time() if now is None else now
    return max(0.0, wall - stats.oldest_open_detected_us / 1e6)


async def _next_page(pages: AsyncIterator[Page], stop: asyncio.Event) -> Page | None:
    """The next page (None: the history ended); raises `_Stopped` when `stop` is set first
    (a REST call or rate-limit wait in progress is cancelled: nothing of it was written)."""
    if stop.is_set():
        raise _Stopped
    fetch = asyncio.ensure_future(anext(pages, None))
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([fetch, stopped], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if not fetch.done():
        fetch.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await fetch
        raise _Stopped
    return fetch.result()
