"""One stream into Kafka, exactly once: batches and their position in one transaction.

The loop, for one stream (Kafka Connect's exactly-once source task, in this shape):
1. `init_transactions()` fences any older owner of the stream's transactional id and
   settles its open transaction; then the stream's committed position is read from the
   state topic, and the repeat filter is seeded from the stream's recent records.
2. The source streams batches from that position into a bounded queue (when Kafka is slow
   the queue fills, the source stops reading, and upstream flow control pushes back).
3. Each batch's records (minus upstream repeats), dead letters and gaps are produced into
   the open transaction; the state record carrying the newest batch's position is produced
   last, and the transaction commits when `CommitPolicy` says so: as soon as nothing more
   is queued (group commit), within `max_records` and `max_latency_ms`.
4. A retriable Kafka error aborts the transaction and goes back to step 1 with a new
   producer: its `init_transactions()` settles the last transaction either way (also when
   its commit had an unknown outcome), its epoch fences the old producer's requests still
   under way, and step 1 reads back the committed position; the source restarts from
   there, so nothing is lost or doubled. Fencing and other fatal errors end the pipeline.

A source that can open ahead (`OpensAhead`: Predexon, which cannot replay) subscribes
before step 1 (make before break). If the stream's previous owner is another instance
still running it (revoked, it goes on until fenced: `hand_over()`), step 1 waits until that
owner committed a live time past the new subscription's ack, so the two cover the
hand-over together: the repeat filter drops what both received, and no gap is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence

from bridge.config import PipelineSettings
from bridge.eos.commit_policy import CommitPolicy
from bridge.eos.contract import PipelineStats, Positions, Producer, SideTopics
from bridge.eos.repeats import RepeatFilter
from bridge.eos.side_records import SideRecords
from bridge.eos.transactions import Transactions
from bridge.errors import FencedError, KafkaError
from bridge.kafka.producer import Headers
from bridge.kafka.readback import ReadStopped, unless_stopped
from bridge.kafka.state import StateEntry
from bridge.records import (
    EVENT_ID_HEADER,
    STREAM_HEADER,
    Batch,
    DeadLetter,
    Gap,
    OpensAhead,
    Position,
    Record,
    Source,
)
from bridge.timeutil import now_us

log = logging.getLogger(__name__)

# After a retriable Kafka error, wait this long before resuming: long enough not to spin
# against a broker that is restarting, short enough to keep the stream's lag small.
_RETRY_DELAY_S = 1.0
# How often an idle loop wakes to notice a stop request.
_IDLE_WAKE_S = 0.1
# A previous owner that committed within this long may be handing the stream over (it
# commits every live-time heartbeat then: about every second); an older one is gone.
_HANDING_OVER_FRESH_S = 3.0
# How long a stopping stream that cannot replay waits for a live time past its stop.
_LAST_WORD_S = 1.0
GHOST_FENCES = 3
"""Starts in a row fenced with no other owner in sight that are retried; the next ends the
stream (two instances fencing each other back and forth, none committing)."""


class _OpenTransaction:
    """What the open transaction holds so far."""

    __slots__ = ("dead_letters", "first_at", "gap_list", "gaps", "position", "records")

    def __init__(self) -> None:
        self.records = 0
        self.dead_letters = 0
        self.gaps = 0
        self.gap_list: list[Gap] = []
        self.first_at: float | None = None
        """When its first record, dead letter or gap was produced (None: heartbeats only)."""
        self.position: Position | None = None


class Pipeline:
    """Moves one stream's batches into Kafka with its position, exactly once."""

    def __init__(
        self,
        *,
        stream_id: str,
        upstream: str,
        source: Source,
        topic: str,
        producer: Callable[[], Producer],
        positions: Positions,
        side: SideTopics,
        settings: PipelineSettings,
        repeats: Callable[[], RepeatFilter],
        read_back: Callable[[], Sequence[Record]],
        instance_id: str,
        pending_commit_limit_s: float = 60.0,
        stats: PipelineStats | None = None,
        on_gaps: Callable[[list[Gap]], None] | None = None,
        handover_s: float = 10.0,
    ) -> None:
        self.stream_id = stream_id
        self._on_gaps = on_gaps
        """Told the gaps of each transaction once it committed (the backfill task)."""
        self.upstream = upstream
        self.stats = stats if stats is not None else PipelineStats()
        self._source = source
        self._txns = Transactions(
            stream_id,
            producer,
            (topic, side.state, side.gaps, side.dead_letters),
            pending_commit_limit_s,
        )
        self._started = False
        self._has_committed = False
        self._ghost_fences = 0
        """Starts fenced in a row with no other owner (see `_start`)."""
        self._positions = positions
        self._side = side
        self._records = SideRecords(stream_id, upstream, side)
        self._policy = CommitPolicy.of(settings)
        self._queue_max = settings.queue_max_batches
        self._new_repeats = repeats
        self._repeats = repeats()
        self._read_back = read_back
        self._instance_id = instance_id
        self._headers: Headers = [(STREAM_HEADER, stream_id.encode())]
        self._key = stream_id.encode()
        self._committed: Position | None = None
        self._txn: _OpenTransaction | None = None
        self._queue: asyncio.Queue[Batch | BaseException] | None = None
        self._handover_s = handover_s
        """Make before break: how long an opened-ahead subscription waits for its ack and
        then for the previous owner's last live time; how long `hand_over()` lingers."""
        self._opened = False
        self.handing_over = False
        self._last_word: tuple[int, float] | None = None
        """(stop request us, deadline) once stopping (`_may_end`)."""

    @property
    def queue_depth(self) -> int:
        """Batches waiting between the source and Kafka (for metrics)."""
        return self._queue.qsize() if self._queue is not None else 0

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set (then commit what is complete) or a fatal error. Kafka
        being away is not fatal: every step, the first included, is retried."""
        try:
            while not stop.is_set():
                try:
                    if not self._started:
                        await self._start(stop)
                    await self._run_from(self._committed, stop)
                except ReadStopped:
                    break  # asked to stop while the start waited for the state topic
                except KafkaError as exc:
                    await self._after_kafka_error(exc)
                    if self.handing_over:
                        # A new producer would fence the next owner, which may have
                        # fenced this one already: leave the stream to it.
                        log.info("stream=%s handing over ends on a Kafka error", self.stream_id)
                        break
                    await _sleep_unless(stop, _RETRY_DELAY_S)
        except FencedError:
            if self.handing_over:  # the next owner took the stream, as it should
                log.info("stream=%s handed over to its next owner", self.stream_id)
                return
            self.stats.fenced += 1  # polybridge_fenced_total
            raise
        finally:
            self.stats.running = False
            if isinstance(self._source, OpensAhead):
                self._source.close()
            # Also when cancelled: a commit may still run in its worker thread, and the
            # stream's next producer must not start before this one stopped acting.
            await self._txns.aclose()

    async def _start(self, stop: asyncio.Event) -> None:
        """Step 1: fence, settle, read the committed position, seed the repeat filter.

        A producer that was used already (it broke, or its start failed half-way) is
        replaced first. If meanwhile another instance committed this stream, it owns the
        stream now: stop rather than fence it back."""
        if not self._opened and self._handover_s > 0 and isinstance(self._source, OpensAhead):
            self._opened = True
            acked_us = await self._source.open(self._handover_s)
            if acked_us is not None:
                await self._await_previous_owner(acked_us, stop)
            if stop.is_set():
                raise ReadStopped("stopped before taking the stream over")
        if self._txns.used:
            await self._txns.aclose()
            if self._has_committed and (owner := await self._owned_elsewhere()):
                raise FencedError(
                    f"stream {self.stream_id}: another polybridge instance ({owner}) now "
                    f"owns this stream (transactional.id {self._txns.transactional_id}); "
                    "this one stops"
                )
        try:
            await self._txns.start()
        except FencedError as fenced:
            # Fenced before this producer wrote anything. By another instance (it owns the
            # stream now), or by this stream's own given-up producer: librdkafka goes on
            # retrying an init that timed out, and a retry the broker answers after ours
            # takes the epoch back. Only the state topic tells which.
            if self._ghost_fences >= GHOST_FENCES or await self._owned_elsewhere():
                raise
            self._ghost_fences += 1
            raise KafkaError(
                f"stream {self.stream_id}: fenced while starting, and no other instance "
                f"owns it (a late request of this stream's earlier producer): {fenced}",
                retriable=True,
            ) from fenced
        # Complete: the stream's newest position may follow another stream's transaction
        # that is still open on the shared state topic (`PositionStore.refresh`).
        entry = await self._committed_entry(stop)
        self._committed = entry.position if entry else None
        repeats = self._new_repeats()
        repeats.seed(await asyncio.to_thread(self._read_back))
        self._repeats = repeats
        self._started = True
        self.stats.running = True
        log.info("stream=%s starting from %s", self.stream_id, _describe(self._committed))

    def hand_over(self) -> bool:
        """Revoked from this instance: for a source that opens ahead, go on until the next
        owner fences this one (it waits for a live time past its own subscription's ack:
        from now on every heartbeat commits at once). False when there is nothing to hand
        over live (not opening ahead, not started, or `handover_s` 0): stop instead."""
        source = self._handing_over_source()
        if source is None:
            return False
        self.handing_over = True
        self._policy = dataclasses.replace(self._policy, heartbeat_interval_s=0.0)
        source.handing_over(self._handover_s)
        log.info("stream=%s handing over: running until the next owner takes it", self.stream_id)
        return True

    def _handing_over_source(self) -> OpensAhead | None:
        """The source, if the stream started and it opens ahead with make before break on."""
        source = self._source
        if self._started and self._handover_s > 0 and isinstance(source, OpensAhead):
            return source
        return None

    async def _await_previous_owner(self, acked_us: int, stop: asyncio.Event) -> None:
        """Before fencing: while another instance that committed the stream lately has not
        yet committed a live time past `acked_us` (it is handing the stream over), wait for
        it, within `handover_s`. A previous owner that stopped committing is gone: no wait."""
        deadline = time.monotonic() + self._handover_s
        own = _instance_name(self._instance_id)
        while not stop.is_set():
            entry = await asyncio.to_thread(self._positions.latest, self.stream_id, False)
            if (
                entry is None
                or _instance_name(entry.owner) in ("", own)
                or (entry.position.live_time_us or 0) >= acked_us
                or now_us() - entry.committed_at_us > _HANDING_OVER_FRESH_S * 1e6
            ):
                return
            if time.monotonic() >= deadline:
                log.warning(
                    "stream=%s: its previous owner %s did not commit past this instance's "
                    "subscription within %g s; taking the stream over now",
                    self.stream_id,
                    entry.owner,
                    self._handover_s,
                )
                return
            await _sleep_unless(stop, _IDLE_WAKE_S)

    async def _committed_entry(self, stop: asyncio.Event) -> StateEntry | None:
        """The stream's committed position. The read may wait up to the transaction
        timeout for a transaction another stream left open on the state topic; a stop
        request ends it (`ReadStopped`) instead of holding the stop, and the process's
        exit, until then (a broker-kill test saw SIGTERM ignored for 60 s)."""
        return await unless_stopped(
            stop, lambda halt: self._positions.latest(self.stream_id, True, halt)
        )

    async def _owned_elsewhere(self) -> str | None:
        """The instance that committed the stream last, if not this one. A quick look (not
        waiting for open transactions): taking the stream back from a new owner only costs
        a hand-over, never a record."""
        entry = await asyncio.to_thread(self._positions.latest, self.stream_id, False)
        if entry is not None and entry.owner not in ("", self._instance_id):
            return entry.owner
        return None

    async def _run_from(self, start: Position | None, stop: asyncio.Event) -> None:
        queue: asyncio.Queue[Batch | BaseException] = asyncio.Queue(self._queue_max)
        self._queue = queue
        reader = asyncio.create_task(self._read(start, queue), name=f"read {self.stream_id}")
        try:
            while not self._may_end(stop):
                item = await self._next(queue)
                if isinstance(item, BaseException):
                    if not isinstance(item, KafkaError):
                        # The source gave up: keep the complete batches it delivered.
                        await self._commit_open()
                    raise item
                if item is not None:
                    await self._add(item)
                if self._commit_due(queue.empty()):
                    await self._commit_open()
            await self._commit_open()
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def _read(
        self, start: Position | None, queue: asyncio.Queue[Batch | BaseException]
    ) -> None:
        try:
            async for batch in self._source.stream(start):
                await queue.put(batch)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # handed to the loop, which owns error handling
            await queue.put(exc)

    async def _next(
        self, queue: asyncio.Queue[Batch | BaseException]
    ) -> Batch | BaseException | None:
        """The next batch, or None when a commit deadline (or a stop check) comes first."""
        with contextlib.suppress(asyncio.QueueEmpty):
            return queue.get_nowait()
        try:
            async with asyncio.timeout(self._wait_budget()):
                return await queue.get()
        except TimeoutError:
            return None

    def _may_end(self, stop: asyncio.Event) -> bool:
        """Whether the loop may end: once `stop` is set and, for a source that opens ahead
        (no replay: its restart gap begins at the live time committed last), once a live
        time past the stop request is committed, within `_LAST_WORD_S`. The live time
        otherwise lags by up to a ping interval (a second), all of it added to the gap."""
        if not stop.is_set():
            return False
        if self._last_word is None:
            source = self._handing_over_source()
            if source is None:
                return True
            self._last_word = (now_us(), time.monotonic() + _LAST_WORD_S)
            source.handing_over(_LAST_WORD_S)
            self._policy = dataclasses.replace(self._policy, heartbeat_interval_s=0.0)
        asked_us, deadline = self._last_word
        live_us = self._committed.live_time_us if self._committed is not None else None
        return (live_us or 0) >= asked_us or time.monotonic() >= deadline

    def _wait_budget(self) -> float:
        txn = self._txn
        if txn is None or txn.position is None:
            return _IDLE_WAKE_S
        deadline = self._policy.deadline(txn.first_at, self._last_commit_at())
        return max(0.0, min(_IDLE_WAKE_S, deadline - time.monotonic()))

    def _last_commit_at(self) -> float:
        return self.stats.last_commit_at or 0.0

    async def _add(self, batch: Batch) -> None:
        txn = self._txn
        if txn is None:
            txn = self._txn = _OpenTransaction()
        put = self._txns.put
        headers = self._headers
        stats = self.stats
        written = 0
        for record in batch.records:
            if self._repeats.is_repeat(record):
                stats.repeats_dropped += 1
                continue
            await put(
                record.topic,
                record.key,
                record.value,
                [*headers, (EVENT_ID_HEADER, record.event_id.encode())],
            )
            written += 1
            stats.bytes += len(record.value)
        for letter in batch.dead_letters:
            await self._produce_dead_letter(letter)
        for gap in batch.gaps:
            await self._produce_gap(gap)
        extra = len(batch.dead_letters) + len(batch.gaps)
        if (written or extra) and txn.first_at is None:
            txn.first_at = time.monotonic()
        txn.records += written
        txn.dead_letters += len(batch.dead_letters)
        txn.gaps += len(batch.gaps)
        txn.gap_list.extend(batch.gaps)
        txn.position = batch.position

    def _commit_due(self, idle: bool) -> bool:
        txn = self._txn
        if txn is None or txn.position is None:
            return False
        return self._policy.due(
            txn.records, txn.first_at, self._last_commit_at(), time.monotonic(), idle
        )

    async def _commit_open(self) -> None:
        """Commit the open transaction with the state record for its newest position."""
        txn = self._txn
        if txn is None or txn.position is None:
            return
        position = txn.position
        state = self._records.state(position, self._instance_id)
        await self._txns.put(self._side.state, self._key, state, self._headers)
        started = time.monotonic()
        await self._txns.commit()
        finished = time.monotonic()
        self._has_committed = True
        self._ghost_fences = 0
        self._repeats.commit()
        self._committed = position
        self._txn = None
        stats = self.stats
        stats.records += txn.records
        stats.dead_letters += txn.dead_letters
        stats.gaps += txn.gaps
        stats.commits += 1
        stats.commit_seconds.append(finished - started)
        del stats.commit_seconds[:-1000]  # keep the recent window for percentiles
        stats.last_commit_at = finished
        if stats.first_commit_at is None:
            stats.first_commit_at = finished
        if position.event_time_us is not None:
            stats.last_event_time_us = position.event_time_us
        if txn.gap_list and self._on_gaps is not None:
            self._on_gaps(txn.gap_list)

    async def _after_kafka_error(self, exc: KafkaError) -> None:
        """Abort, and end the stream (fenced, or not retriable) or go back to step 1 with
        a new producer. Not on with the same one: a request of the failed transaction may
        still reach a partition after its end, and only a new producer's epoch fences it
        (librdkafka has no KIP-890); step 1 then reads the position back from Kafka."""
        self._repeats.abort()
        self._txn = None
        self.stats.aborts += 1
        await self._txns.recover(exc)
        self._started = False
        log.warning(
            "stream=%s kafka error, resuming from the last committed position with a new "
            "producer: %s",
            self.stream_id,
            exc,
        )

    async def _produce_dead_letter(self, letter: DeadLetter) -> None:
        value = self._records.dead_letter(letter)
        await self._txns.put(self._side.dead_letters, self._key, value, self._headers)

    async def _produce_gap(self, gap: Gap) -> None:
        await self._txns.put(self._side.gaps, self._key, self._records.gap(gap), self._headers)
        log.warning(
            "stream=%s gap from=%s to=%s reason=%s",
            self.stream_id,
            gap.from_us,
            gap.to_us,
            gap.reason,
        )


def _instance_name(owner: str) -> str:
    """The `cluster.instance_id` part of an instance id (`<name>.<pid>.<random>`)."""
    return owner.rsplit(".", 2)[0]


def _describe(position: Position | None) -> str:
    if position is None:
        return "no stored position (first start)"
    parts = []
    if position.resume_token:
        parts.append(f"resume token ({len(position.resume_token)} bytes)")
    if position.event_time_us is not None:
        parts.append(f"event time {position.event_time_us}us")
    if position.live_time_us is not None:
        parts.append(f"live time {position.live_time_us}us")
    return ", ".join(parts) or "an empty position"


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()
