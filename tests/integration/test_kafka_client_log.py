"""librdkafka's own log lines reach Python logging (bridge.kafka.client_log), never raw stderr.

No broker is needed: every test points its clients at a port nothing listens on, which makes
librdkafka log a connection failure every few tens of milliseconds.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined]

from bridge.embedded import free_port
from bridge.kafka.client_log import ClientLog, client_log_config
from bridge.sim.dropcopy import SimConfig, SimulatorThread
from tests.bridge_harness import write_setup

RAW_LIBRDKAFKA_LINE = re.compile(r"^%\d\|")
"""librdkafka's own stderr format: %<syslog level>|<time>|<facility>|<client>| ..."""

RUN_BOUND_S = 40.0
"""`polybridge run` gives up on an unreachable broker after 10 s; the rest is start-up."""


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _new_client(kind: str, conf: dict[str, Any]) -> Any:
    if kind == "producer":
        return Producer(conf)
    if kind == "consumer":
        return Consumer({**conf, "group.id": "client-log-test"})
    return AdminClient(conf)


@pytest.mark.parametrize("kind", ["producer", "consumer", "admin"])
def test_client_lines_arrive_on_poll_deduplicated_and_never_raw(
    kind: str, capfd: pytest.CaptureFixture[str]
) -> None:
    address = f"127.0.0.1:{free_port()}"
    out = Records()
    target = logging.getLogger(f"test_client_log.{uuid.uuid4().hex}")
    target.handlers[:] = [out]
    target.propagate = False
    target.setLevel(logging.DEBUG)
    client_log = ClientLog(target)
    conf: dict[str, Any] = {"bootstrap.servers": address}
    client = _new_client(kind, {**conf, **client_log_config(conf), "logger": client_log})
    # Metadata requests retry the connection every ~50 ms: many identical failures.
    with pytest.raises(KafkaException):
        client.list_topics(timeout=2)
    # Measured: confluent-kafka delivers these lines only from poll(), for all three kinds.
    assert out.records == []
    client.poll(0)
    assert len(out.records) == 1
    client_log.flush()
    del client
    assert len(out.records) == 2
    first, summary = (r.getMessage() for r in out.records)
    prefix = "consumer" if kind == "consumer" else "producer"
    line = (
        rf"librdkafka client=rdkafka#{prefix}-\d+ FAIL: {address}/bootstrap: Connect to "
        rf"ipv4#{address} failed: Connection refused \(after \d+ms in state CONNECT\)"
    )
    assert re.fullmatch(line, first)
    # The summary quotes the newest of the repeats: its "after N ms" may differ.
    repeats = re.fullmatch(line + r" \(repeated (\d+) times\)", summary)
    assert repeats is not None, summary
    assert int(repeats.group(1)) >= 5
    # librdkafka's ERR level is a warning here: the bridge reports outcomes itself.
    assert {r.levelno for r in out.records} == {logging.WARNING}
    assert capfd.readouterr().err == ""


def _run_unreachable(tmp_path: Path, *global_args: str) -> tuple[str, list[str]]:
    """`polybridge [global_args] run` against a free port: the address and stderr lines."""
    address = f"127.0.0.1:{free_port()}"
    with SimulatorThread(SimConfig(prefill=10)) as sim:
        setup = write_setup(tmp_path, address, sim, "x.", kinds=("executions",))
        command = [sys.executable, "-m", "bridge", *global_args, "run"]
        started = time.monotonic()
        result = subprocess.run(
            [*command, "--config", str(setup.config_path)],
            capture_output=True,
            text=True,
            timeout=RUN_BOUND_S + 30,
        )
        elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr
    assert elapsed < RUN_BOUND_S, f"took {elapsed:.1f} s"
    lines = result.stderr.splitlines()
    assert not [line for line in lines if RAW_LIBRDKAFKA_LINE.match(line)], result.stderr
    # Before bridge.kafka.client_log: ~190 raw librdkafka lines in these 10 s. Now the admin
    # client that fails is never polled, so its lines are dropped; a few deduplicated
    # librdkafka lines would still fit in this bound.
    assert 1 <= len(lines) <= 5, result.stderr
    return address, lines


def test_unreachable_broker_text_one_error_line_no_raw_librdkafka(tmp_path: Path) -> None:
    address, lines = _run_unreachable(tmp_path)
    errors = [line for line in lines if "polybridge: error:" in line or " ERROR " in line]
    assert len(errors) == 1, lines
    assert f"cannot reach Kafka at {address}" in errors[0]
    assert "Traceback" not in "\n".join(lines)


def test_unreachable_broker_json_every_line_is_json(tmp_path: Path) -> None:
    address, lines = _run_unreachable(tmp_path, "--log-format", "json")
    entries = [json.loads(line) for line in lines]
    assert all(
        isinstance(e, dict) and {"time", "level", "logger", "message"} <= e.keys() for e in entries
    )
    errors = [e for e in entries if e["level"] == "ERROR"]
    assert len(errors) == 1, lines
    assert errors[0]["message"].startswith(f"polybridge: error: cannot reach Kafka at {address} ")
