"""`polybridge state show | reset`: inspect and rewind stream positions safely.

`reset` writes the new position in a transaction under the stream's own transactional id,
so a bridge still running that stream is fenced first and stops (the safety idea of
Kafka's KIP-875 offset reset): nobody overwrites a position a live owner keeps moving.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt

from bridge.backfill.cursor import GapRecord, cursor_key, cursor_of, gap_record, still_open
from bridge.backfill.wiring import decoder_of
from bridge.cluster.membership import current_owners
from bridge.config import Settings, load_settings, parse_time
from bridge.eos.positions import PositionStore
from bridge.errors import BridgeError, ConfigError
from bridge.event_times import EARLIEST_US, is_plausible
from bridge.kafka.readback import read_topic
from bridge.kafka.state import StateEntry, encode_state, write_state
from bridge.records import Position
from bridge.serde.avro import Serializer
from bridge.serde.registry import wire_format_of
from bridge.streams.catalogue import catalogue, configured
from bridge.timeutil import now_us

RESET_OWNER = "polybridge-state-reset"
BACKFILL_SUFFIX = "/backfill"


def _when(micros: int | None) -> str:
    if micros is None:
        return "-"
    try:
        moment = dt.datetime.fromtimestamp(micros / 1e6, tz=dt.UTC)
    except (OverflowError, ValueError, OSError):
        return f"{micros}us"  # no date holds it (a record of an older version): as stored
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _state_topic(settings: Settings) -> str:
    return settings.kafka.topic(settings.kafka.state_topic)


def show(settings: Settings) -> str:
    """Every stream's committed position, who committed it, and (with `[cluster]`) which
    instance of the stream group runs it now."""
    kafka = settings.kafka.librdkafka()
    store = PositionStore(kafka, _state_topic(settings))
    try:
        # A look, not a start: committed positions up to the last stable offset, without
        # waiting for a transaction still open (e.g. a crashed bridge's, until it is fenced).
        entries = store.refresh(complete=False)
        problems = store.problems()
    finally:
        store.close()
    running: dict[str, str] = {}
    if settings.cluster.enabled:
        topic = settings.kafka.topic(settings.cluster.topic)
        running = current_owners(kafka, settings.app_id, topic, list(catalogue(settings)))
    header = (
        f"{'stream':32} {'upstream':9} {'event time':25} {'live time':25} {'committed':25} "
        f"{'token':10} {'committed by':32} running on"
    )
    lines = [header]
    streams = {k for k in entries if not k.endswith(BACKFILL_SUFFIX)} | set(running)
    for stream_id in sorted(streams):
        lines.append(_line(stream_id, entries.get(stream_id), running.get(stream_id, "-")))
    if len(lines) == 1:
        lines.append("(no stored positions)")
    # A record that cannot be used stops its stream: say so here too, with the fix.
    lines += ["", "unusable state records:", *problems.values()] if problems else []
    return "\n".join(lines + open_gap_lines(settings, entries))


def open_gap_lines(settings: Settings, entries: dict[str, StateEntry]) -> list[str]:
    """The gaps not closed yet (no follow-up on the gaps topic), per stream, and where a
    backfill of each stands."""
    kafka = settings.kafka.librdkafka()
    fmt = wire_format_of(settings)
    decoder = decoder_of(fmt)
    by_stream: dict[str, list[GapRecord]] = {}
    for found in read_topic(kafka, settings.kafka.topic(settings.kafka.gaps_topic)):
        if found.key is None or found.value is None:
            continue
        try:
            record = gap_record(decoder.decode(found.value).datum)
        except (BridgeError, KeyError, TypeError):
            continue
        by_stream.setdefault(found.key.decode(), []).append(record)
    lines = ["", f"{'open gaps':32} {'from':25} {'to':25} {'reason':26} backfill"]
    for stream_id in sorted(
        set(by_stream)
        | {k[: -len(BACKFILL_SUFFIX)] for k in entries if k.endswith(BACKFILL_SUFFIX)}
    ):
        cursor = cursor_of(entries.get(cursor_key(stream_id)))
        gaps = list(cursor.gaps)
        known = {g.identity for g in gaps}
        gaps += [g for g in still_open(by_stream.get(stream_id, [])) if g.identity not in known]
        for index, gap in enumerate(gaps):
            if gap.identity in known and index == 0:
                where = f"filling: {cursor.records} written"
            elif gap.identity in known:
                where = "queued"
            else:
                where = "not started"
            lines.append(
                f"{stream_id:32} {_when(gap.from_us):25} {_when(gap.to_us):25} "
                f"{gap.reason:26} {where}"
            )
    if len(lines) == 2:
        lines.append("(none)")
    return lines


def _line(stream_id: str, entry: StateEntry | None, running_on: str) -> str:
    if entry is None:
        return f"{stream_id:32} {'-':9} {'-':25} {'-':25} {'-':25} {'-':10} {'-':32} {running_on}"
    position = entry.position
    token = f"{len(position.resume_token)} bytes" if position.resume_token else "-"
    return (
        f"{stream_id:32} {entry.upstream:9} {_when(position.event_time_us):25} "
        f"{_when(position.live_time_us):25} {_when(entry.committed_at_us):25} {token:10} "
        f"{entry.owner or '-':32} {running_on}"
    )


async def reset(settings: Settings, stream_id: str, to_time: str | None) -> str:
    """Rewind `stream_id` to a time (replayed from there minus the resume margin), or clear
    it (the next start follows the stream's configured `start`)."""
    stream = configured(settings, stream_id, "state reset")
    topic = _state_topic(settings)
    value = None
    if to_time is not None:
        try:
            moment = parse_time(to_time)
        except ValueError as exc:
            raise ConfigError(f"state reset --to-time: {exc}") from None
        # No upstream has events before 2000: an earlier time replays the same, and a
        # position holds only plausible times (`bridge.event_times`).
        micros = max(int(moment.timestamp() * 1_000_000), EARLIEST_US)
        if not is_plausible(micros, now_us()):
            raise ConfigError(
                f"state reset --to-time {to_time}: more than a day after the bridge's clock"
            )
        # The bridge's own framing: Confluent with a Schema Registry, else single-object.
        fmt = wire_format_of(settings)
        serializer = Serializer("polybridge.State", fmt.prefix("polybridge.State", topic))
        position = Position(event_time_us=micros, live_time_us=micros)
        value = encode_state(
            stream_id, stream.upstream, position, RESET_OWNER, now_us(), serializer
        )
    await write_state(settings.kafka.librdkafka(), topic, stream.transactional_id, stream_id, value)
    return f"{stream_id}: " + (f"rewound to {to_time}" if to_time else "position cleared")


class StateCommand:
    def __init__(self, action: str) -> None:
        self.action = action

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--config", help="TOML configuration file")
        if self.action == "reset":
            parser.add_argument("stream", help="stream id, e.g. dropcopy.executions")
            parser.add_argument(
                "--to-time",
                help="ISO-8601 time to replay from; without it the position is cleared",
            )

    def run(self, args: argparse.Namespace) -> int:
        settings = load_settings(args.config)
        if self.action == "show":
            print(show(settings))
        else:
            print(asyncio.run(reset(settings, args.stream, args.to_time)))
        return 0


def command(path: tuple[str, ...]) -> StateCommand:
    return StateCommand(path[-1])
