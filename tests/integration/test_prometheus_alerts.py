"""deploy/prometheus/alerts.yml in a real Prometheus scraping a real bridge: alerts fire.

Prometheus (Debian's `prometheus` package, `make promtool`) runs on a free loopback port with
its own TSDB in tmp, a configuration derived from deploy/prometheus.yml (its scrape job, the
targets rewritten to the bridges' metrics ports, 1 s scrape and evaluation intervals) and the
project's rule file with only the `for:` durations set to 0s: every `expr` is the project's.
Two bridges, both scraped, are driven through the failures the rules name, each asserted
through Prometheus's HTTP API (/api/v1/alerts):

- a stream refused by the exchange (its token lacks the scope) -> PolybridgeStreamDown;
- a second bridge (no stream group between them) takes over a stream of the first ->
  PolybridgeFenced on the first, and no PolybridgeStreamDown: the second runs the stream;
- the exchange goes away -> PolybridgeUpstreamDisconnected;
- the first bridge stops -> PolybridgeTargetDown for it alone.

The thresholds of PolybridgeNoCommittedProgress (120 s), PolybridgeCommitLatencyHigh and the
increase() windows are too long for a live run; deploy/prometheus/alerts_test.yml covers
them with promtool.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bridge.embedded import free_port
from bridge.sim.dropcopy import SimConfig, SimulatorThread
from bridge.sim.tokens import ALL_SCOPES
from tests.bridge_harness import PARTICIPANT, BridgeProcess, wait_until, write_setup

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "alerts.yml"

EXECUTIONS = "dropcopy.executions"
TRADES = "dropcopy.trade_captures"
INSTRUMENTS = "dropcopy.instrument_states"

Alert = dict[str, Any]


def http_json(url: str) -> Any | None:
    """The decoded JSON body of GET url, or None while nothing answers (yet)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
        return None


def short_rules(path: Path) -> Path:
    """The project's rules with every `for:` set to 0s; expressions, labels, annotations
    unchanged (asserted)."""
    data = yaml.safe_load(RULES.read_text())
    for group in data["groups"]:
        for rule in group["rules"]:
            rule["for"] = "0s"
    path.write_text(yaml.safe_dump(data, sort_keys=False))

    def without_for(rules: dict[str, Any]) -> list[list[dict[str, Any]]]:
        return [
            [{k: v for k, v in rule.items() if k != "for"} for rule in group["rules"]]
            for group in rules["groups"]
        ]

    assert without_for(yaml.safe_load(path.read_text())) == without_for(
        yaml.safe_load(RULES.read_text())
    )
    return path


def prometheus_config(path: Path, rules: Path, targets: list[str]) -> Path:
    """deploy/prometheus.yml with test intervals, the test's rule file and `targets`."""
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    config["global"] = {
        "scrape_interval": "1s",
        "scrape_timeout": "1s",
        "evaluation_interval": "1s",
    }
    config["rule_files"] = [str(rules)]
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": targets}]
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class Prometheus:
    """A Prometheus server process on loopback, its log and TSDB under `workdir`."""

    def __init__(self, workdir: Path, config: Path) -> None:
        binary = shutil.which("prometheus")
        assert binary, "prometheus not found: run `make promtool` (Debian package prometheus)"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "prometheus.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=self._log,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def api(self, path: str) -> Any | None:
        assert self.process.poll() is None, f"prometheus exited:\n{self.log()}"
        answer = http_json(self.url + path)
        if answer is None or answer.get("status") != "success":
            return None
        return answer["data"]

    def alerts(self, state: str | None = "firing") -> list[Alert]:
        """Active alerts (firing, or `state`, or any state with None). Prometheus must be
        answering: an empty list always means "none active"."""
        data = self.api("/api/v1/alerts")
        assert data is not None, f"prometheus did not answer /api/v1/alerts:\n{self.log()}"
        alerts: list[Alert] = data["alerts"]
        return [a for a in alerts if state is None or a["state"] == state]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector of `expr`; empty also while Prometheus is starting."""
        data = self.api("/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        return data["result"] if data else []

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()


def named(alerts: list[Alert], name: str, **labels: str) -> list[Alert]:
    return [
        a
        for a in alerts
        if a["labels"]["alertname"] == name
        and all(a["labels"].get(k) == v for k, v in labels.items())
    ]


def about(alerts: list[Alert], *streams: str) -> list[Alert]:
    """Alerts on `streams`, but PolybridgeCommitLatencyHigh: how fast this machine's Kafka
    commits under other load is not what this test is about (alerts_test.yml covers it)."""
    return [
        a
        for a in alerts
        if a["labels"].get("stream") in streams
        and a["labels"]["alertname"] != "PolybridgeCommitLatencyHigh"
    ]


def diagnosis(prom: Prometheus | None, *bridges: BridgeProcess | None) -> str:
    """What Prometheus and the bridges show, for a failure message."""
    parts = []
    if prom is not None and prom.process.poll() is None:
        for expr in ("up", "polybridge_up", "polybridge_fenced_total"):
            values = {
                (r["metric"].get("instance"), r["metric"].get("stream")): r["value"][1]
                for r in prom.query(expr)
            }
            parts.append(f"{expr}: {values}")
        try:
            parts.append(f"alerts: {[(a['labels'], a['state']) for a in prom.alerts(None)]}")
        except AssertionError as exc:
            parts.append(str(exc))
    for bridge in bridges:
        if bridge is not None:
            tail = "\n".join(bridge.log().splitlines()[-25:])
            parts.append(f"{bridge.log_path.name} (exit {bridge.process.poll()}):\n{tail}")
    return "\n".join(parts)


def metrics_section(port: int) -> str:
    return f'[metrics]\nport = {port}\nhost = "127.0.0.1"\n'


# Fencing is what happens between bridges that do not share their streams through a stream
# group ([cluster] enabled = false: transactional fencing is the only guard).
NO_GROUP = "[cluster]\nenabled = false\n"


def test_alert_rules_fire_in_a_real_prometheus(
    kafka_bootstrap: str, tmp_path: Path, unique_name
) -> None:
    prometheus_dir = tmp_path / "prometheus"
    prometheus_dir.mkdir()
    first_port, second_port = free_port(), free_port()
    target, second_target = f"127.0.0.1:{first_port}", f"127.0.0.1:{second_port}"
    rules = short_rules(prometheus_dir / "alerts.yml")
    config = prometheus_config(prometheus_dir / "prometheus.yml", rules, [target, second_target])
    prefix = unique_name("alerts") + "."
    bridge: BridgeProcess | None = None
    second: BridgeProcess | None = None
    prometheus: Prometheus | None = None

    def wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
        try:
            wait_until(condition, timeout, what, poll=0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{diagnosis(prometheus, bridge, second)}") from None

    with SimulatorThread(SimConfig(prefill=500, rate=50, heartbeat_s=0.2)) as sim:
        try:
            setup = write_setup(
                tmp_path,
                kafka_bootstrap,
                sim,
                prefix,
                kinds=("executions", "trade_captures", "instrument_states"),
                extra=metrics_section(first_port) + NO_GROUP,
                dropcopy="reconnect_initial_s = 0.05\nreconnect_max_s = 0.5",
            )
            # A token without read:instruments: the exchange refuses instrument_states
            # (PERMISSION_DENIED), which ends that stream while the others run.
            scopes = [s for s in ALL_SCOPES if s != "read:instruments"]
            (tmp_path / "token").write_text(
                sim.issue_token(scopes, participant=PARTICIPANT, lifetime_s=3600)
            )
            bridge = BridgeProcess(setup, tmp_path / "bridge.log")
            wait(lambda: _answers(f"http://{target}/healthz"), 90, "the bridge's /healthz")
            prometheus = Prometheus(prometheus_dir, config)
            prom = prometheus

            def up(stream: str) -> dict[str, str]:
                """polybridge_up of `stream` by instance, as Prometheus scraped it."""
                return {
                    r["metric"]["instance"]: r["value"][1]
                    for r in prom.query(f'polybridge_up{{job="polybridge", stream="{stream}"}}')
                }

            wait(
                lambda: up(EXECUTIONS).get(target) == "1" and up(TRADES).get(target) == "1",
                90,
                "Prometheus to scrape both streams running",
            )

            # 1. The refused stream runs nowhere: down. The others raise nothing.
            def only_instruments_down() -> bool:
                alerts = prom.alerts(state=None)
                return (
                    len(named(prom.alerts(), "PolybridgeStreamDown", stream=INSTRUMENTS)) == 1
                    and not about(alerts, EXECUTIONS, TRADES)
                    and not named(alerts, "PolybridgeTargetDown", instance=target)
                )

            wait(only_instruments_down, 60, "PolybridgeStreamDown for instrument_states only")
            (down,) = named(prom.alerts(), "PolybridgeStreamDown", stream=INSTRUMENTS)
            assert down["labels"]["severity"] == "critical"
            assert down["labels"]["job"] == "polybridge"
            assert f"stream={INSTRUMENTS} stopped" in down["annotations"]["description"]

            # 2. A second bridge takes executions over: the first is fenced (and goes on with
            # trade_captures); the stream is not "down", since the second one runs it.
            (tmp_path / "second").mkdir()
            second_setup = write_setup(
                tmp_path / "second",
                kafka_bootstrap,
                sim,
                prefix,
                kinds=("executions",),
                extra=metrics_section(second_port) + NO_GROUP,
            )
            second = BridgeProcess(second_setup, tmp_path / "second.log")

            def fenced_not_down() -> bool:
                return (
                    len(named(prom.alerts(), "PolybridgeFenced", stream=EXECUTIONS)) == 1
                    and up(EXECUTIONS) == {target: "0", second_target: "1"}
                    and not named(prom.alerts(None), "PolybridgeStreamDown", stream=EXECUTIONS)
                )

            wait(fenced_not_down, 90, "PolybridgeFenced (not StreamDown) for executions")
            (fenced,) = named(prom.alerts(), "PolybridgeFenced", stream=EXECUTIONS)
            assert fenced["labels"]["severity"] == "warning"
            assert fenced["labels"]["instance"] == target
            assert not about(prom.alerts(state=None), TRADES)
            assert bridge.process.poll() is None, bridge.log()[-3000:]

            # 3. The exchange goes away: the running streams lose their upstream.
            sim.stop()
            wait(
                lambda: (
                    len(
                        named(
                            prom.alerts(),
                            "PolybridgeUpstreamDisconnected",
                            stream=TRADES,
                            instance=target,
                        )
                    )
                    == 1
                ),
                60,
                "PolybridgeUpstreamDisconnected for trade_captures",
            )
            assert not named(prom.alerts(state=None), "PolybridgeTargetDown")

            # 4. The first bridge stops (exit 1: two of its streams had ended): target down.
            assert bridge.terminate() == 1, bridge.log()[-3000:]
            # Its log says why each ended stream stopped (as the annotations say).
            stopped = {
                stream: [
                    line for line in bridge.log().splitlines() if f"stream={stream} stopped" in line
                ]
                for stream in (INSTRUMENTS, EXECUTIONS)
            }
            assert "permission denied" in " ".join(stopped[INSTRUMENTS]), bridge.log()[-3000:]
            assert "another" in " ".join(stopped[EXECUTIONS]), bridge.log()[-3000:]
            wait(
                lambda: len(named(prom.alerts(), "PolybridgeTargetDown", instance=target)) == 1,
                60,
                "PolybridgeTargetDown",
            )
            (gone,) = named(prom.alerts(), "PolybridgeTargetDown", instance=target)
            assert gone["labels"]["severity"] == "critical"
            assert gone["labels"]["job"] == "polybridge"
            assert not named(
                prom.alerts(state=None), "PolybridgeTargetDown", instance=second_target
            )
        finally:
            for process in (bridge, second):
                if process is not None and process.process.returncode is None:
                    # SIGTERM first: on exit the log says why each ended stream stopped.
                    process.process.send_signal(signal.SIGTERM)
                    try:
                        process.wait(45)
                    except subprocess.TimeoutExpired:
                        process.kill()
            if prometheus is not None:
                prometheus.stop()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False
