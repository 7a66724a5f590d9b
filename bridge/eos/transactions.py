"""The one transaction runner: every writer of a transactional id (a stream's pipeline, its
backfill) opens, produces, commits and recovers through `Transactions`.

The rules it holds (see `docs/design.md`, "When Kafka fails"):
- a commit that times out is committed again (librdkafka's contract: the coordinator may
  already hold it), until `pending_commit_limit_s`; then its outcome is unknown and the
  producer is given up;
- a failed transaction is aborted; an abort that fails leaves the outcome unknown, and the
  producer is given up too;
- a given-up (BROKEN) producer is replaced by `start()`: the new producer's
  `init_transactions()` settles the last transaction either way, and the caller reads its
  position back from Kafka before it produces again;
- every producer, before its first transaction, aborts what earlier producers of its id
  may have left open on its partitions unknown to the coordinator (`settle`): a hanging
  transaction would stop every read_committed reader of the partition, and the next
  transaction there would take it in and commit it;
- fencing and non-retriable errors are raised to the caller, which ends;
- a producer is released (`aclose`) only once no call of it runs, so two producers of one
  transactional id never act at once in this process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from bridge.eos.contract import Producer
from bridge.errors import FencedError, KafkaError
from bridge.kafka.producer import CommitPending, Headers, QueueFull

log = logging.getLogger(__name__)


class Transactions:
    """The transactions of one transactional id, through one producer at a time."""

    def __init__(
        self,
        stream_id: str,
        new_producer: Callable[[], Producer],
        topics: Sequence[str],
        pending_commit_limit_s: float = 60.0,
    ) -> None:
        self.stream_id = stream_id
        self._new_producer = new_producer
        self._topics = tuple(topics)
        """Every topic this transactional id writes (`settle` covers all their partitions)."""
        self._pending_commit_limit_s = pending_commit_limit_s
        """How long a commit may stay pending (broker away) before the producer is given
        up: the transaction timeout, after which the broker has aborted it anyway."""
        self._producer: Producer | None = None
        self._started = False
        self._open = False

    @property
    def producer(self) -> Producer:
        if self._producer is None:
            self._producer = self._new_producer()
        return self._producer

    @property
    def transactional_id(self) -> str:
        return self.producer.transactional_id

    @property
    def used(self) -> bool:
        """True once `start()` ran on the current producer: the next start replaces it."""
        return self._started

    @property
    def broken(self) -> bool:
        """True when the producer must be replaced (`start()`) before the next transaction."""
        return self._producer is not None and self._producer.broken

    @property
    def is_open(self) -> bool:
        return self._open

    async def start(self) -> None:
        """A producer ready for transactions: the current one if fresh, else a new one
        (the old one released first). Its init fences older owners of the id and settles
        their open transaction; then it aborts any they left hanging (`Producer.settle`)."""
        if self._started:
            await self.aclose()
        self._started = True
        self._open = False
        producer = self.producer
        await producer.init()
        await producer.settle(self._topics)

    async def put(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers | None = None
    ) -> None:
        """Queue a record in the open transaction (opening one first). While the producer's
        queue is full it waits for room in a worker thread, never on the event loop."""
        if not self._open:
            self.producer.begin()
            self._open = True
        producer = self.producer
        while True:
            try:
                producer.produce(topic, key, value, headers)
                return
            except QueueFull:
                await producer.wait_for_room()

    async def commit(self) -> None:
        """Commit the open transaction: again while pending, up to the limit; past it the
        producer is given up and a retriable `KafkaError` raised (outcome unknown)."""
        producer = self.producer
        started = time.monotonic()
        while True:
            try:
                await producer.commit()
                break
            except CommitPending as exc:
                # The broker is slow or away: librdkafka goes on committing, so resume the
                # same commit; past the transaction timeout its outcome is the broker's.
                if time.monotonic() - started > self._pending_commit_limit_s:
                    producer.give_up()
                    self._open = False
                    raise KafkaError(str(exc), retriable=True) from exc
                log.warning("stream=%s commit still pending, resuming it: %s", self.stream_id, exc)
        self._open = False

    async def recover(self, error: KafkaError) -> None:
        """After `error` broke the open transaction: raise it if it ends the writer
        (fenced, not retriable); else abort, giving the producer up if the abort fails."""
        self._open = False
        if isinstance(error, FencedError) or not error.retriable:
            raise error
        producer = self._producer
        if producer is None or producer.broken:
            return
        try:
            await producer.abort()
        except FencedError:
            raise
        except KafkaError as failed:
            # The transaction's outcome is unknown (an abort refused after a commit the
            # coordinator may hold): only a new producer's init settles it, and the
            # position is then read back from Kafka, never assumed.
            log.warning("stream=%s abort failed: %s", self.stream_id, failed)
            producer.give_up()

    async def aclose(self) -> None:
        """Release the producer once no call of it runs (the next `producer` is new)."""
        producer, self._producer = self._producer, None
        self._started = self._open = False
        if producer is not None:
            await producer.aclose()
