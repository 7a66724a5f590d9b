"""Simulator -> bridge process -> Kafka, compared with the simulator's ground truth."""

from __future__ import annotations

from pathlib import Path

from bridge.sim.dropcopy import SimConfig, SimulatorThread
from tests.bridge_harness import ALL_KINDS, BridgeProcess, write_setup


def test_every_stream_lands_exactly_once_in_order_per_key(
    kafka_bootstrap: str, tmp_path: Path, unique_name
) -> None:
    config = SimConfig(seed=11, prefill=5_000, heartbeat_s=0.1, batch=200, rate=0)
    with SimulatorThread(config) as sim:
        setup = write_setup(tmp_path, kafka_bootstrap, sim, unique_name("e2e") + ".")
        bridge = BridgeProcess(setup, tmp_path / "bridge.log")
        try:
            setup.wait_equal(sim, log=bridge.log_path)
        finally:
            code = bridge.terminate()
        assert code == 0, bridge.log()
        results = [setup.compare(sim, kind) for kind in ALL_KINDS]
    assert all(r.equal for r in results), [r.summary() for r in results]
    assert all(r.expected > 0 for r in results)


def test_bridge_speaks_tls_to_the_exchange_trusting_a_custom_ca(
    kafka_bootstrap: str, tmp_path: Path, unique_name
) -> None:
    config = SimConfig(seed=12, prefill=1_000, heartbeat_s=0.1, tls=True)
    with SimulatorThread(config) as sim:
        assert sim.simulator.ca_path is not None
        setup = write_setup(
            tmp_path,
            kafka_bootstrap,
            sim,
            unique_name("tls") + ".",
            kinds=("executions",),
            tls_ca=sim.simulator.ca_path,
        )
        bridge = BridgeProcess(setup, tmp_path / "bridge.log")
        try:
            setup.wait_equal(sim, ("executions",), log=bridge.log_path)
        finally:
            assert bridge.terminate() == 0, bridge.log()
        assert setup.compare(sim, "executions").expected > 0
