"""A real bridge against the simulator: a stream that goes silent while its call stays open
is resumed after `dropcopy.silence_timeout_s`, and a maintenance window is waited out
without a failure state; both lose nothing, double nothing and record no gap."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

from bridge.embedded import free_port
from bridge.sim.dropcopy import SimConfig, SimulatorThread
from tests.bridge_harness import BridgeProcess, BridgeSetup, gap_records, wait_until, write_setup
from tests.integration.test_metrics import Samples, get, metrics_config, scrape, value

KINDS = ("executions", "instrument_states")
STREAMS = tuple(f"dropcopy.{kind}" for kind in KINDS)
FAST_RECONNECT = "reconnect_initial_s = 0.05\nreconnect_max_s = 0.2\n"


def _reconnects(samples: Samples, stream: str, reason: str) -> float:
    labels = (("reason", reason), ("stream", stream))
    return samples.get(("polybridge_reconnects_total", labels), 0.0)


def _assert_equal(setup: BridgeSetup, sim: SimulatorThread) -> None:
    results = [setup.compare(sim, kind) for kind in KINDS]
    assert all(r.equal for r in results), [r.summary() for r in results]


def test_silent_open_stream_is_resumed_within_the_timeout_losing_nothing(
    kafka_bootstrap: str, tmp_path: Path, unique_name
) -> None:
    port = free_port()
    config = SimConfig(
        seed=21, prefill=2_000, rate=400, max_records=8_000, batch=100, heartbeat_s=0.05
    )
    with SimulatorThread(config) as sim:
        setup = write_setup(
            tmp_path,
            kafka_bootstrap,
            sim,
            unique_name("silence") + ".",
            kinds=KINDS,
            extra=metrics_config(port),
            dropcopy=FAST_RECONNECT + "silence_timeout_s = 2.0\n",
        )
        bridge = BridgeProcess(setup, tmp_path / "bridge.log")
        try:
            wait_until(lambda: all(setup.count(k) > 0 for k in KINDS), 60, "records to flow")
            # From now on every call goes silent after 5 responses, the open ones at once:
            # no records, no heartbeats, the call and its connection stay up.
            sim.faults.silent_after_responses = 5
            silenced = time.monotonic()
            wait_until(
                lambda: all(_reconnects(scrape(port), s, "silence") >= 1 for s in STREAMS),
                2.0 + 10,
                "both streams resumed by the silence watchdog",
            )
            # Far below the 180 s default, keepalive (60 s + 20 s) or the load balancer.
            assert time.monotonic() - silenced < 2.0 + 10
            wait_until(
                lambda: all(_reconnects(scrape(port), s, "silence") >= 2 for s in STREAMS),
                30,
                "a second silent call resumed too",
            )
            sim.faults.silent_after_responses = None
            wait_until(lambda: sim.stats.generated >= 8_000, 90, "generation to end")
            setup.wait_equal(sim, KINDS, 90, bridge.log_path)
            samples = scrape(port)
        finally:
            assert bridge.terminate() == 0, bridge.log()[-3000:]
        _assert_equal(setup, sim)
    assert gap_records(setup) == []
    assert sim.stats.silenced >= 4
    for stream in STREAMS:
        assert _reconnects(samples, stream, "silence") >= 2
    assert "upstream silence (no message (not even a heartbeat) for 2s" in bridge.log()


def test_maintenance_window_is_not_a_failure_and_resumes_from_the_token_without_a_gap(
    kafka_bootstrap: str, tmp_path: Path, unique_name
) -> None:
    port = free_port()
    lead_s, length_s, retry_s = 15.0, 6.0, 1.0
    starts = time.time() + lead_s
    ends = starts + length_s

    def iso(seconds: float) -> str:
        return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat()

    with SimulatorThread(SimConfig(seed=22, prefill=2_000, batch=100, heartbeat_s=0.05)) as sim:
        # The simulator closes and refuses inside the announced window (and reopens a
        # little early: refusals after the window's end would be ordinary reconnects).
        sim.faults.maintenance = ((starts + 0.3, ends - 0.7),)
        setup = write_setup(
            tmp_path,
            kafka_bootstrap,
            sim,
            unique_name("maint") + ".",
            kinds=KINDS,
            extra=metrics_config(port),
            # A 2 s readiness window: without the maintenance rule /readyz would fail.
            pipeline="heartbeat_commit_interval_s = 0.5",
            dropcopy=FAST_RECONNECT,
            maintenance=f"weekly = false\nretry_interval_s = {retry_s}\n"
            f'extra = [{{ start = "{iso(starts)}", end = "{iso(ends)}" }}]',
        )
        bridge = BridgeProcess(setup, tmp_path / "bridge.log")
        try:
            wait_until(
                lambda: (get(port, "/readyz") or (0, ""))[0] == 200,
                max(1.0, starts - time.time() - 1.0),
                "/readyz 200 before the window (the bridge started too slowly for this test)",
            )

            def gauge(samples: Samples) -> list[float]:
                return [value(samples, "polybridge_upstream_maintenance", s) for s in STREAMS]

            wait_until(lambda: gauge(scrape(port)) == [1.0, 1.0], lead_s + length_s, "gauge 1")
            answer = get(port, "/readyz")
            assert answer is not None and answer[0] == 200, answer
            body = json.loads(answer[1])
            assert body["ready"] is True and body["not_ready"] == {}, body
            assert set(body["maintenance"]) == set(STREAMS), body
            assert all(v.startswith("maintenance") for v in body["maintenance"].values())
            sim.generate(2_000)  # the exchange moves on while the bridge is shut out

            # /readyz never fails, through the window and after it, until both streams are
            # connected again and the gauge is back to 0.
            answers: list[int] = []

            def back() -> bool:
                ready = get(port, "/readyz")
                answers.append(ready[0] if ready else 0)
                samples = scrape(port)
                return gauge(samples) == [0.0, 0.0] and all(
                    value(samples, "polybridge_upstream_connected", s) == 1.0 for s in STREAMS
                )

            wait_until(back, length_s + 30, "both streams back after the window", poll=0.2)
            assert time.time() >= ends - 0.7, "the streams came back inside the window"
            assert set(answers) == {200}, answers
            assert bridge.process.poll() is None  # still running
            setup.wait_equal(sim, KINDS, 60, bridge.log_path)
            samples = scrape(port)
        finally:
            assert bridge.terminate() == 0, bridge.log()[-3000:]
        _assert_equal(setup, sim)
    assert gap_records(setup) == []
    assert sim.stats.maintenance_refusals >= 2
    log = bridge.log()
    for stream in STREAMS:
        # One line when the window is entered, not one per attempt.
        entered = [
            line
            for line in log.splitlines()
            if f"stream={stream} the exchange refuses connections during" in line
        ]
        assert len(entered) == 1, entered
        assert "announced maintenance window" in entered[0]
        # A calm pace: about one attempt per retry_interval_s (plus one at the end).
        attempts = _reconnects(samples, stream, "maintenance")
        assert 1 <= attempts <= length_s / retry_s + 2, attempts
        assert _reconnects(samples, stream, "unavailable") == 0
    assert "token refused" not in log and "replay_unavailable" not in log
