"""`Source.status()`: the one declared contract /metrics and /readyz read of a source.

Each source reports its upstream's state as a `SourceStatus` snapshot; the collector and
the readiness rules read nothing else of it (and of the pipeline only `queue_depth`)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bridge.eos.contract import PipelineStats
from bridge.health import in_maintenance, not_ready
from bridge.mapping.dropcopy import DropCopyMapper
from bridge.metrics import BridgeCollector, StreamView
from bridge.records import Batch, ConnectionPool, Position, SourceStatus
from bridge.serde.avro import SingleObjectFormat
from bridge.sources.dropcopy.source import DropCopySource
from bridge.sources.predexon.placement import PredexonConnectionManager
from bridge.sources.predexon.source import PredexonSource
from bridge.streams.channels import CHANNELS
from bridge.streams.kinds import KINDS

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class _Channel:
    """Enough of a gRPC channel to build the stub; no call is made."""

    def unary_stream(self, *args: Any, **kwargs: Any) -> None:
        return None


class _NoToken:
    async def token(self) -> str:
        return "unused"

    def invalidate(self) -> None:
        pass


class _Upstream:
    """A source with a fixed status."""

    def __init__(self, stream_id: str, state: SourceStatus) -> None:
        self.stream_id = stream_id
        self.state = state

    def status(self) -> SourceStatus:
        return self.state

    async def stream(self, start: Position | None) -> AsyncIterator[Batch]:
        raise NotImplementedError
        yield  # pragma: no cover


@dataclasses.dataclass
class _Pipeline:
    queue_depth: int


def dropcopy_source() -> DropCopySource:
    kind = KINDS["executions"]
    topic = "t.executions"
    return DropCopySource(
        kind=kind,
        stream_id="dropcopy.executions",
        channel=_Channel(),  # type: ignore[arg-type]
        tokens=_NoToken(),  # type: ignore[arg-type]
        mapper=DropCopyMapper(
            kind, "dropcopy.executions", topic, SingleObjectFormat().prefix(kind.schema, topic)
        ),
    )


def predexon_source(mgr: PredexonConnectionManager, name: str) -> PredexonSource:
    channel = CHANNELS["crypto"]
    prefix = SingleObjectFormat().prefix(channel.schema, channel.topic)
    return PredexonSource.create(mgr, name, "crypto", {"feeds": ["BTC/USD"]}, prefix=prefix)


def samples(views: list[StreamView]) -> Samples:
    found: Samples = {}
    for family in BridgeCollector(lambda: views).collect():
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_dropcopy_status_is_a_snapshot_of_the_call() -> None:
    source = dropcopy_source()
    assert source.status() == SourceStatus(
        reconnects={}, unknown_fields=0, connected=False, maintenance=False
    )
    source.reconnects["unavailable"] += 2
    source.connected = True
    source.maintenance_ended_at = 12.5
    status = source.status()
    assert status.reconnects == {"unavailable": 2}
    assert status.connected is True and status.maintenance is False
    assert status.maintenance_until is None and status.maintenance_ended_at == 12.5
    assert status.pool is None
    source.reconnects["silence"] += 1  # a snapshot: later counts do not change it
    assert status.reconnects == {"unavailable": 2}
    with pytest.raises(dataclasses.FrozenInstanceError):
        status.connected = False  # type: ignore[misc]


def test_predexon_status_reports_its_shared_connections() -> None:
    mgr = PredexonConnectionManager("ws://127.0.0.1:9/v1/key")
    first, second = predexon_source(mgr, "predexon.a"), predexon_source(mgr, "predexon.b")
    first.reconnects["close_1006"] += 1
    mgr.connection_attempts = 3
    status = first.status()
    assert status.reconnects == {"close_1006": 1} and status.unknown_fields == 0
    assert status.connected is None and status.maintenance is None
    assert status.pool == ConnectionPool(id(mgr), 3) == second.status().pool


def test_metrics_read_the_status_and_the_queue_depth() -> None:
    """The samples each status field gives; a pool shared by two streams counts once."""
    running = PipelineStats(running=True)
    pool = ConnectionPool(pool_id=1, attempts=4)
    views = [
        StreamView(
            "dropcopy.executions",
            running,
            _Upstream(
                "dropcopy.executions",
                SourceStatus(
                    reconnects={"unavailable": 2, "silence": 1},
                    unknown_fields=5,
                    connected=True,
                    maintenance=False,
                ),
            ),
            _Pipeline(queue_depth=3),  # type: ignore[arg-type]
        ),
        StreamView("predexon.a", running, _Upstream("predexon.a", SourceStatus(pool=pool))),
        StreamView("predexon.b", running, _Upstream("predexon.b", SourceStatus(pool=pool))),
        StreamView("standby", PipelineStats(), None),
    ]
    found = samples(views)

    def of(name: str) -> dict[tuple[tuple[str, str], ...], float]:
        return {labels: value for (sample, labels), value in found.items() if sample == name}

    ex = (("stream", "dropcopy.executions"),)
    assert of("polybridge_reconnects_total") == {
        (("reason", "silence"), *ex): 1.0,
        (("reason", "unavailable"), *ex): 2.0,
    }
    assert of("polybridge_upstream_connected") == {ex: 1.0}
    assert of("polybridge_upstream_maintenance") == {ex: 0.0}
    assert of("polybridge_unknown_fields_total") == {
        ex: 5.0,
        (("stream", "predexon.a"),): 0.0,
        (("stream", "predexon.b"),): 0.0,
    }
    assert of("polybridge_queue_depth_batches") == {ex: 3.0}
    assert of("polybridge_predexon_connection_attempts_total") == {(): 4.0}


def test_readiness_reads_the_maintenance_fields() -> None:
    stats = PipelineStats(running=True, commits=1, first_commit_at=0.0, last_commit_at=0.0)
    waiting = _Upstream("s", SourceStatus(maintenance=True, maintenance_until="2024-01-11T13:00"))
    view = StreamView("s", stats, waiting)
    assert not_ready([view], 10, now=100.0) == {}
    assert in_maintenance([view]) == {"s": "maintenance until 2024-01-11T13:00"}
    waiting.state = SourceStatus(maintenance=False, maintenance_ended_at=95.0)
    assert not_ready([view], 10, now=100.0) == {} and in_maintenance([view]) == {}
    assert set(not_ready([view], 10, now=106.0)) == {"s"}
    assert set(not_ready([StreamView("s", stats, None)], 10, now=100.0)) == {"s"}
