"""`polybridge backfill STREAM --from T --to T [--dry-run]`: fill a window on demand.

Runs the stream's backfill under its own transactional id (`<app_id>.<stream id>.backfill`):
a running bridge's backfill task for the stream is fenced first (it starts again at the
stream's next gap or restart, and resumes what this command left in the cursor). The window
goes first in the stream's backfill cursor, so a command interrupted (Ctrl-C, a crash) leaves
a cursor the bridge resumes from, without loss or duplicates. `--dry-run` fetches and
compares only: nothing is written and nothing is fenced.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import socket
import sys
from dataclasses import dataclass
from typing import TextIO

from bridge.backfill.history import Unfillable, Window, window_of
from bridge.backfill.kafka import KafkaBackfillIO
from bridge.backfill.known import Known, NaturalKey, natural_key_of
from bridge.backfill.rest_clients import RestClients
from bridge.backfill.streams import BackfillStream, RestHistories, history_for
from bridge.backfill.task import BackfillStats, BackfillTask, HistoryFor
from bridge.backfill.wiring import decoder_of
from bridge.config import Settings, load_settings, parse_time
from bridge.eos.contract import SideTopics
from bridge.eos.positions import PositionStore
from bridge.errors import ConfigError
from bridge.records import Gap
from bridge.serde.avro import Serializer, WireFormat
from bridge.serde.registry import wire_format_of
from bridge.streams.catalogue import configured
from bridge.timeutil import now_us

MANUAL_REASON = "manual"
"""The reason of a window asked with `polybridge backfill` (no gap record to close)."""


def backfill_stream(settings: Settings, wire_format: WireFormat, stream_id: str) -> BackfillStream:
    """The configured stream `stream_id` as the backfill sees it; `ConfigError` if unknown."""
    stream = configured(settings, stream_id, "backfill")
    prefix = wire_format.prefix(stream.schema, stream.topic)
    return BackfillStream.of(stream, prefix, settings.backfill)


def side_topics(settings: Settings, wire_format: WireFormat) -> SideTopics:
    kafka = settings.kafka
    state, dlq, gaps = (
        kafka.topic(kafka.state_topic),
        kafka.topic(kafka.dlq_topic),
        kafka.topic(kafka.gaps_topic),
    )

    def ser(schema: str, topic: str) -> Serializer:
        return Serializer(schema, wire_format.prefix(schema, topic))

    return SideTopics(
        state,
        dlq,
        gaps,
        ser("polybridge.State", state),
        ser("polybridge.DeadLetter", dlq),
        ser("polybridge.Gap", gaps),
    )


@dataclass(frozen=True, slots=True)
class Summary:
    fetched: int
    already_in_kafka: int
    written: int
    dead_letters: int
    outcome: str

    @classmethod
    def of(cls, stats: BackfillStats, outcome: str) -> Summary:
        return cls(
            stats.fetched, stats.already_in_kafka, stats.written, stats.dead_letters, outcome
        )

    def line(self, stream_id: str, dry_run: bool) -> str:
        verb = "would write" if dry_run else "written"
        return (
            f"{stream_id}: fetched {self.fetched}, already in Kafka {self.already_in_kafka}, "
            f"{verb} {self.written}, dead letters {self.dead_letters}; {self.outcome}"
        )


class Progress:
    """One self-overwriting progress line on stderr (a plain line per update when stderr
    is not a terminal)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()

    def __call__(self, stats: BackfillStats) -> None:
        text = (
            f"backfill: fetched {stats.fetched}  already in Kafka {stats.already_in_kafka}  "
            f"written {stats.written}  dead letters {stats.dead_letters}  "
            f"transactions {stats.transactions}"
        )
        self.out.write(("\r" + text) if self.tty else text + "\n")
        self.out.flush()

    def end(self) -> None:
        if self.tty:
            self.out.write("\n")


async def backfill(
    settings: Settings,
    stream_id: str,
    window: Window,
    *,
    dry_run: bool = False,
    rest: RestHistories | None = None,
    stop: asyncio.Event | None = None,
    progress: Progress | None = None,
) -> Summary:
    """Fill `window` of `stream_id` (or, dry run, say what would be written)."""
    wire_format = wire_format_of(settings)
    stream = backfill_stream(settings, wire_format, stream_id)
    own: RestClients | None = None
    if rest is None:
        from bridge.sources.upstreams import predexon_key, token_provider

        rest = own = RestClients(
            settings,
            lambda: token_provider(settings.dropcopy.auth),
            lambda: predexon_key(settings.predexon),
        )
    side = side_topics(settings, wire_format)
    kafka = settings.kafka.librdkafka()
    positions = PositionStore(kafka, side.state)
    decoder = decoder_of(wire_format)
    io = KafkaBackfillIO(
        kafka,
        app_id=settings.app_id,
        stream_id=stream_id,
        positions=positions,
        gaps_topic=side.gaps,
        decoder=decoder,
        transaction_timeout_ms=settings.kafka.transaction_timeout_ms,
    )
    natural = natural_key_of(stream.upstream, stream.kind, decoder)
    gap = Gap(
        window.from_us,
        window.to_us,
        MANUAL_REASON,
        stream.kind,
        json.dumps(dict(stream.filters), sort_keys=True),
        now_us(),
        follow_up=False,
    )
    resolve = history_for(stream, rest)
    stop = stop or asyncio.Event()
    stats = BackfillStats()
    try:
        if dry_run:
            return await _dry_run(stream, gap, io, resolve, natural, stats, stop, progress)
        task = BackfillTask(
            stream_id=stream_id,
            upstream=stream.upstream,
            topic=stream.topic,
            history_for=resolve,
            io=io,
            side=side,
            instance_id=f"polybridge-backfill@{socket.gethostname()}",
            max_records_per_transaction=settings.backfill.max_records_per_transaction,
            stats=stats,
            on_progress=progress,
            natural=natural,
        )
        await task.fill(gap, stop)
        closed = ", ".join(stats.gaps_closed) or "stopped before the end"
        return Summary.of(stats, closed)
    finally:
        positions.close()
        if own is not None:
            await own.aclose()
        if progress is not None:
            progress.end()


async def _dry_run(
    stream: BackfillStream,
    gap: Gap,
    io: KafkaBackfillIO,
    resolve: HistoryFor,
    natural: NaturalKey | None,
    stats: BackfillStats,
    stop: asyncio.Event,
    progress: Progress | None,
) -> Summary:
    window = window_of(gap)
    assert window is not None
    try:
        history = resolve(gap)
    except Unfillable as exc:
        return Summary(0, 0, 0, 0, f"unfillable: {exc}")
    found = await asyncio.to_thread(io.known_records, stream.topic, window.from_us)
    known = Known(found, natural)
    outcome = "filled"
    try:
        async for page in history.pages(window, None):
            for record in page.records:
                stats.fetched += 1
                if known.holds(record):
                    stats.already_in_kafka += 1
                else:
                    stats.written += 1
            stats.dead_letters += len(page.dead_letters)
            if progress is not None:
                progress(stats)
            if stop.is_set():
                outcome = "stopped before the end"
                break
    except Unfillable as exc:
        outcome = f"partially_filled: {exc}" if stats.fetched else f"unfillable: {exc}"
    if stats.dead_letters and outcome == "filled":
        outcome = "partially_filled"
    return Summary.of(stats, outcome)


def _micros(text: str, option: str) -> int:
    try:
        return int(parse_time(text).timestamp() * 1_000_000)
    except ValueError as exc:
        raise ConfigError(f"backfill {option}: {exc}") from None


class BackfillCommand:
    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("stream", help="stream id, e.g. dropcopy.executions")
        parser.add_argument("--from", dest="from_time", required=True, help="ISO-8601 start")
        parser.add_argument("--to", dest="to_time", required=True, help="ISO-8601 end")
        parser.add_argument(
            "--dry-run", action="store_true", help="fetch and compare only; write nothing"
        )
        parser.add_argument("--config", help="TOML configuration file")

    def run(self, args: argparse.Namespace) -> int:
        settings = load_settings(args.config)
        window = Window(_micros(args.from_time, "--from"), _micros(args.to_time, "--to"))
        if window.to_us < window.from_us:
            raise ConfigError("backfill: --to is before --from")
        return asyncio.run(self._run(settings, args.stream, window, args.dry_run))

    async def _run(self, settings: Settings, stream_id: str, window: Window, dry: bool) -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, stop.set)
        summary = await backfill(
            settings,
            stream_id,
            window,
            dry_run=dry,
            stop=stop,
            progress=Progress(sys.stderr),
        )
        print(summary.line(stream_id, dry))
        return 0


def command(path: tuple[str, ...]) -> BackfillCommand:
    return BackfillCommand()
