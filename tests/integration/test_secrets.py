"""No configured secret ever shows: not in text or JSON logs, /metrics, /readyz, error
messages or `polybridge check` output, even when the credentials are refused.

Two bridge runs, each with one refused credential and one that works (so the bridge keeps
running and its endpoint can be scraped):
1. text logs: a wrong static DropCopy token (env var), the right Predexon key (env var);
2. JSON logs: a Private Key JWT client (key file) that works, a wrong Predexon key (file).
Both pass a librdkafka `sasl.password` through `[kafka.properties]`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from bridge.embedded import free_port
from bridge.sim import predexon as predexon_sim
from bridge.sim.dropcopy import SimConfig, SimulatorThread
from tests.bridge_harness import wait_until, write_setup
from tests.integration.test_metrics import get, metrics_config, scrape, value

PRO_KEY = "sim-pro-key"
SASL_PASSWORD = "sasl-SECRET-91bc7e"
WRONG_TOKEN = "dc-static-SECRET-7f3a9d"
WRONG_PREDEXON_KEY = "pdx-wrong-SECRET-55aa01"


def _predexon(pdx: predexon_sim.SimulatorThread, key_source: str) -> str:
    url = pdx.sim.url_for(PRO_KEY).replace(PRO_KEY, "{api_key}")
    return (
        f'[predexon]\nurl = "{url}"\n{key_source}\nplan = "pro"\n'
        '[[predexon.subscriptions]]\nname = "crypto"\nchannel = "crypto"\n'
        'filters = { feeds = ["*"] }\n'
    )


def _run_bridge(
    config: Path, log_format: str, env: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [
                *(sys.executable, "-m", "bridge", "--log-format", log_format),
                *("--log-level", "DEBUG", "run", "--config", str(config)),
            ],
            stdout=out,
            stderr=out,
            env={**os.environ, **env},
        )


def _check_output(config: Path, env: dict[str, str], failing: str) -> str:
    """`polybridge check`'s output; it must exit 1 with exactly the `failing` check
    FAILed (the refused credential) and every other check OK."""
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    verdicts = {
        line[5:].split(":", 1)[0]: line[:4].strip()
        for line in result.stdout.splitlines()
        if line[:4] in ("OK  ", "FAIL")
    }
    assert {name for name, verdict in verdicts.items() if verdict == "FAIL"} == {failing}, output
    assert "settings" in verdicts and "kafka" in verdicts, output
    return output


JWT = re.compile(r"eyJ[\w-]+\.eyJ[\w-]+\.[\w-]+")
"""A JSON Web Token (header and claims base64url JSON): any token the bridge minted or was
given, whichever it is."""


def _minted(dc: SimulatorThread) -> list[str]:
    """Record every client assertion the bridge signs and every access token the
    simulator's token endpoint gives it: the secrets a Private Key JWT client holds."""
    minted: list[str] = []
    grant = dc.simulator._grant
    handle = grant.handle

    def recording(body: Any) -> dict[str, Any]:
        if isinstance(body.get("client_assertion"), str):
            minted.append(body["client_assertion"])
        answer = handle(body)
        minted.append(answer["access_token"])
        return answer

    grant.handle = recording  # type: ignore[method-assign]
    return minted


def _stopped(port: int, stream: str, log: Path) -> bool:
    """This instance runs the stream (the group assigned it), its pipeline has ended, and
    the bridge logged why."""
    samples = scrape(port)
    return (
        value(samples, "polybridge_stream_owned", stream) == 1
        and value(samples, "polybridge_up", stream) == 0
        and f"stream={stream} stopped" in log.read_text(errors="replace")
    )


def _assert_absent(secrets: list[str], **outputs: str) -> None:
    for where, text in outputs.items():
        for secret in secrets:
            assert secret not in text, f"secret {secret[:12]}... found in {where}"
        assert not JWT.search(text), f"a JWT found in {where}"


def test_no_secret_in_logs_metrics_or_errors(
    kafka_bootstrap: str, tmp_path: Path, unique_name
) -> None:
    properties = f'[kafka.properties]\n"sasl.password" = "{SASL_PASSWORD}"\n'
    with (
        SimulatorThread(SimConfig(prefill=200, rate=50, heartbeat_s=0.2)) as dc,
        predexon_sim.SimulatorThread(predexon_sim.SimConfig(rate=5.0)) as pdx,
    ):
        # 1. wrong static token (refused: UNAUTHENTICATED), right Predexon key; text logs.
        port = free_port()
        run1 = tmp_path / "run1"
        run1.mkdir()
        setup = write_setup(
            run1,
            kafka_bootstrap,
            dc,
            unique_name("secrets1") + ".",
            kinds=("executions",),
            extra=metrics_config(port) + _predexon(pdx, 'api_key_env = "TEST_PDX_KEY"'),
            dropcopy="reconnect_initial_s = 0.05\nreconnect_max_s = 0.2",
            auth='mode = "static"\ntoken_env = "TEST_DC_TOKEN"',
        )
        config1 = setup.config_path
        config1.write_text(config1.read_text() + properties)
        env1 = {"TEST_DC_TOKEN": WRONG_TOKEN, "TEST_PDX_KEY": PRO_KEY}
        bridge = _run_bridge(config1, "text", env1, run1 / "bridge.log")
        try:
            wait_until(
                lambda: (
                    _stopped(port, "dropcopy.executions", run1 / "bridge.log")
                    and value(scrape(port), "polybridge_records_total", "predexon.crypto") > 0
                ),
                90,
                "the refused DropCopy stream down, Predexon flowing",
            )
            metrics1 = get(port, "/metrics")
            ready1 = get(port, "/readyz")
        finally:
            bridge.terminate()
            bridge.wait(30)
        log1 = (run1 / "bridge.log").read_text()
        assert "UNAUTHENTICATED" in log1 and "stream=dropcopy.executions stopped" in log1, log1
        secrets1 = [WRONG_TOKEN, PRO_KEY, SASL_PASSWORD]
        _assert_absent(
            secrets1,
            text_log=log1,
            metrics=str(metrics1),
            readyz=str(ready1),
            check=_check_output(config1, env1, failing="dropcopy token"),
        )

        # 2. Private Key JWT (works), wrong Predexon key (HTTP 401); JSON logs.
        port = free_port()
        run2 = tmp_path / "run2"
        run2.mkdir()
        key_path = dc.create_client("secrets-client")
        minted = _minted(dc)
        pem_lines = [
            line
            for line in key_path.read_text().splitlines()
            if line and not line.startswith("-----")
        ]
        (run2 / "pdx.key").write_text(WRONG_PREDEXON_KEY)
        setup = write_setup(
            run2,
            kafka_bootstrap,
            dc,
            unique_name("secrets2") + ".",
            kinds=("executions",),
            extra=metrics_config(port) + _predexon(pdx, f'api_key_file = "{run2 / "pdx.key"}"'),
            auth=(
                'mode = "private_key_jwt"\nclient_id = "secrets-client"\n'
                f'private_key_file = "{key_path}"\ntoken_url = "{dc.token_url}"\n'
                f'audience = "{dc.simulator.config.api_audience}"'
            ),
        )
        config2 = setup.config_path
        config2.write_text(config2.read_text() + properties)
        bridge = _run_bridge(config2, "json", {}, run2 / "bridge.log")
        try:
            wait_until(
                lambda: (
                    _stopped(port, "predexon.crypto", run2 / "bridge.log")
                    and value(scrape(port), "polybridge_records_total", "dropcopy.executions") > 0
                ),
                90,
                "the refused Predexon stream down, DropCopy flowing",
            )
            metrics2 = get(port, "/metrics")
            ready2 = get(port, "/readyz")
        finally:
            bridge.terminate()
            bridge.wait(30)
        log2 = (run2 / "bridge.log").read_text()
        # JSON logs parse line by line (librdkafka and gRPC write through logging too).
        entries = [json.loads(line) for line in log2.splitlines() if line.strip()]
        assert all({"time", "level", "logger", "message"} <= e.keys() for e in entries)
        assert "HTTP 401" in log2 and '"level": "ERROR"' in log2, log2
        check2 = _check_output(config2, {}, failing="predexon handshake")
        # The bridge and `check` each minted an assertion and got an access token.
        assert len(minted) >= 4, minted
        secrets2 = [WRONG_PREDEXON_KEY, SASL_PASSWORD, *pem_lines, *minted]
        _assert_absent(
            secrets2, json_log=log2, metrics=str(metrics2), readyz=str(ready2), check=check2
        )
