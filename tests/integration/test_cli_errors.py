"""Bad configuration, unreachable broker, wrong credentials: one clear line, non-zero exit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bridge.sim.dropcopy import SimConfig, SimulatorThread
from tests.bridge_harness import write_setup


def _run(*args: str, timeout: float = 60, env: dict[str, str] | None = None):
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def _one_clear_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if "polybridge: error:" in line]
    assert len(lines) == 1, stderr
    return lines[0]


def test_unknown_key_is_named(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[kafka]\nbootstrap_server = "x:9092"\n')
    result = _run("run", "--config", str(config))
    assert result.returncode == 2
    assert "unknown key 'kafka.bootstrap_server'" in _one_clear_line(result.stderr)


def test_bad_value_names_key_and_value(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[pipeline]\nmax_latency_ms = -5\n")
    result = _run("run", "--config", str(config))
    assert result.returncode == 2
    line = _one_clear_line(result.stderr)
    assert "pipeline.max_latency_ms" in line and "-5" in line


def test_missing_config_file(tmp_path: Path) -> None:
    result = _run("run", "--config", str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    assert "does not exist" in _one_clear_line(result.stderr)


def test_invalid_toml(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[kafka\n")
    result = _run("run", "--config", str(config))
    assert result.returncode == 2
    assert "not valid TOML" in _one_clear_line(result.stderr)


def test_nothing_configured_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "empty.toml"
    config.write_text("")
    result = _run("run", "--config", str(config))
    assert result.returncode == 2
    assert "nothing to run" in _one_clear_line(result.stderr)


def test_unreachable_broker_is_one_line_within_bounded_time(tmp_path: Path) -> None:
    with SimulatorThread(SimConfig(prefill=10)) as sim:
        setup = write_setup(tmp_path, "127.0.0.1:1", sim, "x.", kinds=("executions",))
        result = _run("run", "--config", str(setup.config_path), timeout=60)
    assert result.returncode == 2
    assert "cannot reach Kafka at 127.0.0.1:1" in _one_clear_line(result.stderr)


def test_wrong_credentials_stop_the_stream_with_a_clear_message(
    kafka_bootstrap: str, tmp_path: Path, unique_name
) -> None:
    with SimulatorThread(SimConfig(prefill=10)) as sim:
        setup = write_setup(
            tmp_path,
            kafka_bootstrap,
            sim,
            unique_name("cred") + ".",
            kinds=("executions",),
            dropcopy="reconnect_initial_s = 0.05\nreconnect_max_s = 0.2",
        )
        (tmp_path / "token").write_text("not-a-valid-token")
        result = _run("run", "--config", str(setup.config_path), timeout=90)
        calls = sum(sim.simulator.stats.calls.values())
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    stopped = [line for line in result.stderr.splitlines() if "stopped:" in line]
    assert len(stopped) == 1, result.stderr
    assert "stream=dropcopy.executions" in stopped[0] and "UNAUTHENTICATED" in stopped[0]
    assert "not-a-valid-token" not in result.stderr
    assert calls <= 3  # a few fresh tokens tried, then stop: no reconnect storm


def test_missing_token_variable_is_named(kafka_bootstrap: str, tmp_path: Path, unique_name) -> None:
    with SimulatorThread(SimConfig(prefill=10)) as sim:
        setup = write_setup(
            tmp_path,
            kafka_bootstrap,
            sim,
            unique_name("env") + ".",
            kinds=("executions",),
            auth='mode = "static"\ntoken_env = "POLYBRIDGE_TEST_NO_SUCH_TOKEN"',
        )
        result = _run("run", "--config", str(setup.config_path), timeout=90)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "POLYBRIDGE_TEST_NO_SUCH_TOKEN" in result.stderr
