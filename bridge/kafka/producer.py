"""The transactional producer: one per stream, and the one librdkafka error boundary.

Every librdkafka error met while producing is translated here into `bridge.errors`:

- `txn_requires_abort()` (abortable)           -> `KafkaError(retriable=True)`: abort, resume
- `retriable()`                                 -> `KafkaError(retriable=True)`
- PRODUCER_FENCED, INVALID_PRODUCER_EPOCH,
  TRANSACTIONAL_ID_AUTHORIZATION_FAILED         -> `FencedError` (whether librdkafka calls
  it fatal or abortable: Tansu reports PRODUCER_FENCED on produce as abortable)
- any other fatal error                         -> `KafkaError(retriable=False)`

Fencing on Tansu (measured, librdkafka 2.16, Tansu 0.6.0-510f3e2): when producer B calls
`init_transactions()` with A's transactional id (it returns in ~50 ms, without waiting for
A's open transaction), then
- A's next *produce* fails in ~50 ms with PRODUCER_FENCED (abortable, not fatal), and so does
  `commit()`; we raise `FencedError` at once;
- if A had nothing left to send, its EndTxn is answered by Tansu closing the connection,
  again and again: `commit_transaction()` only ends at its timeout with _TIMED_OUT
  (retriable) and a following abort with _CONFLICT. `commit(timeout)` is therefore bounded
  and raises `KafkaError(retriable=True)` saying so; the producer is then `broken` and must
  be closed and replaced (whose `init()` tells by `FencedError`... or by the state topic's
  newest `owner`, which the pipeline compares with its own instance id);
- an `abort()` after PRODUCER_FENCED also times out (Tansu drops EndTxn of the old epoch).
On Apache Kafka the same situations end in PRODUCER_FENCED / INVALID_PRODUCER_EPOCH, fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError as LibKafkaError
from confluent_kafka import KafkaException as LibKafkaException
from confluent_kafka import Message, Producer

from bridge.errors import FencedError, KafkaError

log = logging.getLogger(__name__)

ConfigValue = str | int | float | bool
Headers = list[tuple[str, str | bytes | None]]

DEFAULTS: dict[str, ConfigValue] = {
    # enable.idempotence is implied by transactional.id (librdkafka sets it, and acks=all).
    # Wait up to 5 ms to fill a batch: commits happen every few ms to seconds anyway, and
    # 5 ms is where throughput flattens on loopback while adding little latency.
    "linger.ms": 5,
    # Big batches: a 1,000-record transaction then goes out in one request per partition.
    "batch.num.messages": 10_000,
    "batch.size": 1_000_000,
    # lz4: measured on Tansu/loopback, 200 B records, 1,000 per transaction: lz4 370k/s,
    # none 270k/s, zstd 240k/s. zstd compresses smaller but costs producer CPU, and CPU is
    # our limit (design.md section 9).
    "compression.type": "lz4",
    # A transaction open longer than this is aborted by the broker. Our commits happen
    # within max_latency (seconds), so 60 s only matters for a stalled or zombie bridge.
    "transaction.timeout.ms": 60_000,
    # Must not exceed transaction.timeout.ms (librdkafka rejects the config otherwise).
    "message.timeout.ms": 60_000,
    # Kafka's default max record batch size; larger values also need broker changes.
    "message.max.bytes": 1_000_000,
    # Backpressure: at most this many records buffered in librdkafka; beyond it produce()
    # raises BufferError, we poll and wait, and the source stops reading upstream. 100k
    # records of ~1 kB keep memory around 100 MB, one to several seconds of input.
    "queue.buffering.max.messages": 100_000,
    "queue.buffering.max.kbytes": 262_144,
    # Never let librdkafka print to stderr by itself; errors reach us through the API.
    "log_level": 3,
    # Delivery reports only for failures: a Python callback per record costs more CPU
    # than the produce() call itself; successes are counted when the commit succeeds.
    "delivery.report.only.error": True,
}

INIT_TIMEOUT_S = 10.0
"""init_transactions() bound: also how long an unreachable broker takes to be reported."""

COMMIT_TIMEOUT_S = 30.0
"""Default bound for commit()/abort(): far above a healthy commit (p50 ~5 ms on Tansu, tens
of ms on a cluster) but short enough that a fenced zombie notices in bounded time."""

CLOSE_ABORT_S = 5.0
"""Bound for aborting an open transaction in close(): a healthy abort takes milliseconds."""

BUFFER_FULL_WAIT_S = 30.0
"""How long produce() waits for room in a full librdkafka queue before giving up with a
retriable error. It blocks the calling (event-loop) thread while it polls: that is the
backpressure, and the bound keeps a dead broker from stalling the process forever."""

_POLL_EVERY = 1_000
"""produce() calls between two poll(0)s: keeps failure reports flowing without a poll per
record (with only-error delivery reports there is little to serve)."""

_BUFFER_POLL_S = 0.05
"""One poll() while waiting for room: serves delivery reports that free queue space."""

_FENCED_CODES = frozenset(
    {
        LibKafkaError._FENCED,
        LibKafkaError.PRODUCER_FENCED,
        LibKafkaError.INVALID_PRODUCER_EPOCH,
        LibKafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
    }
)


class CommitPending(KafkaError):
    """commit() timed out but librdkafka is still committing: call commit() again."""


class TransactionalProducer:
    """A transactional Kafka producer owned by one stream.

    Usage: `await init()` once; then repeatedly `begin()`, `produce(...)`*, `await commit()`
    (or `await abort()` after a retriable error); `close()` at the end. Not thread-safe:
    one pipeline task drives it.
    """

    def __init__(
        self, config: Mapping[str, ConfigValue], transactional_id: str, stream_id: str
    ) -> None:
        self.transactional_id = transactional_id
        self.stream_id = stream_id
        self.bootstrap = str(config.get("bootstrap.servers", "?"))
        conf: dict[str, Any] = dict(DEFAULTS)
        conf.update(config)
        conf["transactional.id"] = transactional_id
        conf["error_cb"] = self._on_error
        self._producer = Producer(conf)
        self._txn_error: LibKafkaError | None = None
        self._in_txn = False
        self._closed = False
        self.broken = False
        """True after a timeout left the transaction in an unknown state: close and replace."""
        self.delivered_records = 0
        self.delivered_bytes = 0
        self.failed_records = 0
        self._txn_records = 0
        self._txn_bytes = 0
        self._unpolled = 0

    # -- errors -------------------------------------------------------------------------

    def _error(self, err: LibKafkaError, action: str) -> KafkaError:
        """Translate one librdkafka error (see the module docstring)."""
        where = f"stream {self.stream_id} (transactional.id={self.transactional_id})"
        if err.code() in _FENCED_CODES:
            self.broken = True
            return FencedError(
                f"{where} was fenced: another bridge instance took over this stream "
                f"({err.name()} on {action})"
            )
        text = f"{action} failed for {where}: {err.name()}: {err.str()}"
        if err.fatal():
            # Fatal for this producer instance only (e.g. OUT_OF_ORDER_SEQUENCE_NUMBER after a
            # broker restart): the pipeline replaces a broken producer and resumes from the
            # committed position, so the stream itself can go on.
            self.broken = True
            return KafkaError(text, retriable=True)
        if err.txn_requires_abort() or err.retriable():
            return KafkaError(text, retriable=True)
        return KafkaError(text, retriable=False)

    def _on_error(self, err: LibKafkaError) -> None:
        # Client-level errors (broker down, all brokers down): informative only; the
        # operation in progress reports its own error.
        log.warning(
            "kafka client error stream=%s transactional_id=%s error=%s",
            self.stream_id,
            self.transactional_id,
            err.str(),
        )

    def _on_delivery(self, err: LibKafkaError | None, msg: Message) -> None:
        if err is None:  # only failures are reported (delivery.report.only.error)
            return
        self.failed_records += 1
        if self._txn_error is None:
            self._txn_error = err
        log.warning(
            "delivery failed stream=%s topic=%s partition=%s error=%s",
            self.stream_id,
            msg.topic(),
            msg.partition(),
            err.str(),
        )

    def _call(self, action: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except LibKafkaException as exc:
            raise self._error(exc.args[0], action) from exc

    # -- lifecycle ----------------------------------------------------------------------

    async def init(self, timeout: float = INIT_TIMEOUT_S) -> None:
        """Register the transactional id, fencing any older instance; bounded by `timeout`."""
        try:
            await asyncio.to_thread(self._producer.init_transactions, timeout)
        except LibKafkaException as exc:
            err: LibKafkaError = exc.args[0]
            if err.code() == LibKafkaError._TIMED_OUT:
                self.broken = True  # init still in progress inside librdkafka
                raise KafkaError(
                    f"cannot reach Kafka at {self.bootstrap} within {timeout:.0f} s "
                    f"(init_transactions for stream {self.stream_id}): {err.str()}",
                    retriable=True,
                ) from exc
            raise self._error(err, "init_transactions") from exc
        log.info(
            "producer ready stream=%s transactional_id=%s", self.stream_id, self.transactional_id
        )

    def begin(self) -> None:
        """Start a transaction."""
        self._txn_error = None
        self._txn_records = self._txn_bytes = 0
        self._call("begin_transaction", self._producer.begin_transaction)
        self._in_txn = True

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers | None = None,
    ) -> None:
        """Queue one record in the open transaction (non-blocking unless the queue is full).

        When librdkafka's queue is full, polls for up to `BUFFER_FULL_WAIT_S` for room,
        then raises a retriable `KafkaError`. A delivery failure surfaces on `commit()`.
        """
        if self._txn_error is not None:
            raise self._error(self._txn_error, "produce")
        deadline = 0.0
        while True:
            try:
                self._producer.produce(
                    topic, value, key, headers=headers or None, on_delivery=self._on_delivery
                )
                break
            except BufferError:
                now = time.monotonic()
                if deadline == 0.0:
                    deadline = now + BUFFER_FULL_WAIT_S
                elif now > deadline:
                    raise KafkaError(
                        f"stream {self.stream_id}: producer queue still full after "
                        f"{BUFFER_FULL_WAIT_S:.0f} s (is Kafka at {self.bootstrap} reachable?)",
                        retriable=True,
                    ) from None
                self._call("produce (poll)", self._producer.poll, _BUFFER_POLL_S)
            except LibKafkaException as exc:
                # A failed delivery (e.g. fenced) is the cause of the state error that
                # follows it: serve the pending delivery reports and report the cause.
                with contextlib.suppress(LibKafkaException):
                    self._producer.poll(0)
                raise self._error(self._txn_error or exc.args[0], "produce") from exc
        self._txn_records += 1
        self._txn_bytes += len(value or b"") + len(key or b"")
        self._unpolled += 1
        if self._unpolled >= _POLL_EVERY:
            # Serve failure reports as we go, so a fenced producer learns it early.
            self._unpolled = 0
            self._call("produce (poll)", self._producer.poll, 0)

    async def commit(self, timeout: float = COMMIT_TIMEOUT_S) -> None:
        """Flush and commit the open transaction, within `timeout` seconds.

        Raises `FencedError` when another instance owns the id, a retriable `KafkaError`
        when the transaction must be aborted or the commit did not finish in time (then
        `broken` is set: close this producer and start a new one), else `KafkaError`.
        """
        started = time.monotonic()
        try:
            await asyncio.to_thread(self._producer.commit_transaction, timeout)
        except LibKafkaException as exc:
            err: LibKafkaError = exc.args[0]
            # A delivery report's error says more than the commit's summary of it.
            if self._txn_error is not None and self._txn_error.code() in _FENCED_CODES:
                err = self._txn_error
            if err.code() == LibKafkaError._TIMED_OUT:
                # librdkafka keeps the commit going: calling commit() again resumes it.
                # Replacing the producer instead would race with that commit.
                raise CommitPending(
                    f"commit for stream {self.stream_id} (transactional.id="
                    f"{self.transactional_id}) did not finish within {timeout:.0f} s; on "
                    "brokers that report fencing as dropped connections this may mean "
                    "another instance took over",
                    retriable=True,
                ) from exc
            raise self._error(err, "commit") from exc
        if self._txn_error is not None:  # cannot happen per librdkafka; never lose it silently
            raise self._error(self._txn_error, "commit (delivery)")
        self._in_txn = False
        self.delivered_records += self._txn_records
        self.delivered_bytes += self._txn_bytes
        log.debug("committed stream=%s ms=%.1f", self.stream_id, (time.monotonic() - started) * 1e3)

    async def abort(self, timeout: float = COMMIT_TIMEOUT_S) -> None:
        """Abort the open transaction within `timeout` seconds (see `commit()` for errors)."""
        try:
            await asyncio.to_thread(self._producer.abort_transaction, timeout)
        except LibKafkaException as exc:
            err: LibKafkaError = exc.args[0]
            if err.code() in (LibKafkaError._TIMED_OUT, LibKafkaError._CONFLICT):
                self.broken = True
                raise KafkaError(
                    f"abort for stream {self.stream_id} (transactional.id="
                    f"{self.transactional_id}) did not finish within {timeout:.0f} s "
                    f"({err.name()}); this producer must be replaced",
                    retriable=True,
                ) from exc
            raise self._error(err, "abort") from exc
        finally:
            self._txn_error = None
        self._in_txn = False

    @property
    def in_transaction(self) -> bool:
        return self._in_txn

    def close(self) -> None:
        """Release the client, aborting an open transaction (bounded by `CLOSE_ABORT_S`).

        librdkafka's own close() aborts an open transaction *without a time bound*, which
        hangs forever on a fenced producer on Tansu (EndTxn answered by a dropped
        connection). So we abort ourselves with a bound, and a producer that is `broken`
        is only purged and dropped: destroying the client does not wait for the broker,
        and the broker aborts the transaction at transaction.timeout.ms (or the new
        owner's init_transactions already did).
        """
        if self._closed:
            return
        self._closed = True
        producer = self._producer
        try:
            producer.purge(in_queue=True, in_flight=False, blocking=False)
            if self._in_txn and not self.broken:
                try:
                    producer.abort_transaction(CLOSE_ABORT_S)
                    self._in_txn = False
                except LibKafkaException as exc:
                    log.warning(
                        "abort on close failed stream=%s error=%s", self.stream_id, exc.args[0]
                    )
                    self.broken = True
            if not self.broken:
                producer.close()
        except (LibKafkaException, RuntimeError) as exc:
            log.debug("producer close stream=%s error=%s", self.stream_id, exc)
        finally:
            # Drop our reference: the client is destroyed (threads joined) when collected.
            del self._producer
