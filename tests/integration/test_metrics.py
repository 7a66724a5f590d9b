"""/metrics during a real bridge run: counters move, lag is reported, reconnects counted."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

from bridge.embedded import free_port
from bridge.eos.contract import PipelineStats
from bridge.metrics import BridgeCollector, StreamView, by_stream, parse_text
from bridge.sim.dropcopy import SimConfig, SimulatorThread
from tests.bridge_harness import BridgeProcess, wait_until, write_setup

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def metrics_config(port: int) -> str:
    return f'[metrics]\nport = {port}\nhost = "127.0.0.1"\n'


def get(port: int, path: str) -> tuple[int, str] | None:
    """(status, body) of GET path, or None while nothing listens yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def scrape(port: int) -> Samples:
    answer = get(port, "/metrics")
    return parse_text(answer[1]) if answer and answer[0] == 200 else {}


def value(samples: Samples, name: str, stream: str) -> float:
    return by_stream(samples, name).get(stream, 0.0)


def test_metrics_move_during_a_run_and_count_reconnects(
    kafka_bootstrap: str, tmp_path: Path, unique_name
) -> None:
    port = free_port()
    stream = "dropcopy.executions"
    config = SimConfig(prefill=2_000, rate=400, heartbeat_s=0.1)
    with SimulatorThread(config) as sim:
        setup = write_setup(
            tmp_path,
            kafka_bootstrap,
            sim,
            unique_name("metrics") + ".",
            kinds=("executions",),
            extra=metrics_config(port),
            dropcopy="reconnect_initial_s = 0.05\nreconnect_max_s = 0.2",
        )
        bridge = BridgeProcess(setup, tmp_path / "bridge.log")
        try:
            first: Samples = {}

            def counting() -> bool:
                nonlocal first
                first = scrape(port)
                return value(first, "polybridge_records_total", stream) > 0

            wait_until(counting, 90, "records_total > 0 on /metrics")
            records = value(first, "polybridge_records_total", stream)
            commits = value(first, "polybridge_commits_total", stream)
            assert value(first, "polybridge_up", stream) == 1.0
            assert value(first, "polybridge_bytes_total", stream) > 0
            wait_until(
                lambda: (
                    value(scrape(port), "polybridge_records_total", stream) > records
                    and value(scrape(port), "polybridge_commits_total", stream) > commits
                ),
                60,
                "records_total and commits_total to increase",
            )
            later = scrape(port)
            lag = by_stream(later, "polybridge_lag_seconds")
            assert stream in lag and 0 <= lag[stream] < 3600, lag
            assert value(later, "polybridge_commit_latency_seconds_count", stream) > 0
            inf_bucket = later[
                ("polybridge_commit_latency_seconds_bucket", (("le", "+Inf"), ("stream", stream)))
            ]
            assert inf_bucket == value(later, "polybridge_commit_latency_seconds_count", stream)

            # An upstream fault: every call is cut after 3 responses.
            sim.faults.drop_after_responses = 3
            wait_until(
                lambda: value(scrape(port), "polybridge_reconnects_total", stream) >= 2,
                60,
                "reconnects_total to count the dropped calls",
            )
            reasons = {
                dict(labels)["reason"]
                for (name, labels), _ in scrape(port).items()
                if name == "polybridge_reconnects_total"
            }
            assert "unavailable" in reasons, reasons
            sim.faults.drop_after_responses = None
            assert bridge.terminate() == 0, bridge.log()[-3000:]
        finally:
            if bridge.process.returncode is None:
                bridge.kill()


def test_commit_latency_histogram_counts_each_commit_once() -> None:
    stats = PipelineStats()
    collector = BridgeCollector(lambda: [StreamView("s", stats, None)])

    def histogram() -> dict[str, float]:
        found = {}
        for family in collector.collect():
            for sample in family.samples:
                if sample.name.startswith("polybridge_commit_latency_seconds"):
                    found[sample.name + sample.labels.get("le", "")] = sample.value
        return found

    stats.commit_seconds += [0.002, 0.02]
    stats.commits = 2
    first = histogram()
    assert first["polybridge_commit_latency_seconds_count"] == 2
    assert first["polybridge_commit_latency_seconds_bucket0.0025"] == 1
    assert histogram()["polybridge_commit_latency_seconds_count"] == 2  # nothing new
    stats.commit_seconds.append(7.0)
    stats.commits = 3
    third = histogram()
    assert third["polybridge_commit_latency_seconds_count"] == 3
    assert third["polybridge_commit_latency_seconds_bucket5.0"] == 2
    assert third["polybridge_commit_latency_seconds_bucket+Inf"] == 3
    assert abs(third["polybridge_commit_latency_seconds_sum"] - 7.022) < 1e-9
