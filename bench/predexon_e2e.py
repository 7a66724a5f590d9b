"""Predexon end to end: simulator -> bridge process -> Kafka, beside a naive baseline.

Two scenarios: the orders channel (`users: ["*"], status: all`, one frame per event) and
the orderbook wildcard firehose (`event_batch` frames every 250 ms). For each, the same
simulator load is served first to `polybridge run` (Avro, transactions, dedupe, state),
then to the baseline: a `websockets` client loop that produces each JSON frame as it comes
with a plain confluent-kafka producer (no transactions, no mapping). A read_committed
consumer thread in this process notes when each record becomes visible; afterwards every
event is matched (by the mapper's event id) to the instant the simulator sent it.

Reported per run: offered and delivered events/s over the measured window, p50/p99 of
send -> visible latency, and the peak RSS of the process under test (bridge or baseline).
Broker: `KAFKA_BOOTSTRAP_SERVERS` if set, else a local Apache Kafka (`bridge.embedded`).

    .venv/bin/python -m bench.predexon_e2e [--seconds 10] [--orders-rate 300] [--book-rate 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from bench.dropcopy_e2e import stop_process
from bench.predexon_common import broker, predexon_bridge_config
from bridge.kafka.readback import next_messages
from bridge.mapping.predexon import PredexonMapper
from bridge.serde.avro import SingleObjectFormat
from bridge.serde.exact_json import dumps, loads
from bridge.sim.predexon import SimConfig, SimulatorThread
from bridge.streams.channels import CHANNELS

PARTITIONS = 3
KEY = "sim-pro-key"
WARMUP_S = 2.0
"""Measured window starts this long after the first record is visible: connection set-up,
topic metadata and the first transactions are not steady state."""
DRAIN_TIMEOUT_S = 30.0
RSS_SAMPLE_S = 0.2


@dataclass(frozen=True)
class Scenario:
    name: str
    channel: str
    filters: dict[str, Any]
    rate: float
    """Simulator `rate`: generator calls per second (orders: ~7 events each)."""


@dataclass
class Result:
    scenario: str
    system: str
    offered: float
    delivered: float
    p50_ms: float
    p99_ms: float
    rss_mb: float
    events: int


# --- measuring ---------------------------------------------------------------------------


class VisibleTimes:
    """A read_committed consumer thread noting (visible time, value) for every record."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.rows: list[tuple[float, bytes]] = []
        self._stop = threading.Event()
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"bench-{uuid.uuid4().hex[:8]}",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                # Fetch as soon as anything is there: we measure latency, not batching.
                "fetch.wait.max.ms": 10,
                "log_level": 3,
            }
        )
        self._consumer.assign(
            [TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)]
        )
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            messages = next_messages(self._consumer, 0.05)  # what is ready, not a full batch
            now = time.time()
            self.rows.extend((now, m.value()) for m in messages if m.error() is None)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._consumer.close()


class PeakRss:
    """Samples a process's resident set size from /proc (Linux) until closed."""

    def __init__(self, pid: int) -> None:
        self.peak_kb = 0
        self._stop = threading.Event()
        self._pid = pid
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(RSS_SAMPLE_S):
            try:
                status = Path(f"/proc/{self._pid}/status").read_text()
            except OSError:
                return
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    self.peak_kb = max(self.peak_kb, int(line.split()[1]))

    def close(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_kb / 1024


def sent_times(sim: SimulatorThread, scenario: Scenario) -> dict[str, float]:
    """event id -> when the simulator wrote it to the socket (first copy)."""
    mapper = _mapper(scenario, "predexon.bench", "bench")
    out: dict[str, float] = {}
    for sub in sim.call(sim.sim.subscriptions):
        for sent in sim.call(sim.sim.sent, sub.id):
            if sent.status == "sent":
                data = loads(dumps(sent.data, sort_keys=False))
                out.setdefault(mapper.map_event(data, 0, sub.id).event_id, sent.at)
    return out


def _mapper(scenario: Scenario, stream_id: str, topic: str) -> PredexonMapper:
    schema = CHANNELS[scenario.channel].schema
    prefix = SingleObjectFormat().prefix(schema, topic)
    return PredexonMapper(scenario.channel, stream_id, topic, prefix, dumps(scenario.filters))


def bridge_event_ids(
    rows: list[tuple[float, bytes]], scenario: Scenario, topic: str
) -> Iterator[tuple[float, str]]:
    serializer = _mapper(scenario, "predexon.bench", topic).serializer
    for at, value in rows:
        yield at, serializer.decode(value)["event_id"]


def baseline_event_ids(
    rows: list[tuple[float, bytes]], scenario: Scenario, topic: str
) -> Iterator[tuple[float, str]]:
    mapper = _mapper(scenario, "predexon.bench", topic)
    for at, value in rows:
        message = loads(value)
        sub_id = message.get("subscription_id")
        events = message["events"] if message.get("type") == "event_batch" else [message["data"]]
        for data in events:
            yield at, mapper.map_event(data, 0, sub_id).event_id


def summarise(
    scenario: Scenario,
    system: str,
    visible: list[tuple[float, str]],
    sent: dict[str, float],
    window: tuple[float, float],
    rss_mb: float,
) -> Result:
    start, end = window
    offered = sum(1 for at in sent.values() if start <= at < end) / (end - start)
    delivered = sum(1 for at, _ in visible if start <= at < end) / (end - start)
    latencies = sorted(
        (at - sent[event_id]) * 1000
        for at, event_id in visible
        if event_id in sent and start <= sent[event_id] < end
    )

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else 0.0

    return Result(
        scenario.name, system, offered, delivered, pct(0.5), pct(0.99), rss_mb, len(visible)
    )


# --- the two systems under test ---------------------------------------------------------


def bridge_command(workdir: Path, bootstrap: str, url: str, scenario: Scenario) -> list[str]:
    """Write a bridge config for one subscription and return the command that runs it."""
    config = predexon_bridge_config(
        workdir,
        bootstrap=bootstrap,
        url=url,
        api_key=KEY,
        channel=scenario.channel,
        filters=scenario.filters,
        partitions=PARTITIONS,
    )
    return [
        sys.executable,
        "-m",
        "bridge",
        "--log-level",
        "WARNING",
        "run",
        "--config",
        str(config),
    ]


async def baseline(url: str, bootstrap: str, topic: str, subscribe: str) -> None:
    """The naive loop: every frame produced as is, fire and forget, no transactions."""
    from websockets.asyncio.client import connect

    # A firehose `event_batch` frame can pass librdkafka's 1 MB default message size.
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 5, "message.max.bytes": 16 * 2**20}
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with connect(url, max_size=2**24, compression=None) as ws:
        await ws.send(subscribe)
        reader = asyncio.ensure_future(_pump(ws, producer, topic))
        await stop.wait()
        reader.cancel()
    producer.flush(10)


async def _pump(ws: Any, producer: Producer, topic: str) -> None:
    async for frame in ws:
        message = json.loads(frame)
        if message.get("type") in ("event", "event_batch"):
            producer.produce(topic, frame)
            producer.poll(0)


def baseline_command(url: str, bootstrap: str, topic: str, scenario: Scenario) -> list[str]:
    channel = CHANNELS[scenario.channel]
    subscribe = json.dumps(
        {
            "action": "subscribe",
            "platform": channel.platform,
            "version": 1,
            "type": channel.type,
            "filters": scenario.filters,
        }
    )
    args = ["--baseline-worker", url, bootstrap, topic, subscribe]
    return [sys.executable, "-m", "bench.predexon_e2e", *args]


# --- one run ------------------------------------------------------------------------------


@contextmanager
def running(command: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=out)
        try:
            yield process
        finally:
            stop_process(process, timeout=30)


def run_once(bootstrap: str, scenario: Scenario, system: str, seconds: float) -> Result:
    workdir = Path(tempfile.mkdtemp(prefix=f"pdx-bench-{system}-"))
    config = SimConfig(seed=1, rate=scenario.rate, channels=(scenario.channel,), confirm_scale=0.2)
    with SimulatorThread(config) as sim:
        url = sim.sim.url_for(KEY)
        if system == "polybridge":
            topic = f"{workdir.name}.{CHANNELS[scenario.channel].topic}"
            command = bridge_command(workdir, bootstrap, url.replace(KEY, "{api_key}"), scenario)
        else:
            topic = f"{workdir.name}.raw"
            _create_topic(bootstrap, topic)
            command = baseline_command(url, bootstrap, topic, scenario)
        with running(command, workdir / "process.log") as process:
            rss = PeakRss(process.pid)
            _wait_for_topic(bootstrap, topic, process)
            consumer = VisibleTimes(bootstrap, topic)
            _wait(lambda: bool(consumer.rows), 60, f"{system}: first record visible", process)
            start = time.time() + WARMUP_S
            end = start + seconds
            time.sleep(end - time.time())  # the measured window itself
            sim.call(setattr, sim.sim.config, "rate", 0.0)
            sent = sent_times(sim, scenario)
            _drain(consumer)
            rss_mb = rss.close()
        consumer.close()
    decode = bridge_event_ids if system == "polybridge" else baseline_event_ids
    visible = list(decode(consumer.rows, scenario, topic))
    return summarise(scenario, system, visible, sent, (start, end), rss_mb)


def _drain(consumer: VisibleTimes) -> None:
    """Wait until generation has stopped reaching Kafka: the consumer has seen nothing new
    for a second (or the drain timeout passes)."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    seen = -1
    while time.monotonic() < deadline and seen != len(consumer.rows):
        seen = len(consumer.rows)
        time.sleep(1.0)


def _wait(condition: Any, timeout: float, what: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise SystemExit(f"{what}: the process exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def _wait_for_topic(bootstrap: str, topic: str, process: subprocess.Popen[bytes]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})

    def ready() -> bool:
        # All topics: asking for one by name may auto-create it (1 partition) on some brokers.
        md = admin.list_topics(timeout=5).topics.get(topic)
        return md is not None and md.error is None and len(md.partitions) == PARTITIONS

    _wait(ready, 60, f"topic {topic}", process)


def _create_topic(bootstrap: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, PARTITIONS, 1)]).values():
        future.result(10)


# --- CLI ----------------------------------------------------------------------------------


def print_table(results: list[Result]) -> None:
    header = (
        f"{'scenario':<18} {'system':<11} {'offered ev/s':>12} {'delivered ev/s':>14} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'peak RSS MB':>11} {'events':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.scenario:<18} {r.system:<11} {r.offered:>12.0f} {r.delivered:>14.0f} "
            f"{r.p50_ms:>8.1f} {r.p99_ms:>8.1f} {r.rss_mb:>11.1f} {r.events:>8}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window per run")
    parser.add_argument("--orders-rate", type=float, default=300.0, help="fills/s (~7 events)")
    parser.add_argument("--book-rate", type=float, default=3000.0, help="orderbook events/s")
    parser.add_argument("--baseline-worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.baseline_worker:
        asyncio.run(baseline(*args.baseline_worker))
        return 0
    scenarios = [
        Scenario("orders", "orders", {"users": ["*"], "status": "all"}, args.orders_rate),
        Scenario("orderbook firehose", "orderbook", {"token_ids": ["*"]}, args.book_rate),
    ]
    results = []
    with broker() as bootstrap:
        for scenario in scenarios:
            for system in ("polybridge", "baseline"):
                results.append(run_once(bootstrap, scenario, system, args.seconds))
                print(f"done: {scenario.name} / {system}", file=sys.stderr)
    print()
    print(f"machine: {os.cpu_count()} cores; window {args.seconds:.0f} s per run")
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
