"""Building a stream's backfill task from the settings (used by `bridge.app` and the
`backfill` command)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from bridge.backfill.kafka import KafkaBackfillIO
from bridge.backfill.known import natural_key_of
from bridge.backfill.reconcile import Reconcile
from bridge.backfill.streams import BackfillStream, RestHistories, history_for
from bridge.backfill.task import BackfillStats, BackfillTask
from bridge.eos.contract import Positions, SideTopics
from bridge.serde.avro import WireFormat
from bridge.serde.decode import Decoder
from bridge.serde.exact_json import dumps
from bridge.serde.registry import RegistryFormat

log = logging.getLogger(__name__)


def decoder_of(wire_format: WireFormat) -> Decoder:
    """A decoder for our own topics' values in the bridge's wire format."""
    if isinstance(wire_format, RegistryFormat):
        return Decoder(wire_format.client)
    return Decoder()


def task_factory(
    *,
    stream: BackfillStream,
    kafka: Mapping[str, Any],
    app_id: str,
    transaction_timeout_ms: int,
    positions: Positions,
    side: SideTopics,
    wire_format: WireFormat,
    instance_id: str,
    rest: RestHistories | None,
) -> Callable[[BackfillStats], BackfillTask]:
    """A factory of the stream's backfill task (a fresh one each time the stream starts)."""
    decoder = decoder_of(wire_format)
    io = KafkaBackfillIO(
        kafka,
        app_id=app_id,
        stream_id=stream.stream_id,
        positions=positions,
        gaps_topic=side.gaps,
        decoder=decoder,
        transaction_timeout_ms=transaction_timeout_ms,
    )
    natural = natural_key_of(stream.upstream, stream.kind, decoder)
    settings = stream.settings
    reconcile = None
    if settings.reconcile_interval_s > 0 and (stream.upstream, stream.kind) == (
        "predexon",
        "orders",
    ):
        reconcile = Reconcile(
            settings.reconcile_interval_s,
            settings.predexon_rest_lag_s,
            stream.kind,
            dumps(dict(stream.filters)),
        )
    resolve = history_for(stream, rest)

    def build(stats: BackfillStats) -> BackfillTask:
        return BackfillTask(
            stream_id=stream.stream_id,
            upstream=stream.upstream,
            topic=stream.topic,
            history_for=resolve,
            io=io,
            side=side,
            instance_id=instance_id,
            max_records_per_transaction=stream.settings.max_records_per_transaction,
            retry_interval_s=stream.settings.retry_interval_s,
            stats=stats,
            natural=natural,
            reconcile=reconcile,
        )

    return build
