"""Soak under chaos: a three-node Kafka cluster with a node SIGKILLed every minute and the
bridge SIGKILLed every five, DropCopy and Predexon live throughout; then exactness.

Run: `.venv/bin/python -m bench.soak_cluster [--minutes 30] [--rate 40]`

The cluster is `bridge.embedded.EmbeddedCluster` (three combined KRaft nodes, replication
factor 3, min.insync.replicas 2, no unclean leader election); the upstreams are the
simulators in this process, the bridge one `python -m bridge run` with all four DropCopy
streams and two Predexon subscriptions (orders, crypto), the stream group on. The set-up,
the ground truth and the checks are the fault tests' own (`tests/fault/test_broker_faults.py`
and `test_cluster_failover.py`), so the verdict means what theirs means: every DropCopy topic
equals the simulator's ground truth (0 missing, 0 doubled, per-key order) and every
Predexon event is in Kafka once or inside a gap record.

Every `--node-kill-s` a random node is SIGKILLed and restarted at once on its data (a
kill waits until every replica is back in sync after the one before, so no partition falls
below min.insync.replicas); every `--bridge-kill-s` the bridge is SIGKILLed and started again
under the same `cluster.instance_id`. Each minute prints the bridge's RSS and the lag: per
stream, how far the newest committed position's time is behind the clock (the state topic
tailed read_committed), the largest of the six.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import tempfile
import threading
import time
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from bench.common import machine_facts, markdown_table, rss_mb
from bridge.kafka.state import decode_state
from bridge.sim import dropcopy as dsim_mod
from bridge.sim import predexon as psim_mod
from bridge.timeutil import now_us
from tests.bridge_harness import BridgeProcess, wait_until
from tests.fault.test_broker_faults import (
    SUBS,
    assert_dropcopy_equal,
    assert_predexon_covered,
    dropcopy_config,
    start_both,
)
from tests.fault.test_cluster_failover import IN_SYNC_S, NODES, PIPELINE, STREAM_IDS
from tests.kafka_fixture import kafka_cluster, unique, wait_in_sync


class Positions:
    """The newest committed position time per stream, from the state topic (a thread)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": unique("soak"),
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "log_level": 3,
            }
        )
        self._consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        self.newest: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for msg in self._consumer.consume(500, 0.2):
                value = msg.value()
                if msg.error() is not None or value is None:
                    continue
                entry = decode_state(value)
                position = entry.position
                at = position.event_time_us or position.live_time_us if position else None
                if entry.backfill is None and at is not None:
                    self.newest[entry.stream_id] = max(self.newest.get(entry.stream_id, 0), at)

    def lag_s(self) -> float | None:
        """The largest lag of the streams (None until every stream committed)."""
        if set(self.newest) < set(STREAM_IDS):
            return None
        now = now_us()
        return max((now - self.newest[s]) / 1e6 for s in STREAM_IDS)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--rate", type=float, default=40, help="DropCopy records/s live")
    parser.add_argument("--predexon-rate", type=float, default=10, help="events/s per channel")
    parser.add_argument("--node-kill-s", type=float, default=60)
    parser.add_argument("--bridge-kill-s", type=float, default=300)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    pick = random.Random(seed)
    run_s = args.minutes * 60
    total = int(args.rate * run_s / 0.9)  # a tenth replayed from the journal, the rest live
    work = Path(tempfile.mkdtemp(prefix="polybridge-soak-"))
    print(f"soak under chaos: {args.minutes:g} min, seed {seed}, logs in {work}", flush=True)
    rows: list[list[object]] = []
    kills = {"node": 0, "bridge": 0}
    with (
        kafka_cluster(work) as cluster,
        dsim_mod.SimulatorThread(dropcopy_config(total, args.rate)) as dsim,
        psim_mod.SimulatorThread(
            psim_mod.SimConfig(
                seed=12, rate=args.predexon_rate, channels=("orders", "crypto"), confirm_scale=0.02
            )
        ) as psim,
    ):
        prefix = unique("soak") + "."
        both = start_both(work, cluster.bootstrap_servers, dsim, psim, prefix, pipeline=PIPELINE)
        bridge = BridgeProcess(both, work / "bridge.log")
        wait_until(both.flowing, 120, "every stream flowing", poll=0.5)
        positions = Positions(cluster.bootstrap_servers, prefix + "polybridge.state")
        started = time.monotonic()
        next_node = started + args.node_kill_s
        next_bridge = started + args.bridge_kill_s
        next_row = started + 60
        rss: list[float] = []
        try:
            while (now := time.monotonic()) - started < run_s:
                if now >= next_node:
                    node = pick.choice(sorted(cluster.nodes))
                    cluster.kill(node)
                    cluster.restart(node)
                    wait_in_sync(cluster.bootstrap_servers, NODES, IN_SYNC_S)
                    kills["node"] += 1
                    next_node += args.node_kill_s  # on the minute, unless the sync took longer
                if now >= next_bridge:
                    os.kill(bridge.process.pid, signal.SIGKILL)
                    bridge.wait(30)
                    bridge = BridgeProcess(both, work / "bridge.log")
                    kills["bridge"] += 1
                    next_bridge += args.bridge_kill_s
                code = bridge.process.poll()
                if code is not None:
                    raise SystemExit(f"the bridge exited ({code}): see {work / 'bridge.log'}")
                mb = rss_mb(bridge.process.pid)
                if mb is not None:
                    rss.append(mb)
                if now >= next_row:
                    lag = positions.lag_s()
                    rows.append(
                        [
                            len(rows) + 1,
                            kills["node"],
                            kills["bridge"],
                            f"{max(rss):.0f}" if rss else "-",
                            f"{lag:.1f}" if lag is not None else "-",
                            f"{dsim.simulator.stats.generated:,}",
                        ]
                    )
                    print(" | ".join(str(c) for c in rows[-1]), flush=True)
                    rss = []
                    next_row += 60
                time.sleep(1.0)  # the sampling period, not a synchronisation
            end_us = now_us()
            assert_dropcopy_equal(both)
            results = [
                both.dc.compare(both.dsim, kind).summary()
                for kind in sorted(
                    {k.split(".", 1)[1] for k in STREAM_IDS if k.startswith("dropcopy.")}
                )
            ]
            missed = assert_predexon_covered(both, end_us)
            gaps = {s.stream_id: len(both.pdx.gaps(s)) for s in SUBS}
        finally:
            positions.close()
            bridge.terminate(60)
    print()
    print(machine_facts())
    print(
        markdown_table(
            [
                "min",
                "node kills",
                "bridge kills",
                "RSS MB (max)",
                "lag s (max stream)",
                "generated",
            ],
            rows,
        )
    )
    print("\n".join(results))
    print(f"predexon: missed inside gaps {missed}; gap records {gaps}")


if __name__ == "__main__":
    main()
