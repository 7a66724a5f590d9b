"""The backfill task on its own: a fake History served page by page and an in-memory Kafka
with the transaction rules (commit or nothing; a newer init fences the older). A crash is
the task stopped (or failing) between two transactions, then a new task started."""

from __future__ import annotations

import asyncio
import functools
import itertools
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import pytest

from bridge.backfill.cursor import (
    FILLED,
    PARTIALLY_FILLED,
    UNFILLABLE,
    GapRecord,
    cursor_key,
    cursor_of,
    gap_record,
)
from bridge.backfill.history import History, Page, Unfillable, Window
from bridge.backfill.task import BackfillStats, BackfillTask
from bridge.backfill.writer import SOURCE_HEADER
from bridge.eos.contract import Producer, SideTopics
from bridge.eos.side_records import OPEN
from bridge.errors import FencedError, KafkaError
from bridge.kafka.readback import ReadStopped
from bridge.kafka.state import StateEntry, decode_state
from bridge.records import EVENT_ID_HEADER, DeadLetter, Gap, Record
from bridge.serde.avro import Serializer, SingleObjectFormat

STREAM = "dropcopy.executions"


def _sync(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


TOPIC = "data"


def _serializer(schema: str) -> Serializer:
    return Serializer(schema, SingleObjectFormat().prefix(schema, "t"))


SIDE = SideTopics(
    "state",
    "dlq",
    "gaps",
    _serializer("polybridge.State"),
    _serializer("polybridge.DeadLetter"),
    _serializer("polybridge.Gap"),
)
Produced = tuple[str, bytes | None, bytes | None, list[tuple[str, str | bytes | None]]]


@dataclass
class FakeKafka:
    committed: list[Produced] = field(default_factory=list)
    epoch: int = 0
    fail_commit_at: int | None = None
    """Fail the n-th commit (1-based) with a retriable error (it aborts)."""
    commits: int = 0

    def data_ids(self) -> list[str]:
        return [_header(h, EVENT_ID_HEADER).decode() for t, _, _, h in self.committed if t == TOPIC]

    def gap_records(self) -> list[GapRecord]:
        return [
            gap_record(SIDE.gap_serializer.decode(v))
            for t, _, v, _ in self.committed
            if t == "gaps" and v is not None
        ]

    def state(self, key: str) -> StateEntry | None:
        found = None
        for t, k, v, _ in self.committed:
            if t == "state" and k == key.encode():
                found = decode_state(v) if v is not None else None
        return found


def _header(headers: list[tuple[str, str | bytes | None]], name: str) -> bytes:
    value = dict(headers)[name]
    assert isinstance(value, bytes)
    return value


class FakeProducer:
    transactional_id = "polybridge.dropcopy.executions.backfill"

    def __init__(self, kafka: FakeKafka) -> None:
        self.kafka = kafka
        self.epoch = 0
        self.open: list[Produced] | None = None

    @property
    def broken(self) -> bool:
        return False

    async def init(self) -> None:
        self.kafka.epoch += 1
        self.epoch = self.kafka.epoch

    async def settle(self, topics: object) -> None:
        self._check()

    def _check(self) -> None:
        if self.epoch != self.kafka.epoch:
            raise FencedError("fenced")

    def begin(self) -> None:
        self._check()
        self.open = []

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, str | bytes | None]] | None = None,
    ) -> None:
        assert self.open is not None
        self.open.append((topic, key, value, list(headers or [])))

    async def commit(self) -> None:
        self._check()
        assert self.open is not None
        self.kafka.commits += 1
        if self.kafka.commits == self.kafka.fail_commit_at:
            raise KafkaError("injected commit failure", retriable=True)
        self.kafka.committed.extend(self.open)
        self.open = None

    def give_up(self) -> None:
        pass

    async def abort(self) -> None:
        self.open = None

    def close(self) -> None:
        self.open = None

    async def aclose(self) -> None:
        self.close()


class FakeIO:
    transactional_id = FakeProducer.transactional_id

    def __init__(self, kafka: FakeKafka) -> None:
        self.kafka = kafka

    def new_producer(self) -> Producer:
        return FakeProducer(self.kafka)

    def cursor_entry(self, stop: threading.Event | None = None) -> StateEntry | None:
        return self.kafka.state(cursor_key(STREAM))

    def gap_records(self) -> list[GapRecord]:
        return self.kafka.gap_records()

    def known_records(self, topic: str, since_us: int) -> list[tuple[str, bytes | None]]:
        return [
            (_header(h, EVENT_ID_HEADER).decode(), v)
            for t, _, v, h in self.kafka.committed
            if t == topic and dict(h).get("polybridge.stream") == STREAM.encode()
        ]


def _record(event_id: str) -> Record:
    return Record(TOPIC, b"k", event_id.encode(), event_id, None)


@dataclass
class FakeHistory:
    """`pages` pages of `per_page` records each; ids e0, e1, ... Counts the pages served."""

    pages_total: int = 5
    per_page: int = 4
    served: list[str | None] = field(default_factory=list)
    unfillable_at: int | None = None
    fail_at: int | None = None
    dead_letter_on: int | None = None

    def pages(self, window: Window, cursor: str | None) -> AsyncIterator[Page]:
        return self._pages(cursor)

    async def _pages(self, cursor: str | None) -> AsyncIterator[Page]:
        index = int(cursor) if cursor is not None else 0
        while index < self.pages_total:
            if index == self.unfillable_at:
                raise Unfillable("beyond retention")
            if index == self.fail_at:
                self.fail_at = None
                raise RuntimeError("HTTP 503")
            self.served.append(cursor)
            records = [_record(f"e{index * self.per_page + i}") for i in range(self.per_page)]
            letters = (
                [DeadLetter(b"{}", "bad row", "mapping", 1)] if index == self.dead_letter_on else []
            )
            index += 1
            cursor = str(index) if index < self.pages_total else None
            yield Page(records, letters, cursor)


GAP = Gap(1_000_000, 2_000_000, "token_refused_no_replay", "executions", "{}")


def _open_gap_written(kafka: FakeKafka, gap: Gap = GAP) -> None:
    value = SIDE.gap_serializer(
        {
            "stream_id": STREAM,
            "upstream": "dropcopy",
            "channel": gap.channel,
            "filters": gap.filters,
            "from_time": gap.from_us,
            "to_time": gap.to_us,
            "reason": gap.reason,
            "detected_at": 3_000_000,
        }
    )
    kafka.committed.append(("gaps", STREAM.encode(), value, []))


def _task(
    kafka: FakeKafka,
    history: History | Callable[[Gap], History],
    *,
    max_records: int = 3,
    on_progress: Callable[[BackfillStats], None] | None = None,
) -> BackfillTask:
    history_for = history if callable(history) else (lambda gap: history)
    return BackfillTask(
        stream_id=STREAM,
        upstream="dropcopy",
        topic=TOPIC,
        history_for=history_for,
        io=FakeIO(kafka),
        side=SIDE,
        instance_id="test",
        max_records_per_transaction=max_records,
        retry_interval_s=0.01,
        on_progress=on_progress,
    )


async def _run_until(task: BackfillTask, done: Callable[[], bool]) -> None:
    stop = asyncio.Event()
    runner = asyncio.create_task(task.run(stop))
    for _ in range(2_000):
        if done() or runner.done():
            break
        await asyncio.sleep(0.001)
    stop.set()
    await asyncio.wait_for(runner, 5)


def _statuses(kafka: FakeKafka) -> list[str]:
    return [r.status for r in kafka.gap_records()]


@_sync
async def test_an_open_gap_on_the_topic_is_filled_and_closed() -> None:
    kafka = FakeKafka()
    _open_gap_written(kafka)
    # Two records of the window are in Kafka already (the stream wrote them).
    for event_id in ("e0", "e5"):
        kafka.committed.append(
            (
                TOPIC,
                b"k",
                b"v",
                [("polybridge.stream", STREAM.encode()), (EVENT_ID_HEADER, event_id.encode())],
            )
        )
    history = FakeHistory()
    task = _task(kafka, history)
    await _run_until(task, lambda: len(kafka.gap_records()) == 2)
    ids = kafka.data_ids()
    assert sorted(ids) == sorted(f"e{i}" for i in range(20))
    assert len(ids) == len(set(ids))
    assert _statuses(kafka) == [OPEN, FILLED]
    closed = kafka.gap_records()[1]
    assert closed.gap.identity == GAP.identity and closed.records == 18
    backfilled = [h for t, _, _, h in kafka.committed if t == TOPIC][2:]
    assert all(_header(h, SOURCE_HEADER) == b"rest" for h in backfilled)
    assert cursor_of(kafka.state(cursor_key(STREAM))).gaps == ()
    assert task.stats.already_in_kafka == 2 and task.stats.written == 18


@pytest.mark.parametrize("stop_after", [1, 2, 3, 5, 7])
@_sync
async def test_stopped_between_transactions_resumes_from_the_cursor(stop_after: int) -> None:
    kafka = FakeKafka()
    _open_gap_written(kafka)
    history = FakeHistory(pages_total=4, per_page=5)  # 5 per page, 3 per transaction: split
    before = kafka.commits

    first = _task(kafka, history)
    await _run_until(first, lambda: kafka.commits - before >= stop_after)
    second = _task(kafka, history)
    await _run_until(second, lambda: len(kafka.gap_records()) == 2)
    ids = kafka.data_ids()
    assert sorted(ids) == sorted(f"e{i}" for i in range(20)), ids
    assert _statuses(kafka) == [OPEN, FILLED]
    # A page whose parts were all committed is never fetched again.
    assert len(history.served) <= 4 + 1


@_sync
async def test_a_failed_commit_loses_nothing_and_doubles_nothing() -> None:
    kafka = FakeKafka(fail_commit_at=3)
    _open_gap_written(kafka)
    history = FakeHistory(pages_total=3, per_page=5)
    await _run_until(_task(kafka, history), lambda: len(kafka.gap_records()) == 2)
    assert sorted(kafka.data_ids()) == sorted(f"e{i}" for i in range(15))


@_sync
async def test_a_rest_error_keeps_the_gap_open_and_is_retried() -> None:
    kafka = FakeKafka()
    _open_gap_written(kafka)
    history = FakeHistory(pages_total=3, fail_at=2)
    task = _task(kafka, history)
    await _run_until(task, lambda: len(kafka.gap_records()) == 2)
    assert sorted(kafka.data_ids()) == sorted(f"e{i}" for i in range(12))
    assert task.stats.rest_errors == {"other": 1}


@_sync
async def test_unfillable_and_partially_filled() -> None:
    kafka = FakeKafka()
    _open_gap_written(kafka)
    await _run_until(
        _task(kafka, FakeHistory(unfillable_at=0)), lambda: len(kafka.gap_records()) == 2
    )
    assert _statuses(kafka) == [OPEN, UNFILLABLE]
    assert kafka.gap_records()[1].detail == "beyond retention"

    kafka = FakeKafka()
    _open_gap_written(kafka)
    await _run_until(
        _task(kafka, FakeHistory(unfillable_at=2)), lambda: len(kafka.gap_records()) == 2
    )
    assert _statuses(kafka) == [OPEN, PARTIALLY_FILLED]
    assert len(kafka.data_ids()) == 8

    kafka = FakeKafka()
    _open_gap_written(kafka)
    await _run_until(
        _task(kafka, FakeHistory(pages_total=2, dead_letter_on=1)),
        lambda: len(kafka.gap_records()) == 2,
    )
    assert _statuses(kafka) == [OPEN, PARTIALLY_FILLED]
    assert "did not map" in kafka.gap_records()[1].detail
    assert [t for t, *_ in kafka.committed].count("dlq") == 1


@_sync
async def test_a_channel_without_history_is_closed_unfillable() -> None:
    kafka = FakeKafka()
    _open_gap_written(kafka)

    def none(gap: Gap) -> History:
        raise Unfillable("no REST history for instrument states")

    await _run_until(_task(kafka, none), lambda: len(kafka.gap_records()) == 2)
    assert _statuses(kafka) == [OPEN, UNFILLABLE]


@_sync
async def test_gaps_notified_after_commit_are_filled_in_order() -> None:
    kafka = FakeKafka()
    history = FakeHistory(pages_total=1, per_page=2)
    task = _task(kafka, history)
    stop = asyncio.Event()
    runner = asyncio.create_task(task.run(stop))
    await asyncio.sleep(0.01)
    later = Gap(5_000_000, 6_000_000, "disconnected", "executions", "{}")
    task.notify([GAP, later])
    for _ in range(2_000):
        if len(kafka.gap_records()) == 2:
            break
        await asyncio.sleep(0.001)
    stop.set()
    await asyncio.wait_for(runner, 5)
    closed = kafka.gap_records()
    assert [r.gap.reason for r in closed] == [GAP.reason, later.reason]
    assert all(r.status == FILLED for r in closed)
    # Both windows served the same ids: the second one found them in Kafka already.
    assert sorted(kafka.data_ids()) == ["e0", "e1"]


@_sync
async def test_fenced_task_waits_for_the_next_gap() -> None:
    kafka = FakeKafka()
    _open_gap_written(kafka)
    history = FakeHistory(pages_total=3, per_page=5)
    fenced_once = False

    def fence(stats: BackfillStats) -> None:
        nonlocal fenced_once
        if stats.transactions == 1 and not fenced_once:
            fenced_once = True
            kafka.epoch += 1  # another owner of the backfill id

    task = _task(kafka, history, on_progress=fence)
    await _run_until(task, lambda: fenced_once)
    assert task.stats.transactions == 1
    await _run_until(_task(kafka, history), lambda: len(kafka.gap_records()) == 2)
    assert sorted(kafka.data_ids()) == sorted(f"e{i}" for i in range(15))


def test_metrics_show_the_backfill() -> None:
    from bridge.eos.contract import PipelineStats
    from bridge.metrics import StreamView, make_registry, parse_text, render

    stats = BackfillStats(
        open_gaps=2,
        oldest_open_detected_us=1_000_000,
        written=7,
        gaps_closed={"filled": 1, "unfillable": 2},
        rest_errors={"503": 3},
    )
    views = [
        StreamView(STREAM, PipelineStats(), None, backfill=stats),
        StreamView("dropcopy.other", PipelineStats(), None),
    ]
    samples = parse_text(render(make_registry(lambda: views)).decode())
    label = (("stream", STREAM),)
    assert samples[("polybridge_backfill_open_gaps", label)] == 2
    assert samples[("polybridge_backfill_records_total", label)] == 7
    assert samples[("polybridge_backfill_lag_seconds", label)] > 1_000_000_000
    assert (
        samples[("polybridge_backfill_gaps_closed_total", (("status", "unfillable"), *label))] == 2
    )
    assert samples[("polybridge_backfill_rest_errors_total", (("status", "503"), *label))] == 3
    assert not [
        k
        for k in samples
        if k[0].startswith("polybridge_backfill") and ("stream", "dropcopy.other") in k[1]
    ]


def test_natural_keys_match_rest_rows_to_stream_records_by_count() -> None:
    from bridge.backfill.known import Known

    def key(value: bytes) -> str | None:
        return value.split(b"#")[0].decode()

    # The stream wrote one of the two fills of order o1 in tx t1 (live id), and t2/o2.
    kafka = [("live-1", b"t1|o1#a"), ("live-2", b"t2|o2#x")]
    rest = [
        Record(TOPIC, b"k", b"t1|o1#a", "rest-a", None),
        Record(TOPIC, b"k", b"t1|o1#b", "rest-b", None),
        Record(TOPIC, b"k", b"t2|o2#x", "rest-x", None),
    ]
    known = Known(kafka, key)
    written = [r for r in rest if not known.holds(r)]
    assert [r.event_id for r in written] == ["rest-b"]
    # After a crash the window is read back with what was written: nothing is written twice.
    again = Known([*kafka, ("rest-b", b"t1|o1#b")], key)
    assert [r.event_id for r in rest if not again.holds(r)] == []


@_sync
async def test_reconciliation_writes_what_the_stream_missed_in_the_recent_past() -> None:
    from bridge.backfill.reconcile import Reconcile

    kafka = FakeKafka()
    kafka.committed.append(
        (TOPIC, b"k", b"v", [("polybridge.stream", STREAM.encode()), (EVENT_ID_HEADER, b"e1")])
    )
    windows: list[Window] = []

    class Recent:
        def pages(self, window: Window, cursor: str | None) -> AsyncIterator[Page]:
            windows.append(window)
            return self._one()

        async def _one(self) -> AsyncIterator[Page]:
            yield Page([_record("e0"), _record("e1"), _record("e2")], [], None)

    task = BackfillTask(
        stream_id=STREAM,
        upstream="predexon",
        topic=TOPIC,
        history_for=lambda gap: Recent(),
        io=FakeIO(kafka),
        side=SIDE,
        instance_id="test",
        reconcile=Reconcile(0.01, 0.0, "orders", "{}"),
    )
    await _run_until(task, lambda: len(windows) >= 3)
    assert sorted(kafka.data_ids()) == ["e0", "e1", "e2"]
    assert kafka.gap_records() == []  # reconciliation windows have no gap record to close
    # Consecutive windows: each starts where the previous one ended.
    assert all(a.to_us == b.from_us for a, b in itertools.pairwise(windows))


@_sync
async def test_predexon_rest_fills_match_live_records_on_tx_and_order_hash() -> None:
    from bridge.backfill.known import Known, natural_key_of
    from bridge.backfill.predexon_history import PredexonHistory
    from bridge.mapping.predexon import PredexonMapper
    from bridge.serde.decode import Decoder
    from bridge.sources.rest.page import RestPage

    prefix = SingleObjectFormat().prefix("predexon.polymarket.TradeEvent", "t")
    live = PredexonMapper("orders", "predexon.fills", "trades", prefix, '{"users":["0xu"]}')
    base = {"event_type": "order_filled", "tx_hash": "0xt", "order_hash": "0xo", "timestamp": 5}
    kafka = [
        live.map_event(
            base | {"status": "confirmed", "log_index": "0x1", "role": "maker"}, 1, None
        ),
        live.map_event(base | {"status": "pending", "log_index": None, "role": "maker"}, 1, None),
    ]
    row = {"tx_hash": "0xt", "order_hash": "0xo", "timestamp": 5, "user": "0xu"}
    rows = [row, row | {"tx_hash": "0xt2"}]

    class Client:
        async def trades(self, params: object, cursor: str | None) -> RestPage:
            return RestPage(rows, None)

    history = PredexonHistory(Client(), live, {"users": ["0xu"]})  # type: ignore[arg-type]
    (page,) = [p async for p in history.pages(Window(4_000_000, 6_000_000), None)]
    assert len(page.records) == 2
    natural = natural_key_of("predexon", "orders", Decoder())
    known = Known([(r.event_id, r.value) for r in kafka], natural)
    # The REST row of the confirmed live fill has another id, yet it is found in Kafka.
    assert [known.holds(r) for r in page.records] == [True, False]


@_sync
async def test_predexon_windows_reach_back_to_block_times_and_wait_for_rest_to_settle() -> None:
    from bridge.backfill.predexon_history import PredexonHistory
    from bridge.mapping.predexon import PredexonMapper
    from bridge.sources.rest.page import RestPage
    from bridge.timeutil import now_us

    prefix = SingleObjectFormat().prefix("predexon.polymarket.TradeEvent", "t")
    live = PredexonMapper("orders", "predexon.fills", "trades", prefix, '{"users":["0xu"]}')
    start_s = 1_767_000_000  # 2025-12-29: block times are plausible event times
    # A fill mined 20 s before the gap opened (its confirmation arrived inside the gap), one
    # in the gap's first, partial second, and one older than the lookback.
    rows = [
        {"tx_hash": f"0x{at}", "order_hash": "0xo", "timestamp": at, "user": "0xu"}
        for at in (start_s - 20, start_s, start_s - 80)
    ]
    asked: list[tuple[dict[str, object], int]] = []

    class Client:
        async def trades(self, params: dict[str, object], cursor: str | None) -> RestPage:
            asked.append((params, now_us()))
            return RestPage(rows, None)

    history = PredexonHistory(
        Client(),  # type: ignore[arg-type]
        live,
        {"users": ["0xu"]},
        lookback_s=60,
        rest_lag_s=0.3,
    )
    # The gap: from the middle of second 1000 to now.
    window = Window(start_s * 1_000_000 + 500_000, now_us())
    (page,) = [p async for p in history.pages(window, None)]
    assert [r.event_time_us for r in page.records] == [
        (start_s - 20) * 1_000_000,
        start_s * 1_000_000,
    ]
    ((params, at),) = asked
    assert params["start_time"] < start_s - 60 and at >= window.to_us + 300_000


def test_the_pipeline_tells_its_gaps_only_once_committed() -> None:
    from bridge.config import PipelineSettings
    from bridge.eos.pipeline import Pipeline
    from bridge.eos.repeats import RecentIds
    from bridge.records import Batch, Position
    from tests.unit import test_eos_pipeline as eos

    kafka = eos.FakeKafka()
    told: list[tuple[list[Gap], int]] = []

    class GapSource:
        stream_id = STREAM

        async def stream(self, start: Position | None) -> AsyncIterator[Batch]:
            yield Batch([], Position(event_time_us=1), gaps=[GAP])
            await asyncio.Event().wait()  # live: nothing more

    def gaps_written() -> int:
        return sum(1 for t, *_ in kafka.committed if t == "gaps")

    pipeline = Pipeline(
        stream_id=STREAM,
        upstream="dropcopy",
        source=GapSource(),
        topic="data",
        producer=lambda: eos.FakeProducer(kafka, "app." + STREAM),  # type: ignore[arg-type]
        positions=eos.FakePositions(kafka),
        side=eos.SIDE,
        settings=PipelineSettings(max_latency_ms=1),
        repeats=lambda: RecentIds(10),
        read_back=lambda: [],
        instance_id="me",
        on_gaps=lambda gaps: told.append((list(gaps), gaps_written())),
    )
    asyncio.run(eos._run_until(pipeline, lambda: bool(told)))
    assert told == [([GAP], 1)]


def test_a_stop_ends_a_start_that_waits_for_the_state_topic() -> None:
    """The cursor read waits for transactions open on the state topic (up to the
    transaction timeout); a stop ends it instead of the runner giving up on the task."""

    class WaitingIO(FakeIO):
        def cursor_entry(self, stop: threading.Event | None = None) -> StateEntry | None:
            # As the real read: it waits (here up to 30 s) unless a stop event ends it.
            if (stop or threading.Event()).wait(30):
                raise ReadStopped("stopped")
            return None

    async def body() -> float:
        task = _task(FakeKafka(), FakeHistory())
        task._io = WaitingIO(FakeKafka())
        stop = asyncio.Event()
        runner = asyncio.create_task(task.run(stop))
        await asyncio.sleep(0.2)  # the read is waiting
        assert not runner.done()
        stopped = time.monotonic()
        stop.set()
        await asyncio.wait_for(runner, 10)
        return time.monotonic() - stopped

    assert asyncio.run(body()) < 1.0
