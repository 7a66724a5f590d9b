"""One stream into Kafka, exactly once: batches and their position in one transaction.

The loop, for one stream:
1. `init_transactions()` fences any older owner of the stream's transactional id; then the
   stream's committed position is read (read_committed) and a state record naming this
   instance as owner is committed, so a fenced zombie can tell it lost the stream.
2. The source streams batches from that position into a bounded queue (when Kafka is slow
   the queue fills, the source stops reading, and upstream flow control pushes back).
3. Each batch's records (minus upstream repeats), dead letters and gaps are produced into
   the open transaction; the state record carrying the newest batch's position is produced
   last, and the transaction commits when it holds `max_batch_records`, when its oldest
   record has waited `max_latency_ms`, or, with only heartbeats, every
   `heartbeat_commit_interval_s`.
4. A retriable Kafka error aborts the transaction and restarts the source from the last
   *committed* position: nothing after it reached Kafka, so nothing is lost or doubled.
   Fencing and other fatal errors end the pipeline with a clear message.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from bridge.config import PipelineSettings
from bridge.dedupe import RepeatFilter, Visible
from bridge.errors import BridgeError, FencedError, KafkaError
from bridge.kafka.producer import CommitPending, Headers, TransactionalProducer
from bridge.kafka.state import StateStore, encode_state
from bridge.records import Batch, DeadLetter, Gap, Position, Source
from bridge.serde.avro import Serializer
from bridge.timeutil import now_us

log = logging.getLogger(__name__)

STREAM_HEADER = "polybridge.stream"
EVENT_ID_HEADER = "polybridge.event_id"

# After a retriable Kafka error, wait this long before resuming: long enough not to spin
# against a broker that is restarting, short enough to keep the stream's lag small.
_RETRY_DELAY_S = 1.0
# Raw bytes kept in one dead letter: below Kafka's default message.max.bytes (1,000,000)
# with room for the record's other fields and the batch overhead.
_MAX_DEAD_LETTER_RAW = 900_000
# How often an idle loop wakes to notice a stop request.
_IDLE_WAKE_S = 0.1


@dataclass(frozen=True, slots=True)
class SideTopics:
    """The bridge's own topics and their serializers."""

    state: str
    dead_letters: str
    gaps: str
    state_serializer: Serializer
    dead_letter_serializer: Serializer
    gap_serializer: Serializer


@dataclass(slots=True)
class PipelineStats:
    """Counters a pipeline keeps for metrics, health and the demo's live view."""

    records: int = 0
    bytes: int = 0
    repeats_dropped: int = 0
    dead_letters: int = 0
    gaps: int = 0
    commits: int = 0
    aborts: int = 0
    commit_seconds: list[float] = field(default_factory=list)
    last_commit_at: float | None = None
    last_event_time_us: int | None = None
    running: bool = False


class _OpenTransaction:
    """What the open transaction holds so far."""

    __slots__ = ("dead_letters", "first_at", "gaps", "position", "records")

    def __init__(self) -> None:
        self.records = 0
        self.dead_letters = 0
        self.gaps = 0
        self.first_at: float | None = None
        self.position: Position | None = None

    @property
    def has_data(self) -> bool:
        return self.first_at is not None


class Pipeline:
    """Moves one stream's batches into Kafka with its position, exactly once."""

    def __init__(
        self,
        *,
        stream_id: str,
        upstream: str,
        source: Source,
        producer: Callable[[], TransactionalProducer],
        state_store: StateStore,
        side: SideTopics,
        settings: PipelineSettings,
        repeats: Callable[[], RepeatFilter],
        read_back: Callable[[], Sequence[Visible]],
        instance_id: str,
    ) -> None:
        self.stream_id = stream_id
        self.upstream = upstream
        self.stats = PipelineStats()
        self._source = source
        self._new_producer = producer
        self._producer = producer()
        # What to redo before streaming again after a Kafka error (see _after_kafka_error).
        self._recover: Callable[[], Awaitable[None]] | None = None
        self._state_store = state_store
        self._side = side
        self._settings = settings
        self._new_repeats = repeats
        self._repeats = repeats()
        self._read_back = read_back
        self._instance_id = instance_id
        self._headers: Headers = [(STREAM_HEADER, stream_id.encode())]
        self._key = stream_id.encode()
        self._committed: Position | None = None
        self._committed_at_us: int | None = None
        self._txn: _OpenTransaction | None = None
        self._queue: asyncio.Queue[Batch | BaseException] | None = None

    @property
    def queue_depth(self) -> int:
        """Batches waiting between the source and Kafka (for metrics)."""
        return self._queue.qsize() if self._queue is not None else 0

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set (then commit what is complete) or a fatal error."""
        try:
            await self._producer.init()
            await self._load_committed()
            log.info("stream=%s starting from %s", self.stream_id, _describe(self._committed))
            await self._claim()
            self.stats.running = True
            while not stop.is_set():
                try:
                    if self._recover is not None:
                        await self._recover()
                        self._recover = None
                    await self._run_from(self._committed, stop)
                except KafkaError as exc:
                    await self._after_kafka_error(exc)
                    await _sleep_unless(stop, _RETRY_DELAY_S)
        finally:
            self.stats.running = False
            self._producer.close()

    async def _load_committed(self) -> None:
        """The stream's committed position from the state topic, and a repeat filter that
        knows what Kafka shows for the stream."""
        entry = await asyncio.to_thread(self._state_store.latest, self.stream_id)
        if self.stats.commits and entry is not None and entry.owner != self._instance_id:
            raise self._fenced_error(None)
        self._committed = entry.position if entry else None
        self._committed_at_us = entry.committed_at_us if entry else None
        await self._reseed()

    async def _reopen(self) -> None:
        """Replace a producer left in an unknown state (a commit that timed out, e.g. while
        the broker was unreachable). Whether that commit happened is read back from the
        state topic: the new producer's init_transactions has settled it either way."""
        self._producer.close()
        self._producer = self._new_producer()
        await self._producer.init()
        await self._load_committed()

    async def _reseed(self) -> None:
        """A fresh repeat filter that knows what Kafka shows for this stream."""
        repeats = self._new_repeats()
        repeats.seed(await asyncio.to_thread(self._read_back), self._committed_at_us)
        self._repeats = repeats

    async def _claim(self) -> None:
        """Commit our ownership right after fencing the previous owner. The position and
        its commit time stay as they were: records written after that time are still
        unclaimed (see bridge.dedupe) until this instance moves the position past them."""
        self._producer.begin()
        self._txn = _OpenTransaction()
        await self._commit(self._committed or Position(), self._committed_at_us)

    async def _run_from(self, start: Position | None, stop: asyncio.Event) -> None:
        queue: asyncio.Queue[Batch | BaseException] = asyncio.Queue(
            self._settings.queue_max_batches
        )
        self._queue = queue
        reader = asyncio.create_task(self._read(start, queue), name=f"read {self.stream_id}")
        try:
            while not stop.is_set():
                item = await self._next(queue)
                if isinstance(item, BaseException):
                    if not isinstance(item, KafkaError):
                        # The source gave up: keep the complete batches it delivered.
                        await self._commit_open()
                    raise item
                if item is not None:
                    self._add(item)
                if self._commit_due():
                    assert self._txn is not None and self._txn.position is not None
                    await self._commit(self._txn.position)
            await self._commit_open()
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def _commit_open(self) -> None:
        if self._txn is not None and self._txn.position is not None:
            await self._commit(self._txn.position)

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
            return await asyncio.wait_for(queue.get(), self._wait_budget())
        except TimeoutError:
            return None

    def _wait_budget(self) -> float:
        txn = self._txn
        if txn is None or txn.position is None:
            return _IDLE_WAKE_S
        now = time.monotonic()
        if txn.first_at is not None:
            deadline = txn.first_at + self._settings.max_latency_ms / 1000
        else:
            last = self.stats.last_commit_at or now
            deadline = last + self._settings.heartbeat_commit_interval_s
        return max(0.0, min(_IDLE_WAKE_S, deadline - now))

    def _add(self, batch: Batch) -> None:
        txn = self._txn
        if txn is None:
            self._producer.begin()
            txn = self._txn = _OpenTransaction()
        produce = self._producer.produce
        headers = self._headers
        stats = self.stats
        written = 0
        for record in batch.records:
            if self._repeats.is_repeat(record):
                stats.repeats_dropped += 1
                continue
            produce(
                record.topic,
                record.key,
                record.value,
                [*headers, (EVENT_ID_HEADER, record.event_id.encode())],
            )
            written += 1
            stats.bytes += len(record.value)
        for letter in batch.dead_letters:
            self._produce_dead_letter(letter)
        for gap in batch.gaps:
            self._produce_gap(gap)
        extra = len(batch.dead_letters) + len(batch.gaps)
        if (written or extra) and txn.first_at is None:
            txn.first_at = time.monotonic()
        txn.records += written
        txn.dead_letters += len(batch.dead_letters)
        txn.gaps += len(batch.gaps)
        txn.position = batch.position

    def _commit_due(self) -> bool:
        txn = self._txn
        if txn is None or txn.position is None:
            return False
        now = time.monotonic()
        if txn.first_at is not None:
            return (
                txn.records >= self._settings.max_batch_records
                or now - txn.first_at >= self._settings.max_latency_ms / 1000
            )
        last = self.stats.last_commit_at or 0.0
        return now - last >= self._settings.heartbeat_commit_interval_s

    async def _commit(self, position: Position, committed_at_us: int | None = None) -> None:
        txn = self._txn
        assert txn is not None
        committed_at = committed_at_us if committed_at_us is not None else now_us()
        state = encode_state(
            self.stream_id,
            self.upstream,
            position,
            self._instance_id,
            committed_at,
            self._side.state_serializer,
        )
        self._producer.produce(self._side.state, self._key, state, self._headers)
        started = time.monotonic()
        while True:
            try:
                await self._producer.commit()
                break
            except CommitPending as exc:
                # The broker is slow or away (or, on brokers that report fencing as
                # timeouts, another owner took over): resume the same commit unless fenced.
                if await self._fenced():
                    raise self._fenced_error(exc) from exc
                log.warning("stream=%s commit still pending, resuming it: %s", self.stream_id, exc)
        finished = time.monotonic()
        self._repeats.commit()
        self._committed = position
        self._committed_at_us = committed_at
        self._txn = None
        stats = self.stats
        stats.records += txn.records
        stats.dead_letters += txn.dead_letters
        stats.gaps += txn.gaps
        stats.commits += 1
        stats.commit_seconds.append(finished - started)
        del stats.commit_seconds[:-1000]  # keep the recent window for percentiles
        stats.last_commit_at = finished
        if position.event_time_us is not None:
            stats.last_event_time_us = position.event_time_us

    async def _after_kafka_error(self, exc: KafkaError) -> None:
        """Abort and decide: resume from the committed position, or end as fenced/fatal.

        Recovery work that needs Kafka (a new producer, reading back what is visible) is
        left to the loop (`self._recover`), so that a broker outage retries it instead of
        ending the pipeline."""
        self._repeats.abort()
        self._txn = None
        self.stats.aborts += 1
        if isinstance(exc, FencedError):
            raise exc
        if await self._fenced():
            raise self._fenced_error(exc)
        if not exc.retriable:
            raise exc
        if not self._producer.broken:
            with contextlib.suppress(BridgeError):
                await self._producer.abort()
        # Some brokers show aborted records anyway: learn what is visible again.
        self._recover = self._reopen if self._producer.broken else self._reseed
        log.warning(
            "stream=%s kafka error, resuming from the last committed position: %s",
            self.stream_id,
            exc,
        )

    def _fenced_error(self, cause: BaseException | None) -> FencedError:
        error = FencedError(
            f"stream {self.stream_id}: another polybridge instance now owns this stream "
            f"(transactional.id {self._producer.transactional_id}); this one stops"
        )
        error.__cause__ = cause
        return error

    async def _fenced(self) -> bool:
        try:
            entry = await asyncio.to_thread(self._state_store.latest, self.stream_id)
        except BridgeError:
            return False
        return entry is not None and entry.owner not in ("", self._instance_id)

    def _produce_dead_letter(self, letter: DeadLetter) -> None:
        raw, error = letter.raw, letter.error
        if len(raw) > _MAX_DEAD_LETTER_RAW:
            # Kafka refuses records over message.max.bytes: keep the head, and say what the
            # whole was, so the dead letter is written instead of stopping the stream.
            digest = hashlib.sha256(raw).hexdigest()
            error = (
                f"{error} [raw truncated from {len(raw)} to {_MAX_DEAD_LETTER_RAW} bytes; "
                f"sha256 of the whole: {digest}]"
            )
            raw = raw[:_MAX_DEAD_LETTER_RAW]
        value = self._side.dead_letter_serializer(
            {
                "stream_id": self.stream_id,
                "upstream": self.upstream,
                "target_topic": letter.target_topic,
                "error_type": letter.error_type,
                "error": error,
                "raw": raw,
                "received_at": letter.received_at_us,
            }
        )
        self._producer.produce(self._side.dead_letters, self._key, value, self._headers)

    def _produce_gap(self, gap: Gap) -> None:
        value = self._side.gap_serializer(
            {
                "stream_id": self.stream_id,
                "upstream": self.upstream,
                "channel": gap.channel,
                "filters": gap.filters,
                "from_time": gap.from_us,
                "to_time": gap.to_us,
                "reason": gap.reason,
                "detected_at": now_us(),
            }
        )
        self._producer.produce(self._side.gaps, self._key, value, self._headers)
        log.warning(
            "stream=%s gap from=%s to=%s reason=%s",
            self.stream_id,
            gap.from_us,
            gap.to_us,
            gap.reason,
        )


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
        await asyncio.wait_for(stop.wait(), seconds)
