"""Predexon reconnects: what a server that keeps dropping connections costs, new vs old.

On loopback the Predexon simulator drops the connection every `--drop-every` events (400,
close 1006) at `--rate` events/s (100: a drop every ~4 s) while a bridge process
(`polybridge run`) streams the crypto channel (`feeds: ["*"]`) into Kafka. Predexon cannot
replay, so everything between a drop and the next acknowledged subscription is lost and
covered by a gap record. Two bridges are measured one after the other in the same run,
against the same broker, simulator seed and load:

- `fast`: this working tree (`bridge.sources.predexon.reconnect.ReconnectPolicy`: the first
  attempt within 100 ms of losing a healthy connection, backoff only while attempts fail);
- `old`: the bridge of commit `--baseline-rev` (default: the last commit before the
  policy), extracted with `git archive` into a temporary directory and run from there:
  the old behaviour measured, not imitated. Its reconnects used the shared `Backoff`
  (1 s doubling to 30 s, full jitter, reset only after 60 s connected).

Reported per bridge, over the measured window: drops; the uncovered window per disconnect
(gap record `to_time - from_time`) p50/p99; close -> next handshake p50/p99 (simulator
clock); events generated inside a gap window, and events missing from Kafka, as shares of
all generated. Broker: `KAFKA_BOOTSTRAP_SERVERS` if set, else an embedded Apache Kafka.

    .venv/bin/python -m bench.predexon_reconnect [--seconds 120] [--rate 100] [--drop-every 400]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from bench.common import machine_facts, percentile
from bench.dropcopy_e2e import stop_process
from bench.predexon_common import broker, predexon_bridge_config
from bridge.mapping.predexon import PredexonMapper
from bridge.serde.avro import Serializer, SingleObjectFormat
from bridge.serde.exact_json import dumps, loads
from bridge.sim.predexon import SimConfig, SimulatorThread
from bridge.streams.channels import CHANNELS

REPO = Path(__file__).resolve().parent.parent
BASELINE_REV = "6d282dd"
"""The last commit before the fast reconnect policy."""
KEY = "sim-pro-key"
CHANNEL = "crypto"
FILTERS: dict[str, Any] = {"feeds": ["*"]}
STREAM = "predexon.bench"
EVENT_ID_HEADER = "polybridge.event_id"
WARMUP_S = 2.0
"""The measured window starts this long after the first record is visible."""
SETTLE_S = 5.0
"""After generation stops: time for the last reconnect, gap and commit to land."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class Result:
    system: str
    drops: int
    gap_ms: list[float]
    reconnect_ms: list[float]
    events: int
    in_gaps: int
    missing: int


# --- the bridge under test -----------------------------------------------------------------


def extract_baseline(rev: str, into: Path) -> Path:
    """`bridge/` of commit `rev`, unpacked under `into` (nothing in the work tree changes)."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", rev, "bridge"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def start_bridge(root: Path, workdir: Path, config: Path) -> subprocess.Popen[bytes]:
    """`python -m bridge run` importing `bridge` from `root` (cwd: the run's directory, so
    neither the work tree nor the editable install shadows it)."""
    env = dict(os.environ, PYTHONPATH=str(root))
    where = subprocess.run(
        [sys.executable, "-c", "import bridge; print(bridge.__file__)"],
        cwd=workdir,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if not where.startswith(str(root)):
        raise SystemExit(f"bridge imported from {where}, expected under {root}")
    command = [sys.executable, "-m", "bridge", "--log-level", "WARNING", "run"]
    with open(workdir / "bridge.log", "ab") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            [*command, "--config", str(config)], cwd=workdir, env=env, stdout=log, stderr=log
        )


# --- reading Kafka -------------------------------------------------------------------------


def read_topic(bootstrap: str, topic: str, timeout: float = 60) -> list[Any]:
    """Every committed record of `topic` (read_committed, up to each partition's end)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "log_level": 3,
        }
    )
    try:
        parts = sorted(consumer.list_topics(topic, timeout=timeout).topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        out, done = [], set()
        deadline = time.monotonic() + timeout
        while len(done) < len(parts):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic}: timed out")
            for msg in consumer.consume(1000, 0.2):
                err = msg.error()
                if err is None:
                    out.append(msg)
                    done.discard(msg.partition())
                elif err.code() == KafkaError._PARTITION_EOF:
                    done.add(msg.partition())
        return out
    finally:
        consumer.close()


def wait_for_records(bootstrap: str, topic: str, process: subprocess.Popen[bytes]) -> None:
    """Until a first record of `topic` is committed (read_committed sees it)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            "log_level": 3,
        }
    )
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 180
        while not any(m.error() is None for m in consumer.consume(1, 0.5)):
            if process.poll() is not None:
                raise SystemExit(f"the bridge exited with {process.returncode}")
            if time.monotonic() > deadline:
                raise SystemExit(f"no record in {topic} within 180 s")
    finally:
        consumer.close()


def _us(value: Any) -> int | None:
    if value is None or isinstance(value, int):
        return value
    return int((value - _EPOCH) // timedelta(microseconds=1))


# --- one run -------------------------------------------------------------------------------


def run_once(bootstrap: str, system: str, root: Path, args: argparse.Namespace) -> Result:
    workdir = Path(tempfile.mkdtemp(prefix=f"pdx-reconnect-{system}-"))
    prefix = f"{workdir.name}."
    topic, gaps_topic = prefix + CHANNELS[CHANNEL].topic, prefix + "polybridge.gaps"
    config = SimConfig(
        seed=3,
        rate=args.rate,
        channels=(CHANNEL,),
        drop_every_events=args.drop_every,
        drop_code=args.drop_code,
    )
    with SimulatorThread(config) as sim:
        url = sim.sim.url_for(KEY).replace(KEY, "{api_key}")
        config_path = predexon_bridge_config(
            workdir,
            bootstrap=bootstrap,
            url=url,
            api_key=KEY,
            channel=CHANNEL,
            filters=FILTERS,
            partitions=1,
        )
        process = start_bridge(root, workdir, config_path)
        try:
            wait_for_records(bootstrap, topic, process)
            start = time.time() + WARMUP_S
            end = start + args.seconds
            time.sleep(end - time.time())  # the measured window itself
            sim.call(setattr, sim.sim.config, "rate", 0.0)
            time.sleep(SETTLE_S)
        finally:
            stop_process(process, timeout=30)
        truth = sim.call(sim.sim.ground_truth, CHANNEL)
        drops = [t for t, _ in sim.call(lambda: list(sim.sim.drop_log))]
        handshakes = [t for t, _ in sim.call(lambda: list(sim.sim.handshake_log))]
        # Simulator times are monotonic; the window is wall-clock.
        mono_to_wall = time.time() - time.monotonic()
    fmt = SingleObjectFormat()
    gap_serializer = Serializer("polybridge.Gap", fmt.prefix("polybridge.Gap", gaps_topic))
    gaps = []
    for msg in read_topic(bootstrap, gaps_topic):
        gap = gap_serializer.decode(msg.value())
        if gap["stream_id"] == STREAM:
            gaps.append((gap["reason"], _us(gap["from_time"]), _us(gap["to_time"]) or 0))
    in_kafka = {
        (dict(msg.headers() or []).get(EVENT_ID_HEADER) or b"").decode()
        for msg in read_topic(bootstrap, topic)
    }
    start_us, end_us = int(start * 1e6), int(end * 1e6)
    windows = [(f, t) for _, f, t in gaps if f is not None]
    disconnects = [
        (t - f) / 1000
        for reason, f, t in gaps
        if reason == "disconnected" and f is not None and start_us <= f < end_us
    ]
    reconnect_ms = []
    window_drops = [d for d in drops if start <= d + mono_to_wall < end]
    for dropped in window_drops:
        following = next((h for h in handshakes if h > dropped), None)
        if following is not None:
            reconnect_ms.append((following - dropped) * 1000)
    prefix_bytes = fmt.prefix(CHANNELS[CHANNEL].schema, topic)
    mapper = PredexonMapper(CHANNEL, STREAM, topic, prefix_bytes, dumps(FILTERS))
    events = in_gaps = missing = 0
    for e in truth:
        at = int(e["generated_at"] * 1e6)
        if not start_us <= at < end_us:
            continue
        events += 1
        in_gaps += any(f <= at <= t for f, t in windows)
        event_id = mapper.map_event(loads(dumps(e["data"], sort_keys=False)), 0, None).event_id
        missing += event_id not in in_kafka
    return Result(system, len(window_drops), disconnects, reconnect_ms, events, in_gaps, missing)


# --- CLI -----------------------------------------------------------------------------------


def print_table(results: list[Result]) -> None:
    header = (
        f"| {'bridge':<6} | drops | gap p50 ms | gap p99 ms | close->handshake p50 ms | "
        f"p99 ms | events | in gaps | missing from Kafka |"
    )
    print(header)
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:

        def share(n: int, total: int = r.events) -> str:
            return f"{100 * n / total:.1f} %" if total else "-"

        print(
            f"| {r.system:<6} | {r.drops} | {percentile(r.gap_ms, 50):,.0f} | "
            f"{percentile(r.gap_ms, 99):,.0f} | {percentile(r.reconnect_ms, 50):,.0f} | "
            f"{percentile(r.reconnect_ms, 99):,.0f} | {r.events:,} | {share(r.in_gaps)} | "
            f"{share(r.missing)} |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="measured window per run")
    parser.add_argument("--rate", type=float, default=100.0, help="crypto events/s")
    parser.add_argument("--drop-every", type=int, default=400, help="events per connection")
    parser.add_argument("--drop-code", type=int, default=1006, help="close code of the drops")
    parser.add_argument("--baseline-rev", default=BASELINE_REV, help="the old bridge's commit")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="pdx-baseline-") as old_root, broker() as bootstrap:
        roots = {"fast": REPO, "old": extract_baseline(args.baseline_rev, Path(old_root))}
        for system, root in roots.items():
            results.append(run_once(bootstrap, system, root, args))
            print(f"done: {system}", file=sys.stderr)
    print()
    print(
        f"machine: {machine_facts()}; window {args.seconds:.0f} s per bridge; crypto "
        f"{args.rate:.0f} events/s, drop (close {args.drop_code}) every {args.drop_every} "
        f"events per connection; old = commit {args.baseline_rev}"
    )
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
