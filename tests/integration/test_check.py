"""`polybridge check`: all OK against the simulators and Kafka; FAIL lines that say why."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.sim import predexon as predexon_sim
from bridge.sim.dropcopy import SimConfig, SimulatorThread
from tests.bridge_harness import write_setup

PRO_KEY = "sim-pro-key"


@pytest.fixture(scope="module")
def sims() -> Iterator[tuple[SimulatorThread, predexon_sim.SimulatorThread]]:
    with (
        SimulatorThread(SimConfig(prefill=10)) as dc,
        predexon_sim.SimulatorThread(predexon_sim.SimConfig(rate=1.0)) as pdx,
    ):
        yield dc, pdx


def _config(
    tmp_path: Path,
    bootstrap: str,
    sims: tuple[SimulatorThread, predexon_sim.SimulatorThread],
    *,
    key: str = PRO_KEY,
    filters: str = '{ feeds = ["*"] }',
    plan: str = "pro",
    auth: str = "",
) -> Path:
    dc, pdx = sims
    (tmp_path / "predexon.key").write_text(key)
    url = pdx.sim.url_for(PRO_KEY).replace(PRO_KEY, "{api_key}")
    predexon = (
        f'[predexon]\nurl = "{url}"\napi_key_file = "{tmp_path / "predexon.key"}"\n'
        f'plan = "{plan}"\n'
        f'[[predexon.subscriptions]]\nname = "crypto"\nchannel = "crypto"\nfilters = {filters}\n'
    )
    setup = write_setup(
        tmp_path, bootstrap, dc, "check.", kinds=("executions",), extra=predexon, auth=auth
    )
    return setup.config_path


def _check(config: Path, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _lines(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """check name -> its whole line."""
    found = {}
    for line in result.stdout.splitlines():
        if line.startswith(("OK ", "FAIL ")):
            name = line.split(None, 1)[1].split(":", 1)[0]
            found[name] = line
    return found


def test_all_ok_against_simulators_and_kafka(kafka_bootstrap: str, tmp_path: Path, sims) -> None:
    result = _check(_config(tmp_path, kafka_bootstrap, sims))
    lines = _lines(result)
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(lines) == {
        "settings",
        "kafka",
        "dropcopy channel",
        "dropcopy token",
        "dropcopy contract",
        "predexon plan",
        "predexon handshake",
    }, result.stdout
    assert all(line.startswith("OK") for line in lines.values()), result.stdout
    # The simulator serves reflection of the compiled contract: no drift, no drift lines.
    assert lines["dropcopy contract"] == (
        "OK   dropcopy contract: the exchange's descriptors (server reflection) match the "
        "compiled contract"
    ), result.stdout
    assert not [line for line in result.stdout.splitlines() if line.startswith("     - ")]


def test_unreachable_broker_fails_within_bounded_time(tmp_path: Path, sims) -> None:
    result = _check(_config(tmp_path, "127.0.0.1:1", sims), timeout=60)
    lines = _lines(result)
    assert result.returncode == 1
    assert lines["kafka"].startswith("FAIL kafka: cannot reach Kafka at 127.0.0.1:1 within 10 s")
    assert lines["dropcopy channel"].startswith("OK")


def test_bad_token_and_wrong_predexon_key_fail(kafka_bootstrap: str, tmp_path: Path, sims) -> None:
    token = tmp_path / "bad-token"
    token.write_text("not-a-token-value-123")
    result = _check(
        _config(
            tmp_path,
            kafka_bootstrap,
            sims,
            key="wrong-key-456",
            auth=f'mode = "static"\ntoken_file = "{token}"',
        )
    )
    lines = _lines(result)
    assert result.returncode == 1
    assert lines["kafka"].startswith("OK")
    assert lines["dropcopy token"].startswith("FAIL dropcopy token: static token from file")
    assert "not a JWT" in lines["dropcopy token"]
    assert "HTTP 401 (API key refused)" in lines["predexon handshake"]
    assert "not-a-token-value-123" not in result.stdout + result.stderr
    assert "wrong-key-456" not in result.stdout + result.stderr


def test_expired_token_missing_scope_and_plan(kafka_bootstrap: str, tmp_path: Path, sims) -> None:
    dc, _ = sims
    token = tmp_path / "scoped-token"
    token.write_text(dc.issue_token(["read:instruments"], lifetime_s=3600))
    result = _check(
        _config(
            tmp_path,
            kafka_bootstrap,
            sims,
            plan="dev",
            auth=f'mode = "static"\ntoken_file = "{token}"',
        )
    )
    lines = _lines(result)
    assert result.returncode == 1
    assert "lacks scope(s) read:dropcopy" in lines["dropcopy token"]
    assert 'wildcard subscriptions need plan = "pro"' in lines["predexon plan"]

    expired = tmp_path / "expired-token"
    expired.write_text(dc.issue_token(lifetime_s=-10))
    lines = _lines(
        _check(
            _config(
                tmp_path,
                kafka_bootstrap,
                sims,
                auth=f'mode = "static"\ntoken_file = "{expired}"',
            )
        )
    )
    assert "the token expired" in lines["dropcopy token"], lines


def test_missing_secrets_and_bad_settings(tmp_path: Path, sims) -> None:
    config = _config(
        tmp_path, "127.0.0.1:1", sims, auth='mode = "static"\ntoken_env = "NO_SUCH_VAR_XYZ"'
    )
    (tmp_path / "predexon.key").write_text("")
    result = _check(config, timeout=60)
    lines = _lines(result)
    assert "environment variable NO_SUCH_VAR_XYZ holds no access token" in lines["dropcopy token"]
    assert "predexon: no API key in" in lines["predexon handshake"]

    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        config.write_text(config.read_text() + f"[metrics]\nport = {port}\n")
        lines = _lines(_check(config, timeout=60))
    assert lines["metrics"].startswith(f"FAIL metrics: cannot listen on 127.0.0.1:{port}")

    bad = tmp_path / "bad.toml"
    bad.write_text("[metrics]\nport = 70000\n")
    result = _check(bad)
    assert result.returncode == 1
    assert "FAIL settings:" in result.stdout and "metrics.port" in result.stdout
    assert "70000" in result.stdout
