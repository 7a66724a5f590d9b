"""The bridge as a real process beside a Predexon simulator, for end-to-end and fault tests.

`write_setup()` writes a bridge configuration for a running `SimulatorThread` (API key in
a file, URL with `{api_key}`, one `[[predexon.subscriptions]]` table per `Sub`); the
returned `PredexonSetup` reads the Predexon topics and the gaps topic back (read_committed,
through the independent reader in `tests/kafka_fixture.py`) and decodes them with the
`.avsc` files via `bridge.serde.avro`. `expected_rows()` turns what the simulator wrote to
a stream's subscriptions (`sim.sent(...)`) into the (key, event_id) rows the bridge must
write; `coverage()` checks ground truth against Kafka and the gap records (from the first
event the simulator sent to the bridge on: loss at start-up counts too), `wait_covered()`
waits for it to find nothing uncovered, and `Coverage.assert_within(Bounds(...))` bounds each
gap by its cause, all gap time together and the share of events lost.
The process itself is `tests.bridge_harness.BridgeProcess` (it only needs `config_path`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

from bridge.mapping.predexon import PredexonMapper
from bridge.records import EVENT_ID_HEADER, STREAM_HEADER
from bridge.serde.avro import Serializer, SingleObjectFormat
from bridge.serde.exact_json import dumps, loads
from bridge.sim.predexon import SimSubscription, SimulatorThread
from bridge.streams.channels import CHANNELS
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

__all__ = [
    "Bounds",
    "BridgeProcess",
    "Coverage",
    "PredexonSetup",
    "Sub",
    "wait_until",
    "write_setup",
]

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
loaded 2-core machine (the simulator thread shares the GIL with the test) hundreds.
`Coverage.assert_within` bounds that wait too (`Bounds.queue_wait_s`): slack that grew
without limit would cover any loss."""

PING_INTERVAL_S = 1.0
"""The bridge's own ping period (`PredexonConnectionManager`): a gap starts at the last
ping whose pong came back, so at most this much before the connection was lost."""
PONG_DEADLINE_S = 10.0
"""How long the bridge waits for a pong before it declares the connection dead."""
LIVENESS_COMMIT_S = 1.0
"""The newest live time a stream commits is at most about this old (an idle batch every
second, `bridge.sources.predexon.source.LIVENESS_INTERVAL_S`): a restart's gap starts there."""
RECONNECT_S = 1.5
"""From a lost connection noticed to the new subscription acknowledged: the fast path's
jitter (< 0.1 s), a handshake and a subscribe round trip; measured 0.1-0.6 s beyond the ping
interval under a 3-worker test run."""
STALL_GAP_S = PING_INTERVAL_S + PONG_DEADLINE_S + RECONNECT_S
"""A connection that answers nothing: the last answered ping, the pong deadline, then a
reconnect."""
SLOW_CONSUMER_S = 6.0
"""A `slow_consumer` gap: a window between pings in which the bridge saw a backlog (the
bridge catching up after an outage, or a slow link), merged while the backlog lasts;
measured 0.1-4.5 s."""


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

    @property
    def seconds(self) -> float:
        """The gap's length (infinite when its start is unknown: nothing bounds it)."""
        return float("inf") if self.from_us is None else (self.to_us - self.from_us) / 1e6


RATE_JITTER = 0.15
"""How far the events in a stretch of time may exceed its share of the run's events: the
simulator draws its events at random instants (at 30 a second, ten seconds hold 300 give
or take 17)."""


@dataclass(frozen=True)
class Bounds:
    """What one test allows a stream's coverage to cost: see `Coverage.assert_within`."""

    gap_s: Mapping[str, float]
    """The longest gap allowed per reason, in seconds (what its cause allows); a reason
    not named here must not occur at all."""
    total_gap_s: float
    """All of the stream's gaps together, in seconds."""
    lost_share: float | None = None
    """The share of the events judged (`Coverage.checked`) that may be missing from Kafka;
    by default the share of the judged time that `total_gap_s` covers, plus
    `RATE_JITTER` (events arrive at random instants, not evenly)."""
    queue_wait_s: float = 1.0
    """The longest an event may have waited in the simulator's queue when that wait is
    needed as slack to cover a missed event (see `GAP_SLACK_US`)."""


@dataclass(frozen=True)
class Coverage:
    """One stream's events judged against the simulator's ground truth: every event
    generated from the first one the simulator sent (or tried to send) to any of the
    bridge's subscriptions up to `end_us`."""

    stream_id: str
    start_us: int
    end_us: int
    checked: int
    """Events generated in the judged window."""
    missed: int
    """Of those, the ones not in Kafka."""
    uncovered: list[tuple[int, dict[str, Any]]]
    """Missed events outside every gap (with the slack), as (generated at, truth entry)."""
    gaps: list[Gap]
    slack_us: int
    """The slack before a gap's start the check needed (`GAP_SLACK_US` unless more)."""

    @property
    def lost_share(self) -> float:
        return self.missed / self.checked if self.checked else 0.0

    @property
    def gap_s(self) -> float:
        return sum(g.seconds for g in self.gaps)

    def longest(self) -> dict[str, float]:
        """The longest gap per reason, in seconds."""
        longest: dict[str, float] = {}
        for gap in self.gaps:
            longest[gap.reason] = max(longest.get(gap.reason, 0.0), gap.seconds)
        return longest

    def summary(self) -> str:
        gaps = ", ".join(f"{g.reason} {g.seconds:.2f}s" for g in self.gaps) or "none"
        return (
            f"{self.stream_id}: {self.checked} events judged over "
            f"{(self.end_us - self.start_us) / 1e6:.1f} s, {self.missed} lost "
            f"({self.lost_share:.1%}), {len(self.uncovered)} outside every gap, gaps "
            f"{self.gap_s:.2f} s in all: {gaps}; slack {self.slack_us / 1000:.0f} ms"
        )

    def assert_within(self, bounds: Bounds) -> None:
        """Assert: something was judged; nothing missed outside a gap; each gap's reason
        allowed and its length within its bound; all gaps together and the share lost
        within theirs; the slack needed within `bounds.queue_wait_s`."""
        what = self.summary()
        assert self.checked > 0, f"nothing judged: {what}"
        assert not self.uncovered, f"missed outside every gap: {what}"
        assert self.slack_us <= max(GAP_SLACK_US, bounds.queue_wait_s * 1e6), (
            f"events covered only by a queue wait past {bounds.queue_wait_s} s: {what}"
        )
        for gap in self.gaps:
            limit = bounds.gap_s.get(gap.reason)
            assert limit is not None, f"a gap of reason {gap.reason!r} is not expected: {what}"
            assert gap.seconds <= limit, f"a {gap.reason} gap longer than {limit:.2f} s: {what}"
        assert self.gap_s <= bounds.total_gap_s, (
            f"gaps longer than {bounds.total_gap_s:.2f} s in all: {what}"
        )
        share = bounds.lost_share
        if share is None:
            window_s = (self.end_us - self.start_us) / 1e6
            share = min(1.0, (1 + RATE_JITTER) * bounds.total_gap_s / window_s)
        assert self.lost_share <= share, f"more than {share:.1%} of the events lost: {what}"


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

    def coverage(
        self,
        sim: SimulatorThread,
        sub: Sub,
        end_us: int,
        gaps: Sequence[Gap] | None = None,
        fresh: bool = True,
    ) -> Coverage:
        """`sub`'s ground-truth events from the first one the simulator sent (or tried to
        send) to any of the bridge's subscriptions up to `end_us`, against Kafka and the gap
        records (see `Coverage`). Starting there, not at the first event found in Kafka,
        judges what the bridge lost while it started. Kafka read afresh, unless
        `fresh=False` (a poll)."""
        gaps = self.gaps(sub, fresh) if gaps is None else list(gaps)
        in_kafka = {event_id for _, event_id in self.rows(sub, fresh)}
        truth = self._truth(sim, sub)
        offered = [
            truth[event_id][0]
            for sim_sub in self.sim_subscriptions(sim, sub)
            for _, event_id in self._mapped(
                sim, sub, sim.call(sim.sim.sent, sim_sub.id), sim_sub.id, None
            )
            if event_id in truth
        ]
        start_us = min(offered, default=end_us)
        outside, checked, missed = [], 0, 0
        for event_id, (at, event) in truth.items():
            if not start_us <= at <= end_us:
                continue
            checked += 1
            if event_id in in_kafka:
                continue
            missed += 1
            if not any(g.covers(at) for g in gaps):
                outside.append((at, event))
        needed = GAP_SLACK_US  # the slack the check rests on: bounded by the caller
        if outside:
            # Rare, so only now: the simulator's queue wait (it maps every sent event).
            slack = max(GAP_SLACK_US, self.queue_wait_us(sim, sub, truth))
            uncovered = []
            for at, event in outside:
                leads = [
                    g.from_us - at for g in gaps if g.from_us is not None and g.covers(at, slack)
                ]
                if leads:
                    needed = max(needed, min(leads))
                else:
                    uncovered.append((at, event))
            outside = uncovered
        return Coverage(sub.stream_id, start_us, end_us, checked, missed, outside, gaps, needed)

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

    def wait_covered(self, sim: SimulatorThread, sub: Sub, end_us: int, timeout: float) -> Coverage:
        """Wait until `coverage()` finds nothing outside a gap (polling the followed topics,
        then the verdict on Kafka read afresh); returns that coverage, for its bounds to be
        asserted. On timeout the error lists the uncovered events with what the simulator
        did with each, and the gaps, times in ms before `end_us`."""
        result: list[Coverage] = []

        def covered(fresh: bool) -> bool:
            result[:] = [self.coverage(sim, sub, end_us, fresh=fresh)]
            return not result[0].uncovered

        try:
            wait_followed_then_fresh(
                covered, timeout, f"{sub.stream_id}: every event in Kafka or a gap", 0.5
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {self._explain(sim, sub, end_us)}") from None
        return result[0]

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
        found = self.coverage(sim, sub, end_us)
        uncovered, checked, missed = found.uncovered, found.checked, found.missed
        lines = [
            f"generated {ms(at)}: "
            + (", ".join(fates.get(_event_id(mapper, e["data"]), [])) or "sent to no subscription")
            for at, e in uncovered[:5]
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
