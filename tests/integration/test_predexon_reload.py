"""SIGHUP applies changed Predexon filters live (`update`), without a restart or a gap."""

from __future__ import annotations

import signal
from pathlib import Path

from bridge.sim.predexon import SimConfig, SimulatorThread
from tests.predexon_harness import BridgeProcess, Sub, wait_until, write_setup


def test_sighup_updates_a_subscriptions_filters_live(
    kafka_bootstrap: str, tmp_path: Path, unique_name
) -> None:
    before = Sub("prices", "crypto", {"feeds": ["BTC/USD"]})
    after = Sub("prices", "crypto", {"feeds": ["ETH/USD"]})
    prefix = unique_name("reload") + "."
    with SimulatorThread(SimConfig(seed=5, rate=40, channels=("crypto",))) as sim:
        setup = write_setup(tmp_path, kafka_bootstrap, sim, prefix, [before])
        bridge = BridgeProcess(setup, tmp_path / "bridge.log")
        try:
            feeds = lambda: {v["feed"] for v in setup.decoded(before)}  # noqa: E731
            wait_until(lambda: "BTC/USD" in feeds(), 60, "BTC/USD prices", poll=0.3)
            write_setup(tmp_path, kafka_bootstrap, sim, prefix, [after])
            bridge.process.send_signal(signal.SIGHUP)
            wait_until(lambda: "ETH/USD" in feeds(), 60, "ETH/USD prices after SIGHUP", poll=0.3)
            subs = sim.call(sim.sim.subscriptions)
        finally:
            assert bridge.terminate() == 0, bridge.log()[-3000:]
        log = bridge.log()
    assert "stream=predexon.prices filters updated live" in log
    assert len(subs) == 1 and subs[0].filters == {"feeds": ["ETH/USD"]}, subs
    assert setup.gaps(before) == [], "an update is not a disconnect: no gap"
