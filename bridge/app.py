"""Wiring: settings -> topics, pipelines, sources; run them until stopped."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from bridge.backfill.streams import BackfillStream, RestHistories
from bridge.cluster.group import Failures, run_alone, run_in_group
from bridge.cluster.membership import Membership
from bridge.cluster.runner import StreamRunner
from bridge.config import (
    DropCopyStreamSettings,
    PredexonSubscriptionSettings,
    Settings,
    parse_time,
)
from bridge.eos.contract import SideTopics
from bridge.eos.pipeline import Pipeline
from bridge.eos.positions import PositionStore
from bridge.eos.repeats import LatestPerKey, RecentIds, RepeatFilter
from bridge.errors import BridgeError, ConfigError
from bridge.kafka.acls import set_deployment
from bridge.kafka.admin import (
    STATE_TOPIC_CONFIG,
    TopicSpec,
    check_state_topic,
    ensure_partitions,
    ensure_topics,
)
from bridge.kafka.producer import TransactionalProducer
from bridge.kafka.readback import header, recent_records
from bridge.mapping.dropcopy import DropCopyMapper
from bridge.records import EVENT_ID_HEADER, Record, Source
from bridge.serde.avro import Serializer, WireFormat
from bridge.serde.registry import RegistryFormat, configured_topic_schemas, wire_format_of
from bridge.sources.backoff import Backoff
from bridge.sources.dropcopy.source import DropCopySource
from bridge.sources.predexon.placement import PredexonConnectionManager
from bridge.sources.predexon.source import PredexonSource
from bridge.sources.upstreams import dropcopy_channel, predexon_key, token_provider
from bridge.streams.catalogue import Stream, catalogue, dropcopy_stream, predexon_stream
from bridge.streams.kinds import KINDS

if TYPE_CHECKING:
    from bridge.backfill.rest_clients import RestClients
    from bridge.health import HealthServer

log = logging.getLogger(__name__)


class Bridge:
    """All configured pipelines of one bridge process."""

    def __init__(
        self,
        settings: Settings,
        wire_format: WireFormat | None = None,
        rest_histories: RestHistories | None = None,
    ) -> None:
        if not settings.dropcopy.streams and not settings.predexon.subscriptions:
            raise ConfigError(
                "nothing to run: configure at least one [[dropcopy.streams]] or "
                "[[predexon.subscriptions]]"
            )
        self.settings = settings
        self.instance_id = (
            f"{settings.cluster.instance_name()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        )
        """Names this process in the state topic (`owner`) and in the stream group's
        client.id: the instance's stable name (`cluster.instance_id`, by default the host
        name), then what tells this run from its restarts (pid, random)."""
        self.runners: dict[str, StreamRunner] = {}
        self.membership: Membership | None = None
        self.sources: dict[str, Source] = {}  # by stream id, read by bridge.metrics
        self._format = wire_format or wire_format_of(settings)
        self._kafka = settings.kafka.librdkafka()
        set_deployment(settings.app_id, settings.kafka.topic_prefix)  # for missing-ACL lines
        self._channels: list[Any] = []
        self._predexon: PredexonConnectionManager | None = None
        self.positions: PositionStore | None = None
        self._rest = rest_histories
        self._own_rest: RestClients | None = None
        """REST history clients for `[backfill]` (default: the build's own, if any)."""

    def topics(self) -> list[TopicSpec]:
        kafka = self.settings.kafka
        specs = [
            TopicSpec(
                kafka.topic(kafka.state_topic),
                1,
                kafka.replication_factor,
                STATE_TOPIC_CONFIG,
            ),
            TopicSpec(kafka.topic(kafka.dlq_topic), 1, kafka.replication_factor, {}),
            TopicSpec(kafka.topic(kafka.gaps_topic), 1, kafka.replication_factor, {}),
        ]
        data_topics = {stream.topic for stream in catalogue(self.settings).values()}
        specs += [
            TopicSpec(t, kafka.partitions, kafka.replication_factor, {})
            for t in sorted(data_topics)
        ]
        return specs

    def _side_topics(self) -> SideTopics:
        kafka = self.settings.kafka
        names = {
            "state": kafka.topic(kafka.state_topic),
            "dead_letters": kafka.topic(kafka.dlq_topic),
            "gaps": kafka.topic(kafka.gaps_topic),
        }
        return SideTopics(
            state=names["state"],
            dead_letters=names["dead_letters"],
            gaps=names["gaps"],
            state_serializer=self._serializer("polybridge.State", names["state"]),
            dead_letter_serializer=self._serializer("polybridge.DeadLetter", names["dead_letters"]),
            gap_serializer=self._serializer("polybridge.Gap", names["gaps"]),
        )

    def _serializer(self, schema: str, topic: str) -> Serializer:
        return Serializer(schema, self._format.prefix(schema, topic))

    async def prepare(self) -> None:
        """Create missing topics and refuse a state topic that is not compacted; with a
        Schema Registry, check and register every topic's schema before the first record."""
        kafka = self.settings.kafka
        if isinstance(self._format, RegistryFormat):
            pairs = configured_topic_schemas(self.settings)
            await asyncio.to_thread(self._format.prepare, pairs)
        await asyncio.to_thread(ensure_topics, self._kafka, self.topics())
        await asyncio.to_thread(check_state_topic, self._kafka, kafka.topic(kafka.state_topic))
        if self.settings.cluster.enabled:
            streams = self.stream_count()
            topic = kafka.topic(self.settings.cluster.topic)
            spec = TopicSpec(topic, streams, kafka.replication_factor, {})
            await asyncio.to_thread(ensure_topics, self._kafka, [spec])
            await asyncio.to_thread(ensure_partitions, self._kafka, topic, streams)

    def stream_count(self) -> int:
        return len(self.settings.dropcopy.streams) + len(self.settings.predexon.subscriptions)

    def build(self) -> dict[str, StreamRunner]:
        """One runner per configured stream; its pipeline is built when the stream runs."""
        side = self._side_topics()
        self.positions = positions = PositionStore(
            self._kafka, side.state, self.settings.kafka.transaction_timeout_ms / 1000
        )
        runners = [
            self._dropcopy_pipeline(stream, side, positions)
            for stream in self.settings.dropcopy.streams
        ] + [
            self._predexon_pipeline(sub, side, positions)
            for sub in self.settings.predexon.subscriptions
        ]
        self.runners = {r.stream_id: r for r in runners}
        return self.runners

    def _dropcopy_pipeline(
        self, stream: DropCopyStreamSettings, side: SideTopics, positions: PositionStore
    ) -> StreamRunner:
        settings = self.settings
        dropcopy = settings.dropcopy
        if not self._channels:
            self._channels.append(dropcopy_channel(dropcopy))
            self._token_provider = token_provider(self.settings.dropcopy.auth)
        kind = KINDS[stream.kind]
        resolved = dropcopy_stream(settings, stream)
        stream_id, topic = resolved.id, resolved.topic
        mapper = DropCopyMapper(kind, stream_id, topic, self._format.prefix(kind.schema, topic))
        first_start = (
            None
            if stream.start == "live"
            else int(parse_time(stream.start).timestamp() * 1_000_000)
        )
        source = DropCopySource(
            kind=kind,
            stream_id=stream_id,
            channel=self._channels[0],
            tokens=self._token_provider,
            mapper=mapper,
            participant_id=dropcopy.participant_id,
            symbols=stream.symbols,
            firms=stream.firms,
            first_start_time_us=first_start,
            resume_margin_us=int(dropcopy.resume_time_margin_s * 1_000_000),
            backoff=Backoff(dropcopy.reconnect_initial_s, dropcopy.reconnect_max_s),
            silence_timeout_s=dropcopy.silence_timeout_s,
            maintenance=dropcopy.maintenance.schedule(),
            maintenance_retry_s=dropcopy.maintenance.retry_interval_s,
            maintenance_codes={grpc.StatusCode[c] for c in dropcopy.maintenance.refused_codes},
        )
        window = settings.pipeline.dedupe_window
        repeats: Callable[[], RepeatFilter] = (
            LatestPerKey if kind.latest_per_key else lambda: RecentIds(window)
        )
        backfill = BackfillStream.of(resolved, mapper.prefix, settings.backfill)
        return self._pipeline(resolved, source, repeats, side, positions, backfill)

    def _predexon_pipeline(
        self, sub: PredexonSubscriptionSettings, side: SideTopics, positions: PositionStore
    ) -> StreamRunner:
        if self._predexon is None:
            predexon = self.settings.predexon
            url = predexon.url.replace("{api_key}", predexon_key(predexon))
            self._predexon = PredexonConnectionManager(url, predexon.plan)
        stream = predexon_stream(self.settings, sub)
        prefix = self._format.prefix(stream.schema, stream.topic)
        source = PredexonSource.create(
            self._predexon,
            stream.id,
            sub.channel,
            dict(sub.filters),
            topic=stream.topic,
            prefix=prefix,
        )
        window = self.settings.pipeline.dedupe_window
        backfill = BackfillStream.of(stream, prefix, self.settings.backfill)
        return self._pipeline(stream, source, lambda: RecentIds(window), side, positions, backfill)

    def _pipeline(
        self,
        stream: Stream,
        source: Source,
        repeats: Callable[[], RepeatFilter],
        side: SideTopics,
        positions: PositionStore,
        backfill: BackfillStream | None = None,
    ) -> StreamRunner:
        settings = self.settings
        stream_id, topic = stream.id, stream.topic
        self.sources[stream_id] = source
        runners: list[StreamRunner] = []  # the runner below, for the pipeline's gap hook
        build_backfill = None
        if backfill is not None and settings.backfill.enabled:
            from bridge.backfill.wiring import task_factory  # imported only when used

            build_backfill = task_factory(
                stream=backfill,
                kafka=self._kafka,
                app_id=settings.app_id,
                transaction_timeout_ms=settings.kafka.transaction_timeout_ms,
                positions=positions,
                side=side,
                wire_format=self._format,
                instance_id=self.instance_id,
                rest=self._rest_histories(),
            )
        build = functools.partial(
            Pipeline,
            stream_id=stream_id,
            upstream=stream.upstream,
            source=source,
            topic=topic,
            producer=lambda: TransactionalProducer(
                {**self._kafka, "transaction.timeout.ms": settings.kafka.transaction_timeout_ms},
                stream.transactional_id,
                stream_id,
            ),
            pending_commit_limit_s=settings.kafka.transaction_timeout_ms / 1000,
            positions=positions,
            side=side,
            settings=settings.pipeline,
            repeats=repeats,
            read_back=self._read_back(topic, stream_id),
            instance_id=self.instance_id,
            on_gaps=(lambda gaps: runners[0].notify_gaps(gaps)) if build_backfill else None,
            handover_s=settings.cluster.handover_s,
        )
        runners.append(StreamRunner(stream_id, lambda stats: build(stats=stats), build_backfill))
        return runners[0]

    def _rest_histories(self) -> RestHistories:
        """The REST history clients `[backfill]` uses (one set per process)."""
        if self._rest is None:
            from bridge.backfill.rest_clients import RestClients  # imported only when used

            settings = self.settings
            self._rest = self._own_rest = RestClients(
                settings,
                lambda: token_provider(settings.dropcopy.auth),
                lambda: predexon_key(settings.predexon),
            )
        return self._rest

    def _read_back(self, topic: str, stream_id: str) -> Callable[[], Sequence[Record]]:
        """The stream's recent committed records (they seed its repeat filter)."""
        window = max(1, self.settings.pipeline.dedupe_window // self.settings.kafka.partitions)

        def read() -> Sequence[Record]:
            committed = []
            for found in recent_records(self._kafka, topic, stream_id, window):
                event_id = header(found.headers, EVENT_ID_HEADER)
                if event_id is not None and found.value is not None:
                    committed.append(Record(topic, found.key, found.value, event_id.decode(), None))
            return committed

        return read

    def apply(self, settings: Settings) -> None:
        """Apply a changed configuration where it can change live: the filters of a running
        Predexon subscription (sent as `update`; unsubscribe + subscribe on the orderbook).
        Anything else takes effect on restart, and the log says so."""
        wanted = {sub.name: sub for sub in settings.predexon.subscriptions}
        running = []
        for sub in self.settings.predexon.subscriptions:
            new = wanted.get(sub.name)
            if (
                new is not None
                and new != sub
                and new == sub.model_copy(update={"filters": new.filters})
            ):
                source = self.sources.get(predexon_stream(self.settings, sub).id)
                if isinstance(source, PredexonSource):
                    source.update_filters(dict(new.filters))
                    log.info("stream=predexon.%s filters updated live", sub.name)
                    sub = new
            running.append(sub)
        predexon = self.settings.predexon.model_copy(update={"subscriptions": tuple(running)})
        self.settings = self.settings.model_copy(update={"predexon": predexon})
        if self.settings != settings:
            log.warning("configuration changes other than Predexon filters take effect on restart")

    async def run(self, stop: asyncio.Event) -> int:
        """Run this instance's streams until `stop`; 0 when all stopped cleanly, 1 when any
        failed (see `bridge.cluster.group`)."""
        log.info("instance %s starting: checking topics", self.instance_id)
        await self.prepare()
        runners = self.build()
        health: HealthServer | None = None
        if self.settings.metrics.port:
            # Imported only when served: prometheus_client alone is a large part of the
            # imports before the first commit (docs/benchmarks.md, restarts).
            from bridge.health import serve
            from bridge.metrics import streams_of

            health = await serve(
                self.settings,
                lambda: streams_of(runners.values(), self.sources),
                self._group_state,
            )
        failures = Failures()
        try:
            if self.settings.cluster.enabled:
                await run_in_group(
                    runners, self._membership, stop, failures, self.settings.cluster.handover_s
                )
            else:
                await run_alone(runners, stop, failures)
        finally:
            if health is not None:
                await health.close()
            for channel in self._channels:
                await channel.close()
            if self._predexon is not None:
                await self._predexon.close()
            if self._own_rest is not None:
                await self._own_rest.aclose()
            if self.positions is not None:
                self.positions.close()
        if isinstance(failures.fatal, ConfigError):
            raise failures.fatal
        return 1 if failures.errors else 0

    def _group_state(self) -> str | None:
        """What keeps this instance from being a healthy stream-group member (for /readyz)."""
        if not self.settings.cluster.enabled:
            return None
        if self.membership is None or not self.membership.joined:
            return "not yet a member of the stream group"
        return None

    def _membership(self, **callbacks: Any) -> Membership:
        cluster, kafka = self.settings.cluster, self.settings.kafka
        self.membership = Membership(
            self._kafka,
            group_id=self.settings.app_id,
            topic=kafka.topic(cluster.topic),
            stream_ids=list(self.runners),
            instance_id=self.instance_id,
            group_instance_id=cluster.instance_name(),
            session_timeout_ms=cluster.session_timeout_ms,
            **callbacks,
        )
        return self.membership


async def run_until_signalled(bridge: Bridge, reload: Callable[[], Settings] | None = None) -> int:
    """Run the bridge; SIGTERM / SIGINT stop reading, commit what is complete and exit;
    SIGHUP re-reads the configuration (`reload`) and applies what can change live."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if reload is not None:
        loop.add_signal_handler(signal.SIGHUP, lambda: _reload(bridge, reload))
    return await bridge.run(stop)


def _reload(bridge: Bridge, reload: Callable[[], Settings]) -> None:
    try:
        bridge.apply(reload())
    except BridgeError as exc:
        log.error("configuration not reloaded: %s", exc)
