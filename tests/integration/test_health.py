"""/healthz and /readyz of a real bridge process: not ready until streams commit."""

from __future__ import annotations

import json
from pathlib import Path

from bridge.embedded import free_port
from bridge.eos.contract import PipelineStats
from bridge.health import HealthServer, not_ready
from bridge.metrics import StreamView
from bridge.sim.dropcopy import Faults, SimConfig, SimulatorThread
from tests.bridge_harness import BridgeProcess, wait_until, write_setup
from tests.integration.test_metrics import get, metrics_config, scrape, value


def test_readyz_is_503_until_streams_commit_then_200(
    kafka_bootstrap: str, tmp_path: Path, unique_name
) -> None:
    port = free_port()
    # The exchange refuses every call until the test lifts the fault.
    config = SimConfig(prefill=500, heartbeat_s=0.1, faults=Faults(fail_next_calls=10**9))
    with SimulatorThread(config) as sim:
        setup = write_setup(
            tmp_path,
            kafka_bootstrap,
            sim,
            unique_name("health") + ".",
            kinds=("executions", "instrument_states"),
            extra=metrics_config(port),
            pipeline="heartbeat_commit_interval_s = 0.5",
            dropcopy="reconnect_initial_s = 0.05\nreconnect_max_s = 0.2",
        )
        bridge = BridgeProcess(setup, tmp_path / "bridge.log")
        try:
            wait_until(lambda: get(port, "/healthz") == (200, "ok\n"), 60, "/healthz 200")
            # Refused calls are visible as reconnects: the pipelines are up, nothing flows.
            wait_until(
                lambda: (
                    value(scrape(port), "polybridge_reconnects_total", "dropcopy.executions") >= 3
                ),
                60,
                "refused calls counted",
            )
            answer = get(port, "/readyz")
            assert answer is not None and answer[0] == 503, answer
            body = json.loads(answer[1])
            assert body["ready"] is False
            assert set(body["not_ready"]) == {"dropcopy.executions", "dropcopy.instrument_states"}

            sim.faults.fail_next_calls = 0
            wait_until(lambda: (get(port, "/readyz") or (0, ""))[0] == 200, 60, "/readyz 200")
            assert json.loads(get(port, "/readyz")[1])["not_ready"] == {}  # type: ignore[index]
            assert get(port, "/nope") == (404, "not found\n")
            assert bridge.terminate() == 0, bridge.log()[-3000:]
        finally:
            if bridge.process.returncode is None:
                bridge.kill()


def test_readiness_rules() -> None:
    stats = PipelineStats()
    views = [StreamView("s", stats, None)]
    assert not_ready(views, 10, now=100.0) == {"s": "pipeline not running"}
    stats.running = True
    assert not_ready(views, 10, now=100.0) == {"s": "no upstream progress committed yet"}
    stats.commits = 1
    stats.first_commit_at = stats.last_commit_at = 99.0
    assert not_ready(views, 10, now=100.0) == {}
    standby = StreamView("t", PipelineStats(), None, owned=False)  # another instance runs it
    assert not_ready([*views, standby], 10, now=100.0) == {}
    assert "last commit 11.0s ago" in not_ready(views, 10, now=110.0)["s"]
    server = HealthServer(lambda: views, 10)
    assert server.respond("/healthz").status == 200
    assert server.respond("/readyz").status in (200, 503)
    assert b"polybridge_up" in server.respond("/metrics").body
