"""The bridge as a real process beside a Predexon simulator, for end-to-end and fault tests.

`write_setup()` writes a bridge configuration for a running `SimulatorThread` (API key in
a file, URL with `{api_key}`, one `[[predexon.subscriptions]]` table per `Sub`); the
returned `PredexonSetup` reads the Predexon topics and the gaps topic back (read_committed,
through the independent reader in `tests/kafka_fixture.py`) and decodes them with the
`.avsc` files via `bridge.serde.avro`. `expected_rows()` turns what the simulator wrote to
a stream's subscriptions (`sim.sent(...)`) into the (key, event_id) rows the bridge must
write; `uncovered_misses()` checks ground truth against Kafka and the gap records, and
`wait_covered()` waits for it to find nothing (or says what it found).
The process itself is `tests.bridge_harness.BridgeProcess` (it only needs `config_path`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

from bridge.mapping.predexon import PredexonMapper
from bridge.mapping.predexon_channels import CHANNELS
from bridge.mapping.predexon_json import dumps, loads
from bridge.records import EVENT_ID_HEADER, STREAM_HEADER
from bridge.serde.avro import Serializer, SingleObjectFormat
from bridge.sim.predexon import SimSubscription, SimulatorThread
from bridge.verify import Comparison, Row, compare
from tests import kafka_fixture
from tests.bridge_harness import (
    BridgeProcess,
    TopicFollower,
    decoded_gaps,
    wait_followed_then_fresh,
    wait_until,
)

log = logging.getLogger(__name__)

__all__ = ["BridgeProcess", "PredexonSetup", "Sub", "wait_until", "write_setup"]

PRO_KEY = "sim-pro-key"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

GAP_SLACK_US = 200_000
"""How far before a gap's `from_time` a missed event may have been generated and still
count as covered, at least. A gap starts at the bridge's last live evidence (the sending of
a ping whose pong came back), which rests on the server writing a pong after the events it
had already queued (as a server writing both to one socket buffer does). The simulator
keeps its own event queue per connection, and the websockets library answers pings ahead
of it: an event can wait there while a later ping is answered, and is lost if the
connection drops. So the slack is this, or the longest such wait the simulator was seen
to impose in the run (`queue_wait_us`), whichever is longer: on loopback a few ms, on a
loaded 2-core machine (the simulator thread shares the GIL with the test) hundreds."""


@dataclass(frozen=True)
class Sub:
    """One configured subscription: stream id `predexon.<name>`."""

    name: str
    channel: str
    filters: dict[str, Any]

    @property
    def stream_id(self) -> str:
        return f"predexon.{self.name}"


@dataclass(frozen=True)
class Gap:
    """One decoded `polybridge.Gap` record (times in microseconds)."""

    stream_id: str
    channel: str
    filters: str
    from_us: int | None
    to_us: int
    reason: str

    def covers(self, at_us: int, slack_us: int = GAP_SLACK_US) -> bool:
        return self.from_us is not None and self.from_us - slack_us <= at_us <= self.to_us


@dataclass
class PredexonSetup:
    """A bridge configuration against one simulator and one Kafka, with unique names."""

    config_path: Path
    bootstrap: str
    prefix: str
    subs: Sequence[Sub]
    _format: SingleObjectFormat = field(default_factory=SingleObjectFormat)
    _followers: dict[str, TopicFollower] = field(default_factory=dict, repr=False)
    _rows_of: dict[tuple[int, str, str | None, str | None], list[Row]] = field(
        default_factory=dict, repr=False
    )

    # -- names ----------------------------------------------------------------------
    def topic(self, sub: Sub) -> str:
        return self.prefix + CHANNELS[sub.channel].topic

    @property
    def gaps_topic(self) -> str:
        return self.prefix + "polybridge.gaps"

    def mapper(self, sub: Sub) -> PredexonMapper:
        """The mapper the bridge uses for `sub` (same topic, prefix and filters)."""
        topic = self.topic(sub)
        prefix = self._format.prefix(CHANNELS[sub.channel].schema, topic)
        return PredexonMapper(sub.channel, sub.stream_id, topic, prefix, dumps(sub.filters))

    # -- reading Kafka --------------------------------------------------------------
    def _records(self, topic: str, stream_id: str, fresh: bool) -> list[kafka_fixture.Row]:
        """The stream's committed records in `topic` (header `polybridge.stream`): read
        afresh, or (`fresh=False`, for polls) followed: only what was committed since the
        last such read is fetched (`TopicFollower`)."""
        wanted = stream_id.encode()
        if fresh:
            rows = kafka_fixture.read_all(self.bootstrap, topic)
        else:
            kafka = {"bootstrap.servers": self.bootstrap}
            follower = self._followers.setdefault(topic, TopicFollower(kafka, topic))
            rows = [(r.key, r.value, r.headers, r.partition, r.offset) for r in follower.read()]
        return [row for row in rows if dict(row[2]).get(STREAM_HEADER) == wanted]

    def records(self, sub: Sub) -> list[kafka_fixture.Row]:
        """The stream's committed records in its topic: (key, value, headers, partition,
        offset)."""
        return self._records(self.topic(sub), sub.stream_id, fresh=True)

    def rows(self, sub: Sub, fresh: bool = False) -> list[Row]:
        """(key, event_id header) of the stream's records, in partition then offset order;
        followed unless `fresh` (a record seen once stays seen: fine for progress, for
        duplicates and for what may not be there; a verdict on what is there reads afresh)."""
        return [
            (key, (dict(headers).get(EVENT_ID_HEADER) or b"").decode())
            for key, _, headers, _, _ in self._records(self.topic(sub), sub.stream_id, fresh)
        ]

    def decoded(self, sub: Sub) -> list[dict[str, Any]]:
        """The stream's record values, decoded with the channel's `.avsc`."""
        serializer = self.mapper(sub).serializer
        return [
            serializer.decode(value)
            for _, value, _, _, _ in self._records(self.topic(sub), sub.stream_id, fresh=True)
            if value is not None
        ]

    def gaps(self, sub: Sub, fresh: bool = False) -> list[Gap]:
        """The stream's gap records, decoded as `polybridge.Gap`, in commit order."""
        return [
            self._gap(value)
            for _, value, _, _, _ in self._records(self.gaps_topic, sub.stream_id, fresh)
        ]

    def gap_values(self) -> list[dict[str, Any]]:
        """Every record of the gaps topic, decoded whole (open gaps and their follow-ups)."""
        return decoded_gaps({"bootstrap.servers": self.bootstrap}, self.prefix)

    @cached_property
    def _gap_serializer(self) -> Serializer:
        return Serializer("polybridge.Gap", self._format.prefix("polybridge.Gap", self.gaps_topic))

    def _gap(self, value: bytes | None) -> Gap:
        gap = self._gap_serializer.decode(value or b"")
        return Gap(
            gap["stream_id"],
            gap["channel"],
            gap["filters"],
            _us(gap["from_time"]),
            _us(gap["to_time"]) or 0,
            gap["reason"],
        )

    # -- comparing with the simulator -----------------------------------------------
    def sim_subscriptions(self, sim: SimulatorThread, sub: Sub) -> list[SimSubscription]:
        """Every simulator subscription the bridge opened for `sub` (one per (re)subscribe)."""
        return [
            s
            for s in sim.call(sim.sim.subscriptions)
            if s.channel == sub.channel and s.filters == sub.filters
        ]

    def expected_rows(self, sim: SimulatorThread, sub: Sub) -> list[Row]:
        """(key, event_id) of every event the simulator wrote to `sub`'s subscriptions, in
        send order, each event once (the simulator's duplicate knob sends some twice)."""
        seen: set[str] = set()
        rows: list[Row] = []
        for sim_sub in self.sim_subscriptions(sim, sub):
            sent = sim.call(sim.sim.sent, sim_sub.id)
            for event, row in zip(
                sent, self._mapped(sim, sub, sent, sim_sub.id, sim_sub.id), strict=True
            ):
                if event.status == "sent" and row[1] not in seen:
                    seen.add(row[1])
                    rows.append(row)
        return rows

    def _mapped(
        self,
        sim: SimulatorThread,
        sub: Sub,
        events: Sequence[Any],
        sent_on: str | None,
        subscription: str | None,
    ) -> list[Row]:
        """(key, event_id) of each of `events` as the bridge maps it under `subscription`:
        the simulator's ground truth (`sent_on` None) or what it sent on subscription
        `sent_on`. Both lists only grow, so each event is mapped once and remembered by its
        position: polls used to map every event again each time (an Avro encoding each)."""
        cache = (id(sim), sub.stream_id, sent_on, subscription)
        known = self._rows_of.setdefault(cache, [])
        if len(events) < len(known):  # not the list it was: start again
            known.clear()
        mapper = self.mapper(sub)
        for event in events[len(known) :]:
            data = event["data"] if sent_on is None else event.data
            record = mapper.map_event(_as_received(data), 0, subscription)
            known.append((record.key, record.event_id))
        return known

    def compare(self, sim: SimulatorThread, sub: Sub, fresh: bool = True) -> Comparison:
        return compare(sub.stream_id, self.expected_rows(sim, sub), self.rows(sub, fresh))

    def wait_equal(self, sim: SimulatorThread, sub: Sub, timeout: float) -> None:
        """Wait until Kafka holds exactly what the simulator sent to `sub`; on timeout the
        error says what differs."""
        try:
            wait_followed_then_fresh(
                lambda fresh: self.compare(sim, sub, fresh).equal, timeout, sub.stream_id, 0.3
            )
        except AssertionError as exc:
            subscriptions = len(self.sim_subscriptions(sim, sub))
            gaps = [(g.reason, g.to_us - g.from_us) for g in self.gaps(sub)]
            raise AssertionError(
                f"{exc}: {self.compare(sim, sub).summary()}; simulator subscriptions: "
                f"{subscriptions}; gaps (reason, us): {gaps}"
            ) from None

    def uncovered_misses(
        self,
        sim: SimulatorThread,
        sub: Sub,
        end_us: int,
        gaps: Sequence[Gap] | None = None,
        fresh: bool = True,
    ) -> tuple[list[dict[str, Any]], int, int]:
        """Ground-truth events of `sub`, generated between the first event in Kafka and
        `end_us`, that are neither in Kafka nor inside a gap window (with the slack of
        `GAP_SLACK_US`). Also returns how many were checked and how many were missed
        (inside gaps). Kafka read afresh, unless `fresh=False` (a poll)."""
        gaps = self.gaps(sub, fresh) if gaps is None else gaps
        in_kafka = {event_id for _, event_id in self.rows(sub, fresh)}
        truth = self._truth(sim, sub)
        first = min((at for i, (at, _) in truth.items() if i in in_kafka), default=end_us)
        outside, checked, missed = [], 0, 0
        for event_id, (at, event) in truth.items():
            if not first <= at <= end_us:
                continue
            checked += 1
            if event_id in in_kafka:
                continue
            missed += 1
            if not any(g.covers(at) for g in gaps):
                outside.append((at, event))
        if not outside:
            return [], checked, missed
        # Rare, so only now: the simulator's queue wait (it maps every sent event).
        slack = max(GAP_SLACK_US, self.queue_wait_us(sim, sub, truth))
        uncovered = [e for at, e in outside if not any(g.covers(at, slack) for g in gaps)]
        return uncovered, checked, missed

    def _truth(self, sim: SimulatorThread, sub: Sub) -> dict[str, tuple[int, dict[str, Any]]]:
        """event id -> (generated at, in us; the ground-truth entry), in generation order."""
        truth = sim.call(sim.sim.ground_truth, sub.channel, sub.filters)
        rows = self._mapped(sim, sub, truth, None, None)
        return {
            event_id: (int(e["generated_at"] * 1e6), e)
            for (_, event_id), e in zip(rows, truth, strict=True)
        }

    def queue_wait_us(
        self,
        sim: SimulatorThread,
        sub: Sub,
        truth: dict[str, tuple[int, dict[str, Any]]] | None = None,
    ) -> int:
        """The longest an event of `sub` waited in the simulator's queue between being
        generated and written to the socket (see `GAP_SLACK_US`)."""
        truth = self._truth(sim, sub) if truth is None else truth
        waits = []
        for sim_sub in self.sim_subscriptions(sim, sub):
            sent = sim.call(sim.sim.sent, sim_sub.id)
            for event, (_, event_id) in zip(
                sent, self._mapped(sim, sub, sent, sim_sub.id, None), strict=True
            ):
                if event.status == "sent" and event_id in truth:
                    waits.append(int(event.at * 1e6) - truth[event_id][0])
        return max(waits, default=0)

    def wait_covered(
        self, sim: SimulatorThread, sub: Sub, end_us: int, timeout: float
    ) -> tuple[int, int]:
        """Wait until `uncovered_misses()` finds none (polling the followed topics, then
        the verdict on Kafka read afresh); returns (checked, missed). On timeout the error
        lists the uncovered events with what the simulator did with each, and the gaps,
        times in ms before `end_us`."""
        result: list[tuple[list[dict[str, Any]], int, int]] = []

        def covered(fresh: bool) -> bool:
            result[:] = [self.uncovered_misses(sim, sub, end_us, fresh=fresh)]
            return not result[0][0]

        try:
            wait_followed_then_fresh(
                covered, timeout, f"{sub.stream_id}: every event in Kafka or a gap", 0.5
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {self._explain(sim, sub, end_us)}") from None
        _, checked, missed = result[0]
        return checked, missed

    def _explain(self, sim: SimulatorThread, sub: Sub, end_us: int) -> str:
        def ms(at_us: int | None) -> str:
            return "?" if at_us is None else f"-{(end_us - at_us) / 1000:.0f}ms"

        mapper = self.mapper(sub)
        fates: dict[str, list[str]] = {}
        for sim_sub in self.sim_subscriptions(sim, sub):
            for sent in sim.call(sim.sim.sent, sim_sub.id):
                fates.setdefault(_event_id(mapper, sent.data), []).append(
                    f"{sim_sub.id} {sent.status} {ms(int(sent.at * 1e6))}"
                )
        uncovered, checked, missed = self.uncovered_misses(sim, sub, end_us)
        lines = [
            f"generated {ms(int(e['generated_at'] * 1e6))}: "
            + (", ".join(fates.get(_event_id(mapper, e["data"]), [])) or "sent to no subscription")
            for e in uncovered[:5]
        ]
        gaps = [f"{g.reason} {ms(g.from_us)}..{ms(g.to_us)}" for g in self.gaps(sub)]
        return (
            f"{len(uncovered)} uncovered of {missed} missed, {checked} checked, slack "
            f"{max(GAP_SLACK_US, self.queue_wait_us(sim, sub)) / 1000:.0f}ms; "
            f"first uncovered: {lines}; gaps: {gaps}; "
            f"simulator subscriptions: {len(self.sim_subscriptions(sim, sub))}"
        )


def write_setup(
    tmp_path: Path,
    bootstrap: str,
    sim: SimulatorThread,
    prefix: str,
    subs: Iterable[Sub],
    *,
    key: str = PRO_KEY,
    plan: str = "pro",
    pipeline: str = "",
    hostport: str | None = None,
) -> PredexonSetup:
    """Write `bridge.toml` (and the key file) for `subs` against the running simulator,
    or reaching it through `hostport` (a proxy)."""
    subs = list(subs)
    config = tmp_path / "bridge.toml"
    config.write_text(
        f'app_id = "{prefix}app"\n'
        f'[kafka]\nbootstrap_servers = "{bootstrap}"\ntopic_prefix = "{prefix}"\npartitions = 3\n'
        f"[pipeline]\n{pipeline}\n"
        + predexon_section(tmp_path, sim, subs, key=key, plan=plan, hostport=hostport)
    )
    return PredexonSetup(config, bootstrap, prefix, subs)


def predexon_section(
    tmp_path: Path,
    sim: SimulatorThread,
    subs: Iterable[Sub],
    *,
    key: str = PRO_KEY,
    plan: str = "pro",
    hostport: str | None = None,
) -> str:
    """The `[predexon]` section for `subs` (and its key file in `tmp_path`)."""
    key_file = tmp_path / "predexon.key"
    key_file.write_text(key + "\n")
    hostport = hostport or f"{sim.sim.config.host}:{sim.sim.port}"
    tables = "".join(
        f'[[predexon.subscriptions]]\nname = "{s.name}"\nchannel = "{s.channel}"\n'
        f"filters = {_toml_inline(s.filters)}\n"
        for s in subs
    )
    return (
        f'[predexon]\nurl = "ws://{hostport}/v1/{{api_key}}"\napi_key_file = "{key_file}"\n'
        f'plan = "{plan}"\n\n{tables}'
    )


def _toml_inline(filters: dict[str, Any]) -> str:
    """Filters as a TOML inline table (JSON strings and arrays are valid TOML values)."""
    return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in filters.items()) + " }"


def _event_id(mapper: PredexonMapper, data: dict[str, Any]) -> str:
    return mapper.map_event(_as_received(data), 0, None).event_id


def _as_received(data: dict[str, Any]) -> Any:
    """An event as the bridge parses it: the simulator holds `Decimal`s, the wire has text."""
    return loads(dumps(data, sort_keys=False))


def _us(value: Any) -> int | None:
    """fastavro decodes timestamp-micros as an aware datetime; back to microseconds."""
    if value is None:
        return None
    if isinstance(value, int):
        return value
    return (value - _EPOCH) // timedelta(microseconds=1)
