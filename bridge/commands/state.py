"""`polybridge state show | reset`: inspect and rewind stream positions safely.

`reset` writes the new position in a transaction under the stream's own transactional id,
so a bridge still running that stream is fenced first and stops (the safety idea of
Kafka's KIP-875 offset reset): nobody overwrites a position a live owner keeps moving.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt

from bridge.cluster.membership import current_owners
from bridge.config import Settings, load_settings, parse_time
from bridge.eos.positions import PositionStore
from bridge.errors import ConfigError
from bridge.kafka.state import StateEntry, encode_state, write_state
from bridge.records import Position
from bridge.serde.avro import Serializer
from bridge.serde.registry import wire_format_of
from bridge.timeutil import now_us

RESET_OWNER = "polybridge-state-reset"


def _when(micros: int | None) -> str:
    if micros is None:
        return "-"
    moment = dt.datetime.fromtimestamp(micros / 1e6, tz=dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _state_topic(settings: Settings) -> str:
    return settings.kafka.topic(settings.kafka.state_topic)


def show(settings: Settings) -> str:
    """Every stream's committed position, who committed it, and (with `[cluster]`) which
    instance of the stream group runs it now."""
    kafka = settings.kafka.librdkafka()
    store = PositionStore(kafka, _state_topic(settings))
    try:
        entries = store.refresh()
    finally:
        store.close()
    running: dict[str, str] = {}
    if settings.cluster.enabled:
        topic = settings.kafka.topic(settings.cluster.topic)
        running = current_owners(kafka, settings.app_id, topic, settings.stream_ids())
    header = (
        f"{'stream':32} {'upstream':9} {'event time':25} {'live time':25} {'committed':25} "
        f"{'token':10} {'committed by':32} running on"
    )
    lines = [header]
    for stream_id in sorted(set(entries) | set(running)):
        lines.append(_line(stream_id, entries.get(stream_id), running.get(stream_id, "-")))
    if len(lines) == 1:
        lines.append("(no stored positions)")
    return "\n".join(lines)


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
    known = {f"dropcopy.{s.stream_name}": "dropcopy" for s in settings.dropcopy.streams}
    known |= {f"predexon.{s.name}": "predexon" for s in settings.predexon.subscriptions}
    if stream_id not in known:
        raise ConfigError(
            f"state reset: unknown stream {stream_id!r}; configured streams: "
            + (", ".join(sorted(known)) or "none")
        )
    topic = _state_topic(settings)
    value = None
    if to_time is not None:
        try:
            moment = parse_time(to_time)
        except ValueError as exc:
            raise ConfigError(f"state reset --to-time: {exc}") from None
        micros = int(moment.timestamp() * 1_000_000)
        # The bridge's own framing: Confluent with a Schema Registry, else single-object.
        fmt = wire_format_of(settings)
        serializer = Serializer("polybridge.State", fmt.prefix("polybridge.State", topic))
        position = Position(event_time_us=micros, live_time_us=micros)
        value = encode_state(
            stream_id, known[stream_id], position, RESET_OWNER, now_us(), serializer
        )
    await write_state(
        settings.kafka.librdkafka(), topic, f"{settings.app_id}.{stream_id}", stream_id, value
    )
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
