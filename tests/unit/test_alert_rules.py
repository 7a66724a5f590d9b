"""deploy/prometheus/alerts.yml: valid for promtool, its unit tests pass, and it fits the code.

`promtool` comes from Debian's `prometheus` package (`make promtool` installs it; `make test`
depends on that target). Without it these tests fail rather than skip.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from bridge.metrics import exposed_names

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "alerts.yml"
RULE_TESTS = DEPLOY / "prometheus" / "alerts_test.yml"

SEVERITIES = {"critical", "warning", "info"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool not found: run `make promtool` (Debian package prometheus)"
    return subprocess.run(
        [binary, *args], capture_output=True, text=True, timeout=120, cwd=ROOT, check=False
    )


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_promtool_checks_the_rules_and_the_config_that_loads_them() -> None:
    rules = promtool("check", "rules", str(RULES))
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in rules.stdout, rules.stdout
    # deploy/prometheus.yml's rule_files resolves to the same file (checked with it).
    config = promtool("check", "config", str(DEPLOY / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr
    assert "SUCCESS: 1 rule files found" in config.stdout, config.stdout
    assert f"Checking {RULES}\n" in config.stdout, config.stdout


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout and "FAILED" not in result.stdout, result.stdout


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    fires: set[str] = set()
    silent: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - fires == set(), "alerts never shown firing"
    assert names - silent == set(), "alerts never shown not firing"


def test_every_alert_has_a_severity_and_tells_the_operator_what_to_do() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    assert {
        "PolybridgeTargetDown",
        "PolybridgeStreamDown",
        "PolybridgeNoCommittedProgress",
        "PolybridgeGapOpened",
        "PolybridgeDeadLettersGrowing",
        "PolybridgeCommitLatencyHigh",
        "PolybridgeFenced",
        "PolybridgeUnknownUpstreamFields",
        "PolybridgeUpstreamMaintenance",
    } <= set(names)
    for rule in rules:
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"].strip(), rule["alert"]
        assert len(annotations["description"]) > 150, rule["alert"]
    gap = next(r for r in rules if r["alert"] == "PolybridgeGapOpened")
    assert "[backfill] enabled" in gap["annotations"]["description"]  # says what fills it
    maintenance = next(r for r in rules if r["alert"] == "PolybridgeUpstreamMaintenance")
    assert maintenance["labels"]["severity"] == "info"


def test_rules_query_only_metrics_the_bridge_exposes() -> None:
    exprs = " ".join(rule["expr"] for rule in alert_rules())
    used = set(re.findall(r"\bpolybridge_[a-z_]+", exprs))
    assert {"polybridge_up", "polybridge_fenced_total", "polybridge_upstream_maintenance"} <= used
    unknown = used - exposed_names()
    assert not unknown, f"rules query metrics bridge/metrics.py does not expose: {unknown}"
    # The target-down rule matches the job deploy/prometheus.yml scrapes.
    jobs = {
        job["job_name"]
        for job in yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["scrape_configs"]
    }
    assert set(re.findall(r'job="([^"]+)"', exprs)) == jobs


def test_compose_mounts_the_rules_where_the_config_looks_for_them() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = {}
    for volume in compose["services"]["prometheus"]["volumes"]:
        source, target = volume.split(":")[:2]
        mounts[target] = (ROOT / source).resolve()
    config_dir = Path("/etc/prometheus")
    assert mounts[str(config_dir / "prometheus.yml")] == DEPLOY / "prometheus.yml"
    assert config["rule_files"], "deploy/prometheus.yml loads no rules"
    for rule_file in config["rule_files"]:
        assert (DEPLOY / rule_file).resolve() == RULES
        assert mounts[str(config_dir / rule_file)] == RULES


def test_dashboard_shows_every_exposed_metric_the_alerts_watch() -> None:
    dashboard = json.loads((DEPLOY / "grafana/dashboards/polybridge.json").read_text())
    exprs = " ".join(t["expr"] for panel in dashboard["panels"] for t in panel["targets"])
    shown = set(re.findall(r"\bpolybridge_[a-z_]+", exprs))
    watched = set(re.findall(r"\bpolybridge_[a-z_]+", " ".join(r["expr"] for r in alert_rules())))
    missing = watched - shown
    assert not missing, f"alerted on but not on the dashboard: {missing}"
    assert 'ALERTS{alertstate="firing", alertname=~"Polybridge.*"}' in exprs
