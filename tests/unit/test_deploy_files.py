"""docker-compose.yml, deploy/ and the Dockerfile agree with each other and with the code.

No Docker engine runs here, so this is what keeps `docker compose up` honest: the bridge
configuration loads, its endpoints are compose services on the ports those services listen
on, Prometheus scrapes the port the bridge serves, every metric the dashboard queries
exists, and the image's entrypoint is the console script.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from bridge.config import Settings, load_settings
from bridge.metrics import exposed_names

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def _services() -> dict[str, Any]:
    services: dict[str, Any] = _compose()["services"]
    return services


def _option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def _bridge_settings() -> Settings:
    services = _services()
    command = services["polybridge"]["command"]
    mounted = {
        target.split(":")[0]: source
        for source, target in (v.split(":", 1) for v in services["polybridge"]["volumes"])
    }
    config_in_container = _option(command, "--config")
    assert config_in_container in mounted, "the --config path is not mounted"
    assert (ROOT / mounted[config_in_container]).resolve() == DEPLOY / "bridge.compose.toml"
    return load_settings(DEPLOY / "bridge.compose.toml", environ={})


def _container_ports(service: dict[str, Any]) -> set[int]:
    return {int(str(p).split(":")[-1]) for p in service.get("ports", [])}


def test_compose_has_every_service_with_the_right_images() -> None:
    services = _services()
    assert set(services) == {
        "kafka",
        "schema-registry",
        "dropcopy-sim",
        "predexon-sim",
        "polybridge",
        "prometheus",
        "grafana",
    }
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "broker,controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft
    assert services["schema-registry"]["image"].startswith("confluentinc/cp-schema-registry:")
    for name in ("polybridge", "dropcopy-sim", "predexon-sim"):
        assert services[name]["image"] == "polybridge:local" and services[name]["build"] == "."
    assert services["dropcopy-sim"]["command"][:2] == ["sim", "dropcopy"]
    assert services["predexon-sim"]["command"][:2] == ["sim", "predexon"]
    assert services["polybridge"]["command"][-3] == "run"


def test_bridge_config_points_at_the_compose_services() -> None:
    services = _services()
    settings = _bridge_settings()

    kafka_env = services["kafka"]["environment"]
    advertised = {
        urlsplit(url).netloc for url in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    }
    assert settings.kafka.bootstrap_servers in advertised
    assert settings.kafka.bootstrap_servers.split(":")[0] == "kafka"
    assert kafka_env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == 1  # one broker
    assert settings.kafka.replication_factor == 1

    registry = urlsplit(settings.schema_registry.url)
    listeners = services["schema-registry"]["environment"]["SCHEMA_REGISTRY_LISTENERS"]
    assert registry.hostname == "schema-registry"
    assert registry.port == urlsplit(listeners).port

    dropcopy_cmd = services["dropcopy-sim"]["command"]
    assert settings.dropcopy.endpoint == f"dropcopy-sim:{_option(dropcopy_cmd, '--port')}"
    assert _option(dropcopy_cmd, "--host") == "0.0.0.0"
    assert settings.dropcopy.tls == ("--tls" in dropcopy_cmd)
    assert {s.kind for s in settings.dropcopy.streams} == {
        "executions",
        "trade_captures",
        "instrument_states",
        "position_changes",
    }

    predexon_cmd = services["predexon-sim"]["command"]
    url = urlsplit(settings.predexon.url)
    assert url.scheme == "ws" and url.hostname == "predexon-sim"
    assert url.port == int(_option(predexon_cmd, "--port"))
    assert _option(predexon_cmd, "--host") == "0.0.0.0"
    assert settings.predexon.subscriptions

    # The secrets the configuration names are provided to the container.
    env = services["polybridge"]["environment"]
    assert settings.dropcopy.auth.mode == "static"
    assert env[settings.dropcopy.auth.token_env]
    assert "--no-auth" in dropcopy_cmd  # so any token is accepted
    assert env[settings.predexon.api_key_env] == "sim-pro-key"


def test_metrics_port_is_served_scraped_and_probed() -> None:
    services = _services()
    settings = _bridge_settings()
    port = settings.metrics.port
    assert port and settings.metrics.host == "0.0.0.0"
    assert port in _container_ports(services["polybridge"])
    assert f"{port}:{port}" in services["polybridge"]["ports"]
    assert f"127.0.0.1:{port}/readyz" in " ".join(services["polybridge"]["healthcheck"]["test"])

    prometheus = services["prometheus"]
    assert "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]
    scrape = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["scrape_configs"]
    targets = [t for job in scrape for c in job["static_configs"] for t in c["targets"]]
    assert targets == [f"polybridge:{port}"]
    assert all(job.get("metrics_path", "/metrics") == "/metrics" for job in scrape)

    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"EXPOSE {port}" in dockerfile


def test_grafana_provisioning_and_dashboard_metrics_exist() -> None:
    services = _services()
    grafana = services["grafana"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in grafana["volumes"])
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    dashboards_dir = mounts["./deploy/grafana/dashboards"]

    datasources = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"]
    source = datasources[0]
    prometheus_port = int(services["prometheus"]["ports"][0].split(":")[-1])
    assert source["url"] == f"http://prometheus:{prometheus_port}"
    providers = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/dashboards/polybridge.yml").read_text()
    )["providers"]
    assert providers[0]["options"]["path"] == dashboards_dir

    dashboard = json.loads((DEPLOY / "grafana/dashboards/polybridge.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert all(
        t["datasource"]["uid"] == source["uid"]
        for panel in dashboard["panels"]
        for t in panel["targets"]
    )
    used = {name for expr in exprs for name in re.findall(r"\bpolybridge_[a-z_]+", expr)}
    unknown = used - exposed_names()
    assert not unknown, f"dashboard queries metrics bridge/metrics.py does not expose: {unknown}"
    # Every metric of the issue has a panel.
    for wanted in (
        "polybridge_records_total",
        "polybridge_bytes_total",
        "polybridge_commits_total",
        "polybridge_commit_latency_seconds_bucket",
        "polybridge_lag_seconds",
        "polybridge_reconnects_total",
        "polybridge_gaps_total",
        "polybridge_dead_letters_total",
        "polybridge_repeats_dropped_total",
        "polybridge_up",
    ):
        assert wanted in used, wanted


def test_dockerfile_image_runs_the_console_script_as_non_root() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["polybridge"] == "bridge.cli:main"
    entrypoint = re.search(r"^ENTRYPOINT (.+)$", dockerfile, re.M)
    assert entrypoint is not None and json.loads(entrypoint.group(1)) == ["polybridge"]
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.M)
    user = re.findall(r"^USER (\S+)$", dockerfile, re.M)
    assert user and user[-1] not in ("root", "0")
    assert "pip install ." in dockerfile and "[embedded]" not in dockerfile
    # What the image copies exists, and the build context does not exclude it.
    for copied in re.findall(r"^COPY (.+) \S+$", dockerfile, re.M):
        for path in copied.split():
            assert (ROOT / path).exists(), path
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert not {"bridge", "polymarket", "pyproject.toml", "README.md"} & set(ignored)
