"""One owner per stream: a second bridge or a `state reset` fences a running bridge."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bridge.event_times import EARLIEST_US
from bridge.sim.dropcopy import SimConfig, SimulatorThread
from tests.bridge_harness import BridgeProcess, wait_until, write_setup

KINDS = ("executions",)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args], capture_output=True, text=True, timeout=60
    )


def test_a_second_bridge_fences_the_first_and_nothing_is_doubled(
    kafka_bootstrap: str, tmp_path: Path, unique_name
) -> None:
    config = SimConfig(seed=8, prefill=2_000, rate=2_000, max_records=12_000, heartbeat_s=0.05)
    with SimulatorThread(config) as sim:
        setup = write_setup(tmp_path, kafka_bootstrap, sim, unique_name("fence") + ".", kinds=KINDS)
        first = BridgeProcess(setup, tmp_path / "first.log")
        wait_until(lambda: setup.count("executions") > 500, 60, "the first bridge to write")
        # Outside the stream group (as a misconfigured second deployment would be), the
        # second bridge runs the stream at once: fencing is the safety net.
        second = BridgeProcess(
            setup, tmp_path / "second.log", env={"POLYBRIDGE_CLUSTER__ENABLED": "false"}
        )
        try:
            code = first.wait(60)
            assert code != 0
            assert "stream=dropcopy.executions" in first.log()
            assert "another polybridge instance" in first.log() or "fenced" in first.log()
            assert "Traceback" not in first.log()
            setup.wait_equal(sim, KINDS, 90, second.log_path)
        finally:
            assert second.terminate() == 0, second.log()
        result = setup.compare(sim, "executions")
    assert result.equal, result.summary()


def test_state_show_and_reset_rewind_safely(
    kafka_bootstrap: str, tmp_path: Path, unique_name
) -> None:
    with SimulatorThread(SimConfig(seed=2, prefill=3_000, heartbeat_s=0.05)) as sim:
        setup = write_setup(tmp_path, kafka_bootstrap, sim, unique_name("state") + ".", kinds=KINDS)
        config = str(setup.config_path)
        bridge = BridgeProcess(setup, tmp_path / "bridge.log")
        try:
            setup.wait_equal(sim, KINDS, log=bridge.log_path)
        finally:
            assert bridge.terminate() == 0, bridge.log()
        shown = _cli("state", "show", "--config", config)
        assert shown.returncode == 0, shown.stderr
        assert "dropcopy.executions" in shown.stdout and "bytes" in shown.stdout

        unknown = _cli("state", "reset", "dropcopy.nope", "--config", config)
        assert unknown.returncode == 2 and "unknown stream" in unknown.stderr

        # Reset while a bridge runs: the reset fences it, and it stops with a clear message.
        running = BridgeProcess(setup, tmp_path / "running.log")
        try:
            wait_until(lambda: "starting from" in running.log(), 30, "the bridge to start")
            reset = _cli(
                "state",
                "reset",
                "dropcopy.executions",
                "--to-time",
                "1970-01-01T00:00:00Z",
                "--config",
                config,
            )
            assert reset.returncode == 0, reset.stderr
            assert running.wait(60) != 0
            assert "dropcopy.executions" in running.log()
        finally:
            running.kill()  # a failed check must not leave the bridge running

        # Restarted from the rewound position it replays everything: repeats are dropped.
        again = BridgeProcess(setup, tmp_path / "again.log")
        try:
            # Before 2000 is 2000 (no upstream has older events; bridge.event_times).
            rewound = f"starting from event time {EARLIEST_US}us"
            wait_until(lambda: rewound in again.log(), 30, "the rewind")
            setup.wait_equal(sim, KINDS, log=again.log_path)
        finally:
            assert again.terminate() == 0, again.log()
        result = setup.compare(sim, "executions")
    assert result.equal, result.summary()
