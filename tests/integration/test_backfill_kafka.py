"""The backfill task against the real broker, with a fake History served in-process: gaps
found on the gaps topic, records already in Kafka dropped, the cursor in the state topic,
a task stopped between transactions or killed inside one resumed exactly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from bridge.backfill.cursor import (
    FILLED,
    cursor_key,
    cursor_of,
    gap_record,
)
from bridge.backfill.history import Page, Window
from bridge.backfill.kafka import KafkaBackfillIO, backfill_transactional_id
from bridge.backfill.task import BackfillStats, BackfillTask
from bridge.backfill.writer import SOURCE_HEADER
from bridge.commands.backfill import Progress, backfill
from bridge.commands.state import show
from bridge.config import Settings
from bridge.eos.contract import SideTopics
from bridge.eos.positions import PositionStore
from bridge.eos.side_records import OPEN, gap_datum
from bridge.kafka.producer import TransactionalProducer
from bridge.kafka.readback import header
from bridge.records import EVENT_ID_HEADER, STREAM_HEADER, Gap, Record
from bridge.serde.avro import Serializer, SingleObjectFormat
from bridge.serde.decode import Decoder
from tests.kafka_fixture import Row

STREAM = "dropcopy.executions"
APP = "bftest"


def _ser(schema: str, topic: str) -> Serializer:
    return Serializer(schema, SingleObjectFormat().prefix(schema, topic))


@dataclass
class Topics:
    data: str
    state: str
    dlq: str
    gaps: str

    @property
    def side(self) -> SideTopics:
        return SideTopics(
            self.state,
            self.dlq,
            self.gaps,
            _ser("polybridge.State", self.state),
            _ser("polybridge.DeadLetter", self.dlq),
            _ser("polybridge.Gap", self.gaps),
        )


@dataclass
class PagedHistory:
    """`pages_total` pages of `per_page` records; ids e0, e1, ..."""

    topic: str
    pages_total: int = 6
    per_page: int = 5
    served: list[str | None] = field(default_factory=list)

    def pages(self, window: Window, cursor: str | None) -> AsyncIterator[Page]:
        return self._pages(cursor)

    async def _pages(self, cursor: str | None) -> AsyncIterator[Page]:
        index = int(cursor) if cursor is not None else 0
        while index < self.pages_total:
            self.served.append(cursor)
            records = [
                Record(self.topic, b"k", f"v{n}".encode(), f"e{n}", None)
                for n in range(index * self.per_page, (index + 1) * self.per_page)
            ]
            index += 1
            cursor = str(index) if index < self.pages_total else None
            yield Page(records, [], cursor)


def _topics(make_topic: Callable[..., str]) -> Topics:
    return Topics(
        make_topic(partitions=3),
        make_topic(config={"cleanup.policy": "compact"}),
        make_topic(),
        make_topic(),
    )


async def _seed(config: dict[str, str], topics: Topics, live_ids: list[str]) -> None:
    """What the stream wrote: an open gap, and some records of the window."""
    producer = TransactionalProducer(config, f"{APP}.{STREAM}.seed", STREAM)
    await producer.init()
    producer.begin()
    gap = Gap(1_000_000, 2_000_000, "token_refused_no_replay", "executions", "{}", 5)
    producer.produce(
        topics.gaps,
        STREAM.encode(),
        topics.side.gap_serializer(gap_datum(STREAM, "dropcopy", gap, OPEN, "", 0, 5)),
    )
    for event_id in live_ids:
        producer.produce(
            topics.data,
            b"k",
            b"live",
            [(STREAM_HEADER, STREAM.encode()), (EVENT_ID_HEADER, event_id.encode())],
        )
    await producer.commit()
    producer.close()


def _task(
    config: dict[str, str],
    topics: Topics,
    history: PagedHistory,
    on_progress: Callable[[BackfillStats], None] | None = None,
) -> tuple[BackfillTask, PositionStore]:
    positions = PositionStore(config, topics.state)
    io = KafkaBackfillIO(
        config,
        app_id=APP,
        stream_id=STREAM,
        positions=positions,
        gaps_topic=topics.gaps,
        decoder=Decoder(),
    )
    task = BackfillTask(
        stream_id=STREAM,
        upstream="dropcopy",
        topic=topics.data,
        history_for=lambda gap: history,
        io=io,
        side=topics.side,
        instance_id="it",
        max_records_per_transaction=3,
        retry_interval_s=0.05,
        on_progress=on_progress,
    )
    return task, positions


async def _run(task: BackfillTask, done: Callable[[], bool]) -> None:
    stop = asyncio.Event()
    runner = asyncio.create_task(task.run(stop))
    while not done() and not runner.done():
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(runner, 30)


def _ids(rows: list[Row]) -> list[str]:
    found = []
    for _, _, headers, _, _ in rows:
        value = header(headers, EVENT_ID_HEADER)  # type: ignore[arg-type]
        assert value is not None
        found.append(value.decode())
    return found


def _statuses(rows: list[Row]) -> list[str]:
    return [gap_record(Decoder().decode(v).datum).status for _, v, _, _, _ in rows if v]


def test_backfill_fills_exactly_once_across_a_stop_and_an_abandoned_transaction(
    kafka_bootstrap: str, make_topic: Callable[..., str], read_topic: Callable[[str], list[Row]]
) -> None:
    config = {"bootstrap.servers": kafka_bootstrap}
    topics = _topics(make_topic)
    history = PagedHistory(topics.data)

    async def scenario() -> None:
        await _seed(config, topics, ["e1", "e7", "e22"])
        # 1. Stopped between transactions, after a few.
        stop_at = asyncio.Event()

        def watch(stats: BackfillStats) -> None:
            if stats.transactions >= 4:
                stop_at.set()

        first, positions = _task(config, topics, history, watch)
        await _run(first, stop_at.is_set)
        positions.close()
        # 2. A crash inside a transaction: records and a cursor produced, never committed.
        zombie = TransactionalProducer(config, backfill_transactional_id(APP, STREAM), STREAM)
        await zombie.init()
        zombie.begin()
        zombie.produce(topics.data, b"k", b"zombie", [(EVENT_ID_HEADER, b"e29")])
        # 3. A new task fences it (its open transaction is aborted) and resumes.
        second, positions = _task(config, topics, history)
        await _run(second, lambda: second.stats.gaps_closed.get(FILLED, 0) == 1)
        positions.close()
        zombie.close()

    asyncio.run(scenario())
    rows = read_topic(topics.data)
    ids = _ids(rows)
    assert sorted(ids) == sorted(f"e{n}" for n in range(30)), ids
    assert all(v != b"zombie" for _, v, _, _, _ in rows)
    rest = [h for _, v, h, _, _ in rows if v != b"live"]
    assert len(rest) == 27
    assert all(header(h, SOURCE_HEADER) == b"rest" for h in rest)  # type: ignore[arg-type]
    assert _statuses(read_topic(topics.gaps)) == [OPEN, FILLED]
    # The cursor is empty again, and a page fully committed was never fetched twice.
    store = PositionStore(config, topics.state)
    try:
        entry = store.latest(cursor_key(STREAM))
        assert entry is not None and cursor_of(entry).gaps == ()
        assert store.latest(STREAM) is None  # the stream's own position is untouched
    finally:
        store.close()
    assert len(history.served) < 6 + 3


def test_backfill_command_dry_run_then_fill(
    kafka_bootstrap: str, make_topic: Callable[..., str], read_topic: Callable[[str], list[Row]]
) -> None:
    config = {"bootstrap.servers": kafka_bootstrap}
    topics = _topics(make_topic)
    settings = Settings.model_validate(
        {
            "app_id": APP,
            "kafka": {
                "bootstrap_servers": kafka_bootstrap,
                "state_topic": topics.state,
                "dlq_topic": topics.dlq,
                "gaps_topic": topics.gaps,
            },
            "dropcopy": {"streams": [{"kind": "executions", "topic": topics.data}]},
            "backfill": {"max_records_per_transaction": 4},
        }
    )
    history = PagedHistory(topics.data, pages_total=3)
    window = Window(1_000_000, 2_000_000)

    class Sink:
        lines: list[str] = []

        def isatty(self) -> bool:
            return False

        def write(self, text: str) -> int:
            self.lines.append(text)
            return len(text)

        def flush(self) -> None:
            pass

    async def scenario() -> None:
        await _seed(config, topics, ["e0", "e14"])
        dry = await backfill(settings, STREAM, window, dry_run=True, rest=lambda s, g: history)
        assert (dry.fetched, dry.already_in_kafka, dry.written) == (15, 2, 13)
        assert len(read_topic(topics.data)) == 2
        # Interrupted (Ctrl-C) after two transactions: the cursor keeps where it stopped.
        stop = asyncio.Event()

        class StopAfterTwo(Progress):
            def __call__(self, stats: BackfillStats) -> None:
                super().__call__(stats)
                if stats.transactions >= 2:
                    stop.set()

        cut = await backfill(
            settings,
            STREAM,
            window,
            rest=lambda s, g: history,
            stop=stop,
            progress=StopAfterTwo(Sink()),  # type: ignore[arg-type]
        )
        assert cut.outcome == "stopped before the end" and 0 < cut.written < 13
        served = len(history.served)
        sink = Sink()
        done = await backfill(
            settings,
            STREAM,
            window,
            rest=lambda s, g: history,
            progress=Progress(sink),  # type: ignore[arg-type]
        )
        assert history.served[served] is not None  # resumed after the last committed page
        assert cut.written + done.written == 13 and done.outcome == "filled"
        assert sink.lines and f"written {done.written}" in sink.lines[-1]
        again = await backfill(settings, STREAM, window, rest=lambda s, g: history)
        assert (again.already_in_kafka, again.written) == (15, 0)

    asyncio.run(scenario())
    assert sorted(_ids(read_topic(topics.data))) == sorted(f"e{n}" for n in range(15))
    # A manual window writes no follow-up: only the stream's gap record is there.
    assert _statuses(read_topic(topics.gaps)) == [OPEN]
    # `state show` lists the stream's gap as still open, queued in the backfill cursor.
    shown = show(settings).splitlines()
    gap_lines = [line for line in shown if line.startswith(STREAM) and "token_refused" in line]
    assert len(gap_lines) == 1 and gap_lines[0].endswith("filling: 0 written"), shown
    assert not [line for line in shown if line.startswith(f"{STREAM}/backfill")]
