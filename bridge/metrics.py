"""Prometheus metrics, read from the pipelines' own counters at scrape time.

Nothing here runs on the hot path: `BridgeCollector.collect()` reads each stream's
`PipelineStats`, its pipeline's `queue_depth` and its source's `status()` (the declared
`bridge.records.SourceStatus`) when /metrics is scraped, on the event loop that owns them
(see `bridge.health`), so every scrape sees one consistent snapshot. The registry is a
dedicated `CollectorRegistry`, never prometheus-client's global one, so two bridges in one
process (tests) do not collide and no default process collectors leak in.

Every per-stream metric has the label `stream` (the stream id, e.g. `dropcopy.executions`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from bridge.backfill.task import BackfillStats, lag_seconds
from bridge.cluster.runner import Handovers, StreamRunner
from bridge.eos.contract import PipelineStats
from bridge.eos.pipeline import Pipeline
from bridge.records import ConnectionPool, Source, SourceStatus

PREFIX = "polybridge_"

COMMIT_LATENCY_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Commit latency buckets, seconds: 1 ms (an idle local broker) to 10 s (a managed
cluster under stress; above that the transaction timeout is the better alarm)."""

# (exposed sample name, type, help). The single list the docs/operations.md table, the Grafana
# dashboard test and `BridgeCollector` agree on.
METRICS: tuple[tuple[str, str, str], ...] = (
    ("polybridge_up", "gauge", "1 while the stream's pipeline is running"),
    ("polybridge_records_total", "counter", "records committed to the stream's topic"),
    ("polybridge_bytes_total", "counter", "value bytes of the records committed"),
    ("polybridge_commits_total", "counter", "Kafka transactions committed"),
    ("polybridge_aborts_total", "counter", "Kafka transactions aborted (then resumed)"),
    (
        "polybridge_commit_latency_seconds",
        "histogram",
        "commit_transaction duration, seconds",
    ),
    (
        "polybridge_lag_seconds",
        "gauge",
        "end-to-end lag: now minus the newest committed event time, seconds",
    ),
    (
        "polybridge_last_commit_age_seconds",
        "gauge",
        "seconds since the stream's last commit",
    ),
    ("polybridge_reconnects_total", "counter", "upstream reconnects by reason"),
    ("polybridge_upstream_connected", "gauge", "1 while the upstream call is open"),
    (
        "polybridge_upstream_maintenance",
        "gauge",
        "1 while the exchange refuses the stream inside a maintenance window",
    ),
    ("polybridge_gaps_total", "counter", "gap records committed"),
    ("polybridge_dead_letters_total", "counter", "dead letters committed"),
    (
        "polybridge_fenced_total",
        "counter",
        "1 once the stream ended because another instance took it over (fenced)",
    ),
    ("polybridge_repeats_dropped_total", "counter", "upstream repeats dropped"),
    (
        "polybridge_unknown_fields_total",
        "counter",
        "records mapped that carry upstream fields this version does not know (DropCopy:"
        " protobuf fields kept as raw bytes; Predexon: JSON keys kept in extra)",
    ),
    ("polybridge_stream_owned", "gauge", "1 where this instance runs the stream, 0 on standbys"),
    (
        "polybridge_handovers_total",
        "counter",
        "times this instance took the stream over (acquired) or gave it up (released)",
    ),
    (
        "polybridge_handover_seconds",
        "gauge",
        "last hand-over on this instance: assignment to first commit (start), "
        "revocation to pipeline stopped (stop)",
    ),
    (
        "polybridge_queue_depth_batches",
        "gauge",
        "batches waiting between source and Kafka (when the pipeline exposes it)",
    ),
    ("polybridge_backfill_open_gaps", "gauge", "gaps the stream's backfill has not closed yet"),
    (
        "polybridge_backfill_lag_seconds",
        "gauge",
        "age of the oldest gap not closed yet, seconds (0: none)",
    ),
    ("polybridge_backfill_records_total", "counter", "records backfilled from REST history"),
    (
        "polybridge_backfill_gaps_closed_total",
        "counter",
        "gaps closed by the backfill, by status (filled, partially_filled, unfillable)",
    ),
    (
        "polybridge_backfill_rest_errors_total",
        "counter",
        "REST history calls that failed for good, by HTTP status (other: no status)",
    ),
    (
        "polybridge_predexon_connection_attempts_total",
        "counter",
        "Predexon WebSocket handshakes attempted, all connections",
    ),
)


@dataclass(frozen=True, slots=True)
class StreamView:
    """What the collector reads for one stream: the pipeline's stats, the pipeline (its
    queue depth) and the source (its `status()`); None where there is none."""

    stream_id: str
    stats: PipelineStats
    source: Source | None
    pipeline: Pipeline | None = None
    owned: bool = True
    """False on a standby: another instance of the stream group runs the stream."""
    handovers: Handovers | None = None
    backfill: BackfillStats | None = None
    """The stream's backfill counters (None: `[backfill]` is off)."""


@dataclass(slots=True)
class _Histogram:
    """Cumulative commit-latency histogram built from `PipelineStats.commit_seconds`.

    The pipeline keeps only its recent commit durations (a bounded list) and a total count;
    each scrape adds the durations of the commits made since the previous scrape. If more
    commits happened between two scrapes than the list holds, only the recent ones are
    observed (the count then trails `commits_total`; at default settings a stream commits
    at most ~20 times a second, the list holds 1,000, so scrapes up to ~50 s apart lose
    nothing)."""

    seen: int = 0
    counts: list[int] = field(default_factory=lambda: [0] * len(COMMIT_LATENCY_BUCKETS))
    count: int = 0
    total: float = 0.0

    def update(self, stats: PipelineStats) -> None:
        recent = list(stats.commit_seconds)
        new = stats.commits - self.seen
        self.seen = stats.commits
        if new <= 0:
            return
        for seconds in recent[-new:]:
            self.count += 1
            self.total += seconds
            for i, bound in enumerate(COMMIT_LATENCY_BUCKETS):
                if seconds <= bound:
                    self.counts[i] += 1

    def buckets(self) -> list[tuple[str, float]]:
        rows: list[tuple[str, float]] = [
            (_bound(b), float(n)) for b, n in zip(COMMIT_LATENCY_BUCKETS, self.counts, strict=True)
        ]
        rows.append(("+Inf", float(self.count)))
        return rows


def _bound(value: float) -> str:
    return repr(float(value))


class BridgeCollector(Collector):
    """A prometheus-client collector over the bridge's streams (see module docstring)."""

    def __init__(
        self,
        streams: Callable[[], Sequence[StreamView]],
        wall_clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._streams = streams
        self._wall_clock = wall_clock
        self._monotonic = monotonic
        self._histograms: dict[str, _Histogram] = {}

    def collect(self) -> Iterator[Metric]:
        views = list(self._streams())
        help_of = {name: text for name, _, text in METRICS}

        def family(kind: type[Any], name: str, labels: Sequence[str] = ("stream",)) -> Any:
            exposed = name + "_total" if kind is CounterMetricFamily else name
            return kind(name, help_of[exposed], labels=list(labels))

        up = family(GaugeMetricFamily, "polybridge_up")
        records = family(CounterMetricFamily, "polybridge_records")
        size = family(CounterMetricFamily, "polybridge_bytes")
        commits = family(CounterMetricFamily, "polybridge_commits")
        aborts = family(CounterMetricFamily, "polybridge_aborts")
        latency = family(HistogramMetricFamily, "polybridge_commit_latency_seconds")
        lag = family(GaugeMetricFamily, "polybridge_lag_seconds")
        age = family(GaugeMetricFamily, "polybridge_last_commit_age_seconds")
        reconnects = family(
            CounterMetricFamily, "polybridge_reconnects", labels=("stream", "reason")
        )
        connected = family(GaugeMetricFamily, "polybridge_upstream_connected")
        maintenance = family(GaugeMetricFamily, "polybridge_upstream_maintenance")
        gaps = family(CounterMetricFamily, "polybridge_gaps")
        dead = family(CounterMetricFamily, "polybridge_dead_letters")
        fenced = family(CounterMetricFamily, "polybridge_fenced")
        repeats = family(CounterMetricFamily, "polybridge_repeats_dropped")
        unknown = family(CounterMetricFamily, "polybridge_unknown_fields")
        depth = family(GaugeMetricFamily, "polybridge_queue_depth_batches")
        owned = family(GaugeMetricFamily, "polybridge_stream_owned")
        handovers = family(
            CounterMetricFamily, "polybridge_handovers", labels=("stream", "direction")
        )
        handover_s = family(
            GaugeMetricFamily, "polybridge_handover_seconds", labels=("stream", "phase")
        )
        attempts = family(CounterMetricFamily, "polybridge_predexon_connection_attempts", labels=())
        open_gaps = family(GaugeMetricFamily, "polybridge_backfill_open_gaps")
        backfill_lag = family(GaugeMetricFamily, "polybridge_backfill_lag_seconds")
        backfilled = family(CounterMetricFamily, "polybridge_backfill_records")
        gaps_closed = family(
            CounterMetricFamily, "polybridge_backfill_gaps_closed", labels=("stream", "status")
        )
        rest_errors = family(
            CounterMetricFamily, "polybridge_backfill_rest_errors", labels=("stream", "status")
        )

        now = self._wall_clock()
        mono = self._monotonic()
        pools: dict[int, ConnectionPool] = {}
        for view in views:
            s = view.stats
            label = [view.stream_id]
            up.add_metric(label, 1.0 if s.running else 0.0)
            owned.add_metric(label, 1.0 if view.owned else 0.0)
            if view.handovers is not None:
                moves = view.handovers
                handovers.add_metric([view.stream_id, "acquired"], moves.acquired)
                handovers.add_metric([view.stream_id, "released"], moves.released)
                for phase, seconds in (
                    ("start", moves.start_seconds),
                    ("stop", moves.stop_seconds),
                ):
                    if seconds is not None:
                        handover_s.add_metric([view.stream_id, phase], seconds)
            if view.backfill is not None:
                b = view.backfill
                open_gaps.add_metric(label, b.open_gaps)
                backfill_lag.add_metric(label, lag_seconds(b, now))
                backfilled.add_metric(label, b.written)
                for status, count in sorted(b.gaps_closed.items()):
                    gaps_closed.add_metric([view.stream_id, status], count)
                for status, count in sorted(b.rest_errors.items()):
                    rest_errors.add_metric([view.stream_id, status], count)
            records.add_metric(label, s.records)
            size.add_metric(label, s.bytes)
            commits.add_metric(label, s.commits)
            aborts.add_metric(label, s.aborts)
            gaps.add_metric(label, s.gaps)
            dead.add_metric(label, s.dead_letters)
            fenced.add_metric(label, s.fenced)
            repeats.add_metric(label, s.repeats_dropped)
            histogram = self._histograms.setdefault(view.stream_id, _Histogram())
            histogram.update(s)
            latency.add_metric(label, histogram.buckets(), histogram.total)
            if s.last_event_time_us is not None:
                lag.add_metric(label, max(0.0, now - s.last_event_time_us / 1_000_000))
            if s.last_commit_at is not None:
                age.add_metric(label, max(0.0, mono - s.last_commit_at))
            if view.pipeline is not None:
                depth.add_metric(label, view.pipeline.queue_depth)
            if view.source is None:
                continue
            upstream: SourceStatus = view.source.status()
            for reason, count in sorted(upstream.reconnects.items()):
                reconnects.add_metric([view.stream_id, reason], count)
            if upstream.connected is not None:
                connected.add_metric(label, 1.0 if upstream.connected else 0.0)
            if upstream.maintenance is not None:
                maintenance.add_metric(label, 1.0 if upstream.maintenance else 0.0)
            unknown.add_metric(label, upstream.unknown_fields)
            if upstream.pool is not None:
                pools[upstream.pool.pool_id] = upstream.pool
        if pools:
            attempts.add_metric([], sum(pool.attempts for pool in pools.values()))
        yield from (
            up,
            records,
            size,
            commits,
            aborts,
            latency,
            lag,
            age,
            reconnects,
            connected,
            maintenance,
            gaps,
            dead,
            fenced,
            repeats,
            unknown,
            depth,
            owned,
            handovers,
            handover_s,
            attempts,
            open_gaps,
            backfill_lag,
            backfilled,
            gaps_closed,
            rest_errors,
        )


def make_registry(streams: Callable[[], Sequence[StreamView]]) -> CollectorRegistry:
    """A dedicated registry holding only the bridge's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BridgeCollector(streams))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition of `registry`."""
    return generate_latest(registry)


def parse_text(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Samples of a Prometheus text exposition: (name, sorted labels) -> value.

    A small reader for the demo's live view and the tests (the endpoint is ours, so the
    format is the simple subset prometheus-client writes)."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for metric_family in text_string_to_metric_families(text):
        for sample in metric_family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def by_stream(
    samples: Mapping[tuple[str, tuple[tuple[str, str], ...]], float], name: str
) -> dict[str, float]:
    """Values of metric `name` summed per `stream` label (e.g. reconnects over reasons)."""
    totals: dict[str, float] = {}
    for (sample_name, labels), value in samples.items():
        if sample_name == name:
            stream = dict(labels).get("stream", "")
            totals[stream] = totals.get(stream, 0.0) + value
    return totals


def exposed_names() -> set[str]:
    """Every sample name /metrics can show (histograms as _bucket/_sum/_count)."""
    names: set[str] = set()
    for name, kind, _ in METRICS:
        if kind == "histogram":
            names |= {name + "_bucket", name + "_sum", name + "_count"}
        else:
            names.add(name)
    return names


def streams_of(runners: Iterable[StreamRunner], sources: Mapping[str, Source]) -> list[StreamView]:
    """StreamViews for `Bridge.runners` and `Bridge.sources` (keyed by stream id)."""
    return [
        StreamView(
            r.stream_id,
            r.stats,
            sources.get(r.stream_id),
            r.pipeline,
            r.owned,
            r.handovers,
            r.backfill_stats if r.backfills else None,
        )
        for r in runners
    ]
