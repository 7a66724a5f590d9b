"""SIGKILL the bridge at random instants; after the last restart Kafka equals ground truth."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from bridge.sim.dropcopy import SimConfig, SimulatorThread
from tests.bridge_harness import ALL_KINDS, ALONE, BridgeProcess, wait_until, write_setup

TOTAL_RECORDS = 200_000
KILLS = 20


@pytest.mark.slow(250)
def test_sigkill_at_random_instants_loses_and_doubles_nothing(
    kafka_bootstrap: str, tmp_path: Path, unique_name
) -> None:
    rng = random.Random(20261121)
    # Most of the journal is replayed from the start, the rest arrives live while the
    # bridge is being killed, so kills land both in replay and in live streaming.
    config = SimConfig(
        seed=3,
        prefill=TOTAL_RECORDS // 2,
        rate=4_000,
        max_records=TOTAL_RECORDS,
        batch=200,
        heartbeat_s=0.05,
    )
    with SimulatorThread(config) as sim:
        setup = write_setup(
            tmp_path,
            kafka_bootstrap,
            sim,
            unique_name("crash") + ".",
            pipeline="max_latency_ms = 20\nmax_batch_records = 2000",
            extra=ALONE,
        )
        log = tmp_path / "bridge.log"
        served = sim.simulator.stats.responses
        for _ in range(KILLS):
            before = served["executions"]
            bridge = BridgeProcess(setup, log)
            # Kill only once this run is streaming (the simulator is serving it), at a random
            # instant after that: commits every 20 ms, so most kills land mid-transaction.
            wait_until(lambda before=before: served["executions"] > before + 2, 60, "streaming")
            time.sleep(rng.uniform(0.0, 1.0))  # the kill instant itself, not a synchronisation
            bridge.kill()
        final = BridgeProcess(setup, log)
        try:
            stats = sim.simulator.stats
            wait_until(lambda: stats.generated >= TOTAL_RECORDS, 120, "generation to end")
            setup.wait_equal(sim, timeout=180, log=log)
        finally:
            final.terminate()
        results = [setup.compare(sim, kind) for kind in ALL_KINDS]
        generated = sim.simulator.stats.generated
    assert generated == TOTAL_RECORDS
    assert sum(r.expected for r in results) == TOTAL_RECORDS
    assert all(r.equal for r in results), [r.summary() for r in results]
