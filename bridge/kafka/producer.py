"""The transactional producer: one per stream, its explicit state machine, and the one
librdkafka error boundary.

States and the moves between them (`TxnState`, `TRANSITIONS`):

    NEW --init--> READY --begin--> OPEN --commit--> COMMITTING --> READY
                                    |                   | (timed out: commit() again)
                                    +--abort--> ABORTING +--> READY
    any state --a fatal error or an unknown outcome--> BROKEN  (close, use a new producer)
    any state --PRODUCER_FENCED / INVALID_PRODUCER_EPOCH--> FENCED  (the stream ends here)
    any state --close--> CLOSED

Every librdkafka error is translated here into `bridge.errors`:
- an authorization error (a missing ACL: TRANSACTIONAL_ID_ / TOPIC_AUTHORIZATION_FAILED)
                                           -> `KafkaError(retriable=False)` naming the ACL
                                              to grant (`bridge.kafka.acls.denied`)
- PRODUCER_FENCED, INVALID_PRODUCER_EPOCH  -> `FencedError`, state FENCED
- any other fatal error (e.g. OUT_OF_ORDER_SEQUENCE_NUMBER after a broker restart)
                                           -> `KafkaError(retriable=True)`, state BROKEN:
                                              fatal for this producer instance only
- on commit: timed out, or `retriable()` without `txn_requires_abort()`
                                           -> `CommitPending`: the commit's outcome is not
                                              known yet (the broker may have it): commit again
- `txn_requires_abort()` or `retriable()`  -> `KafkaError(retriable=True)`: abort, resume
- Kafka unreachable (_TRANSPORT, _ALL_BROKERS_DOWN, _RESOLVE; not a refused
  login or certificate)                    -> `KafkaError(retriable=True)`: wait for it
- anything else                            -> `KafkaError(retriable=False)`
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaError as LibKafkaError
from confluent_kafka import KafkaException as LibKafkaException
from confluent_kafka import Message, Producer

from bridge.errors import FencedError, KafkaError
from bridge.kafka.acls import denied, is_denied, refused
from bridge.kafka.admin import missing_operations
from bridge.kafka.client_log import client_log_config, report
from bridge.kafka.outage import KAFKA

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
    # lz4: cheapest CPU per byte saved (measured on loopback, 200 B records, 1,000 per
    # transaction: lz4 370k/s, none 270k/s, zstd 240k/s); CPU is the bridge's limit.
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
    # Delivery reports only for failures: a Python callback per record costs more CPU
    # than the produce() call itself; successes are counted when the commit succeeds.
    "delivery.report.only.error": True,
}

_FATAL_CAUSE_WAIT_S = 1.0
"""How long to wait for librdkafka to name the cause of a fatal error (milliseconds,
usually: nothing goes to the broker)."""

INIT_TIMEOUT_S = 10.0
"""init_transactions() bound: also how long an unreachable broker takes to be reported."""

COMMIT_TIMEOUT_S = 30.0
"""Default bound for one abort() call: far above a healthy abort (milliseconds on one node,
tens of ms on a cluster), short enough to report a stuck broker promptly. A commit is not
bounded by it: see `commit`."""

CLOSE_ABORT_S = 5.0
"""Bound for aborting an open transaction in close(): a healthy abort takes milliseconds."""

BUFFER_FULL_WAIT_S = 30.0
"""How long `wait_for_room()` waits for room in a full librdkafka queue before giving up
with a retriable error: the bound keeps a dead broker from stalling a stream forever."""

_POLL_EVERY = 1_000
"""produce() calls between two poll(0)s: keeps failure reports flowing without a poll per
record (with only-error delivery reports there is little to serve)."""

_BUFFER_POLL_S = 0.05
"""One poll() while waiting for room: serves delivery reports that free queue space."""


class QueueFull(Exception):
    """produce() found librdkafka's queue full and queued nothing: `await wait_for_room()`,
    then produce again. The wait runs in a worker thread, so a stream whose Kafka writes
    stall never blocks the event loop the other streams share."""


_FENCED_CODES = frozenset(
    {
        LibKafkaError._FENCED,
        LibKafkaError.PRODUCER_FENCED,
        LibKafkaError.INVALID_PRODUCER_EPOCH,
    }
)


SETTLE_KEY = b"polybridge.settle"
"""The key of the records `settle()` writes, each in a transaction that is aborted: a
read_committed consumer never sees them; a read_uncommitted one sees them with the other
aborted records, and should skip this key."""

_PURGED = frozenset({LibKafkaError._PURGE_QUEUE, LibKafkaError._PURGE_INFLIGHT})
"""Delivery errors of records purged unsent: by `close()`, or by librdkafka from a
transaction that failed (which then hides the cause, see `_missing_write`)."""

_UNREACHABLE = frozenset(
    {
        LibKafkaError._TRANSPORT,
        LibKafkaError._ALL_BROKERS_DOWN,
        LibKafkaError._RESOLVE,
    }
)
"""Local errors that say Kafka cannot be reached (a metadata request to a broker that is
down answers `_TRANSPORT`): an outage, retried, never the end of a stream."""


_WORKERS = concurrent.futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="kafka-txn")
"""The worker threads of the producers' blocking calls (not asyncio's default executor:
a call that outlives its cancelled task must stay reachable, see `aclose`). A stream has at
most one such call at a time; 64 keeps streams from queueing behind each other's commits
while the broker is away (the default pool has cpu + 4 threads: 6 on two cores)."""


class CommitPending(KafkaError):
    """commit() timed out but librdkafka is still committing: call commit() again."""


class TxnState(enum.Enum):
    NEW = "new"
    READY = "ready"
    OPEN = "open"
    COMMITTING = "committing"
    ABORTING = "aborting"
    BROKEN = "broken"
    FENCED = "fenced"
    CLOSED = "closed"


_ENDS = {TxnState.BROKEN, TxnState.FENCED, TxnState.CLOSED}
TRANSITIONS: dict[TxnState, frozenset[TxnState]] = {
    TxnState.NEW: frozenset({TxnState.READY, *_ENDS}),
    TxnState.READY: frozenset({TxnState.OPEN, *_ENDS}),
    TxnState.OPEN: frozenset({TxnState.COMMITTING, TxnState.ABORTING, *_ENDS}),
    TxnState.COMMITTING: frozenset({TxnState.READY, TxnState.ABORTING, *_ENDS}),
    TxnState.ABORTING: frozenset({TxnState.READY, *_ENDS}),
    TxnState.BROKEN: frozenset({TxnState.CLOSED}),
    TxnState.FENCED: frozenset({TxnState.CLOSED}),
    TxnState.CLOSED: frozenset(),
}
"""Which state may follow which (a move not listed is a bug: `_move` raises)."""


class TransactionalProducer:
    """A transactional Kafka producer owned by one stream (see the module's state diagram).

    Usage: `await init()` once; then repeatedly `begin()`, `produce(...)`*, `await commit()`
    (or `await abort()` after a retriable error); `await aclose()` (or `close()` when no call
    can be running) at the end. Not thread-safe: one pipeline task drives it.

    The blocking calls (init, commit, abort) run in a worker thread and go on there when the
    task awaiting them is cancelled. `aclose()` waits for such a call to return before it
    releases the client, so a successor for the same transactional id (in this process)
    never starts while this one may still act.
    """

    def __init__(
        self, config: Mapping[str, ConfigValue], transactional_id: str, stream_id: str
    ) -> None:
        self.transactional_id = transactional_id
        self.stream_id = stream_id
        self.bootstrap = str(config.get("bootstrap.servers", "?"))
        conf: dict[str, Any] = dict(DEFAULTS)
        conf.update(config)
        if "message.timeout.ms" not in config:
            # librdkafka refuses a message timeout above the transaction timeout.
            conf["message.timeout.ms"] = min(
                int(conf["message.timeout.ms"]), int(conf["transaction.timeout.ms"])
            )
        conf["transactional.id"] = transactional_id
        conf["error_cb"] = self._on_error
        self._producer = Producer({**conf, **client_log_config(conf)})
        self._config = dict(config)
        self._failed_topic: str | None = None
        """The topic of the first failed delivery (for a missing ACL's error line)."""
        self.state = TxnState.NEW
        self._txn_error: LibKafkaError | None = None
        self.delivered_records = 0
        self.delivered_bytes = 0
        self.failed_records = 0
        self._txn_records = 0
        self._txn_bytes = 0
        self._txn_failed = 0
        self._unpolled = 0
        self._in_flight: concurrent.futures.Future[Any] | None = None
        """The blocking call running in a worker thread, if any (see `aclose`)."""
        self._closing = False
        """Set by `aclose`: a wait for queue room ends at once."""

    def _move(self, to: TxnState) -> None:
        if to is not self.state and to not in TRANSITIONS[self.state]:
            raise KafkaError(
                f"stream {self.stream_id}: producer cannot go from {self.state.value} to "
                f"{to.value} (a bug in polybridge)",
                retriable=False,
            )
        self.state = to

    @property
    def broken(self) -> bool:
        """True when this producer must be closed and replaced (see `TxnState.BROKEN`)."""
        return self.state is TxnState.BROKEN

    @property
    def in_transaction(self) -> bool:
        return self.state in (TxnState.OPEN, TxnState.COMMITTING, TxnState.ABORTING)

    # -- errors -------------------------------------------------------------------------

    def _fatal_cause(self, err: LibKafkaError) -> LibKafkaError:
        """The error that made the producer fatal, for a bare `_FATAL` ("Local: Fatal
        error"): after a fence librdkafka answers every later call with it, and an abort
        raises the real cause (e.g. `_FENCED`) as soon as librdkafka's own thread takes the
        call. Not with timeout 0: under load that thread may not get to it in time."""
        if err.code() != LibKafkaError._FATAL:
            return err
        try:
            self._producer.abort_transaction(_FATAL_CAUSE_WAIT_S)
        except LibKafkaException as exc:
            cause: LibKafkaError = exc.args[0]
            return cause if cause.code() != LibKafkaError._TIMED_OUT else err
        return err

    @property
    def _where(self) -> str:
        return f"stream {self.stream_id} (transactional.id={self.transactional_id})"

    def _error(self, err: LibKafkaError, action: str) -> KafkaError:
        """Translate one librdkafka error (see the module docstring); moves the state."""
        where = self._where
        err = self._fatal_cause(err)
        if is_denied(err):  # a missing ACL, not another instance: retrying cannot help
            if err.fatal():
                self._move(TxnState.BROKEN)
            txn_id = err.code() == LibKafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
            return KafkaError(
                denied(
                    self._config,
                    err,
                    "WRITE",
                    f"{action} for {where}",
                    self.transactional_id if txn_id else self._failed_topic,
                ),
                retriable=False,
            )
        if err.code() in _PURGED and self._failed_topic is not None:
            line = self._missing_write(action, self._failed_topic)
            if line is not None:
                return KafkaError(line, retriable=False)
        if err.code() in _FENCED_CODES:
            self._move(TxnState.FENCED)
            return FencedError(
                f"{where} was fenced: another bridge instance took over this stream "
                f"({err.name()} on {action})"
            )
        text = f"{action} failed for {where}: {err.name()}: {err.str()}"
        if err.fatal():
            self._move(TxnState.BROKEN)
            return KafkaError(text, retriable=True)
        if err.txn_requires_abort() or err.retriable():
            return KafkaError(text, retriable=True)
        if err.code() in _UNREACHABLE and not refused(err):
            # Kafka away (librdkafka does not mark these retriable): the stream waits for
            # it like any outage. A refused login or certificate is not an outage.
            return KafkaError(text, retriable=True)
        return KafkaError(text, retriable=False)

    def _missing_write(self, action: str, topic: str) -> str | None:
        """Records purged from a failed transaction hide why it failed. If Kafka does not
        authorize WRITE on `topic` (KIP-430's authorized operations), that is why: the
        line naming the ACL to grant. None when it does, or cannot be asked."""
        try:
            if "WRITE" not in missing_operations(self._config, topic, ["WRITE"]):
                return None
        except KafkaError:
            return None
        refused = LibKafkaError(LibKafkaError.TOPIC_AUTHORIZATION_FAILED)
        return denied(self._config, refused, "WRITE", f"{action} for {self._where}", topic)

    def _on_error(self, err: LibKafkaError) -> None:
        # Client-level errors (broker down, all brokers down): informative only; the
        # operation in progress reports its own error. The cluster gone is one outage for
        # the whole process; a broker gone, a line per broker and window, not per retry.
        if err.code() == LibKafkaError._ALL_BROKERS_DOWN:
            KAFKA.unreachable(f"stream {self.stream_id}", f"{self.bootstrap}: {err.str()}")
            return
        report(logging.WARNING, "ERROR", self.transactional_id, err.str())

    def _on_delivery(self, err: LibKafkaError | None, msg: Message) -> None:
        if err is None:  # only failures are reported (delivery.report.only.error)
            return
        self.failed_records += 1
        self._txn_failed += 1
        if self._txn_error is not None:
            return  # one line per transaction: the first failure says why it fails
        self._txn_error = err
        self._failed_topic = msg.topic()
        # Records we purged ourselves (closing, or a transaction given up) are expected.
        purged = err.code() in (LibKafkaError._PURGE_QUEUE, LibKafkaError._PURGE_INFLIGHT)
        log.log(
            logging.DEBUG if purged else logging.WARNING,
            "delivery failed stream=%s topic=%s partition=%s error=%s "
            "(the transaction will be aborted; later failures of it are not logged)",
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

    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking librdkafka call in a worker thread; remembered until it returns."""
        call: concurrent.futures.Future[Any] = _WORKERS.submit(fn, *args)
        self._in_flight = call
        return await asyncio.wrap_future(call)

    # -- lifecycle ----------------------------------------------------------------------

    async def init(self, timeout: float = INIT_TIMEOUT_S) -> None:
        """Register the transactional id, fencing any older instance (its open transaction
        is aborted by the broker); bounded by `timeout`."""
        try:
            await self._in_thread(self._producer.init_transactions, timeout)
        except LibKafkaException as exc:
            err: LibKafkaError = exc.args[0]
            if err.code() == LibKafkaError._TIMED_OUT:
                self._move(TxnState.BROKEN)  # init still in progress inside librdkafka
                raise KafkaError(
                    f"cannot reach Kafka at {self.bootstrap} within {timeout:.0f} s "
                    f"(init_transactions for stream {self.stream_id}): {err.str()}",
                    retriable=True,
                ) from exc
            raise self._error(err, "init_transactions") from exc
        KAFKA.reachable()
        self._move(TxnState.READY)
        log.info(
            "producer ready stream=%s transactional_id=%s", self.stream_id, self.transactional_id
        )

    async def settle(self, topics: Sequence[str], timeout: float = COMMIT_TIMEOUT_S) -> None:
        """Abort whatever this transactional id's earlier producers left open on the
        partitions of `topics` without its coordinator knowing (a hanging transaction).

        Call it right after `init()`. librdkafka has no KIP-890 support, and a batch can
        land on a partition after its transaction's end: a produce request applied late,
        or a marker the coordinator never wrote (seen when a single broker was fenced by its
        own controller while it wrote them). The partition then holds the batch as an open
        transaction that nobody will end: it stops every read_committed reader there, and
        the id's next transaction on that partition would take it in and commit it. One
        record (`SETTLE_KEY`, no value) per partition in a transaction that is aborted takes
        any such batch in, and ends it aborted: what no transaction of this id committed
        stays uncommitted. Its cost: one aborted transaction per producer."""
        self.begin()
        failure = None
        try:
            for topic in topics:
                for partition in await self._partitions(topic, timeout):
                    self._producer.produce(
                        topic, None, SETTLE_KEY, partition, on_delivery=self._on_delivery
                    )
            # On the partitions before the abort (which would purge them unsent).
            left = await self._in_thread(self._producer.flush, timeout)
        except LibKafkaException as exc:  # failed (a missing ACL) or fatal (fenced, most often)
            with contextlib.suppress(LibKafkaException):
                self._producer.poll(0)  # serve the delivery reports that say why
            failure = self._settle_error(self._txn_error or exc.args[0], topics)
        else:
            if self._txn_error is not None:
                failure = self._settle_error(self._txn_error, topics)
            elif left:
                failure = KafkaError(
                    f"stream {self.stream_id}: the settling transaction's records were not "
                    f"delivered within {timeout:.0f} s ({left} still queued)",
                    retriable=True,
                )
        if failure is None:
            await self.abort(timeout)
            return
        with contextlib.suppress(KafkaError):  # the failure says more than a failed abort
            await self.abort(timeout)
        raise failure

    def _settle_error(self, err: LibKafkaError, topics: Sequence[str]) -> KafkaError:
        """A failed settle, translated. When the transaction failed without saying why
        (its records purged, or a produce refused in its failed state), a topic of `topics`
        the principal may not write to is why: the line names the ACL."""
        if err.code() in _PURGED or err.code() == LibKafkaError._STATE:
            for topic in topics:
                line = self._missing_write("settle", topic)
                if line is not None:
                    self._failed_topic = topic
                    return KafkaError(line, retriable=False)
        return self._error(err, "settle")

    async def _partitions(self, topic: str, timeout: float) -> list[int]:
        try:
            metadata = await self._in_thread(self._producer.list_topics, topic, timeout)
        except LibKafkaException as exc:
            raise self._error(exc.args[0], f"metadata of {topic}") from exc
        found = metadata.topics.get(topic)
        if found is not None and found.error is not None and is_denied(found.error):
            self._failed_topic = topic
            raise self._error(found.error, f"metadata of {topic}")
        if found is None or found.error is not None or not found.partitions:
            raise KafkaError(
                f"stream {self.stream_id}: no partitions known for topic {topic} "
                f"({found.error if found is not None else 'not in the metadata'})",
                retriable=True,
            )
        return sorted(found.partitions)

    def begin(self) -> None:
        """Start a transaction."""
        self._txn_error = None
        self._txn_records = self._txn_bytes = self._txn_failed = 0
        self._call("begin_transaction", self._producer.begin_transaction)
        self._move(TxnState.OPEN)

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers | None = None,
    ) -> None:
        """Queue one record in the open transaction; never blocks. Raises `QueueFull`
        (nothing queued) when librdkafka's queue is full. A delivery failure surfaces on
        `commit()`."""
        if self._txn_error is not None:
            raise self._error(self._txn_error, "produce")
        try:
            self._producer.produce(
                topic, value, key, headers=headers or None, on_delivery=self._on_delivery
            )
        except BufferError:
            raise QueueFull from None
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

    async def wait_for_room(self) -> None:
        """After `QueueFull`: wait in a worker thread until librdkafka has sent some of its
        queue, for up to `BUFFER_FULL_WAIT_S`; then a retriable `KafkaError`."""
        if not await self._in_thread(self._drain_some, BUFFER_FULL_WAIT_S):
            raise KafkaError(
                f"stream {self.stream_id}: producer queue still full after "
                f"{BUFFER_FULL_WAIT_S:.0f} s (is Kafka at {self.bootstrap} reachable?)",
                retriable=True,
            )

    def _drain_some(self, timeout: float) -> bool:
        """Poll until the queue holds fewer records than now (True), the producer closes or
        `timeout` passes (False)."""
        queued = len(self._producer)
        deadline = time.monotonic() + timeout
        while not self._closing and time.monotonic() < deadline:
            self._call("produce (poll)", self._producer.poll, _BUFFER_POLL_S)
            if len(self._producer) < queued:
                return True
        return False

    async def commit(self, timeout: float | None = None) -> None:
        """Flush and commit the open transaction, within `timeout` seconds.

        Raises `FencedError` when another instance owns the id; `CommitPending` when the
        commit did not finish in time (librdkafka keeps committing: call `commit()` again,
        or give up on this producer with `give_up()`); a retriable `KafkaError` when the
        transaction must be aborted; else `KafkaError`.
        """
        self._move(TxnState.COMMITTING)
        within = "the transaction timeout" if timeout is None else f"{timeout:.0f} s"
        started = time.monotonic()
        try:
            if timeout is None:
                # librdkafka's own advice: commit with no timeout of ours, i.e. the
                # transaction's remaining timeout. A commit cut by a shorter one mid-flush
                # and then resumed was followed, in broker pauses, by the transaction's last
                # record (its state record) landing after the commit marker: an open
                # transaction no coordinator knows, holding every reader of the state topic.
                await self._in_thread(self._producer.commit_transaction)
            else:
                await self._in_thread(self._producer.commit_transaction, timeout)
        except LibKafkaException as exc:
            err: LibKafkaError = exc.args[0]
            # A delivery report's error says more than the commit's summary of it.
            if self._txn_error is not None and self._txn_error.code() in _FENCED_CODES:
                err = self._txn_error
            if err.code() == LibKafkaError._TIMED_OUT or (
                err.retriable() and not err.txn_requires_abort() and not err.fatal()
            ):
                # librdkafka's contract: a retriable commit error means "commit again". The
                # coordinator may already hold the commit, so aborting and resuming from the
                # previous position would write the transaction's records twice; and
                # replacing the producer now would race with the commit still going on.
                KAFKA.unreachable(f"stream {self.stream_id}", f"commit pending: {err.str()}")
                raise CommitPending(
                    f"commit for stream {self.stream_id} (transactional.id="
                    f"{self.transactional_id}) not finished within {within}: "
                    f"{err.name()}: {err.str()}",
                    retriable=True,
                ) from exc
            raise self._error(err, "commit") from exc
        if self._txn_error is not None:  # cannot happen per librdkafka; never lose it silently
            raise self._error(self._txn_error, "commit (delivery)")
        KAFKA.reachable()
        self._move(TxnState.READY)
        self.delivered_records += self._txn_records
        self.delivered_bytes += self._txn_bytes
        log.debug("committed stream=%s ms=%.1f", self.stream_id, (time.monotonic() - started) * 1e3)

    def give_up(self) -> None:
        """Declare the open transaction's outcome unknown (a commit that kept timing out):
        the producer is BROKEN; a new one's `init()` settles the outcome either way."""
        self._move(TxnState.BROKEN)

    async def abort(self, timeout: float = COMMIT_TIMEOUT_S) -> None:
        """Abort the open transaction, if any, within `timeout` seconds."""
        if not self.in_transaction:
            return
        self._move(TxnState.ABORTING)
        try:
            await self._in_thread(self._producer.abort_transaction, timeout)
        except LibKafkaException as exc:
            err: LibKafkaError = exc.args[0]
            if err.code() in (LibKafkaError._TIMED_OUT, LibKafkaError._CONFLICT):
                self._move(TxnState.BROKEN)
                raise KafkaError(
                    f"abort for stream {self.stream_id} (transactional.id="
                    f"{self.transactional_id}) did not finish within {timeout:.0f} s "
                    f"({err.name()}); this producer must be replaced",
                    retriable=True,
                ) from exc
            raise self._error(err, "abort") from exc
        finally:
            self._txn_error = None
        self._move(TxnState.READY)

    async def aclose(self) -> None:
        """`close()`, once the blocking call still running in a worker thread (its awaiting
        task was cancelled) has returned: every such call is bounded by its timeout."""
        self._closing = True
        call = self._in_flight
        if call is not None and not call.done():
            log.info(
                "stream=%s waiting for a Kafka call in flight before closing the producer",
                self.stream_id,
            )
            with contextlib.suppress(Exception):
                await asyncio.shield(asyncio.wrap_future(call))
        self.close()

    def close(self) -> None:
        """Release the client, aborting an open transaction (bounded by `CLOSE_ABORT_S`:
        librdkafka's own close() would abort it without a bound). A BROKEN or FENCED
        producer, or one whose init never finished, is only purged and dropped: destroying
        the client does not wait for the broker, and the broker aborts the transaction at
        transaction.timeout.ms (or the next owner's init_transactions already did). A call
        that timed out goes on inside librdkafka until the client is destroyed, which
        dropping it here does (no other reference to it remains)."""
        if self.state is TxnState.CLOSED:
            return
        call = self._in_flight
        if call is not None and not call.done():
            # Releasing the client under a running call would leave it acting unseen.
            log.warning("stream=%s producer closes once its Kafka call returns", self.stream_id)
            call.add_done_callback(lambda _: self.close())
            return
        producer = self._producer
        try:
            producer.purge(in_queue=True, in_flight=False, blocking=False)
            if self.in_transaction:
                try:
                    producer.abort_transaction(CLOSE_ABORT_S)
                    self.state = TxnState.READY
                except LibKafkaException as exc:
                    log.warning(
                        "abort on close failed stream=%s error=%s", self.stream_id, exc.args[0]
                    )
                    self.state = TxnState.BROKEN
            if self.state not in (TxnState.NEW, TxnState.BROKEN, TxnState.FENCED):
                producer.close()
        except (LibKafkaException, RuntimeError) as exc:
            log.debug("producer close stream=%s error=%s", self.stream_id, exc)
        finally:
            self.state = TxnState.CLOSED
            # Drop our reference: the client is destroyed (threads joined) when collected.
            del self._producer
