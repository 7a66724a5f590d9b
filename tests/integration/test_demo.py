"""`polybridge demo` end to end in a subprocess: its summary reports equality, and its live
view (plain lines when stdout is not a terminal) shows the bridge's own metrics."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

STREAMS = {
    "dropcopy.executions",
    "dropcopy.trade_captures",
    "dropcopy.instrument_states",
    "dropcopy.position_changes",
    "predexon.whale-trades",
    "predexon.crypto",
}
METRICS_LINE = re.compile(
    r"^\[(running|restarted)\] metrics: stream=(\S+) up=(\d) records_per_s=(\d+) records=(\d+) "
    r"commit_ms=(\S+) lag_s=(\S+) reconnects=(\d+) gaps=(\d+) dead_letters=(\d+)$"
)


@pytest.mark.slow(90)
def test_demo_reports_equality_with_ground_truth_after_a_kill() -> None:
    """With registry framing (`--registry`, `make demo REGISTRY=1`): one demo run serves
    both, as a second full demo cost 4 minutes of `make test`; the default single-object
    framing is the one every other bridge test writes."""
    command = [sys.executable, "-m", "bridge", "--log-level", "WARNING", "demo"]
    result = subprocess.run(
        # The demo starts a broker, a registry, two simulators and the bridge twice. Its
        # exchange generates live all along, through the restart: at the default 2,000
        # records/s, make test's load made that 60-120 k records to catch up and compare,
        # and the test took 125-349 s (alone about 60 s).
        [*command, "--duration", "8", "--registry", "--rate", "400"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[:6000]
    assert "Schema Registry: http://127.0.0.1:" in result.stdout
    framing = re.search(
        # Every record carries a registry id ("0 records framed otherwise"); the bridge
        # restarted by the demo may be handed a second id for the same schema.
        r"registry framing: demo\.\S+ schema ids \[\d+(, \d+)*\], 0 records",
        result.stdout,
    )
    assert framing is not None, result.stdout[:6000]
    assert "--schema-registry-url URL" in result.stdout
    assert "[kill -9]" in result.stdout
    assert "RESULT: EQUAL to ground truth after kill -9 and restart" in result.stdout
    assert result.stdout.count(": EQUAL expected=") == 4
    assert "polybridge tail " in result.stdout and "polybridge state show" in result.stdout

    # The live view: per-stream lines scraped from the bridge's /metrics, in both phases.
    rows = [m.groups() for line in result.stdout.splitlines() if (m := METRICS_LINE.match(line))]
    assert "\x1b[" not in result.stdout  # plain mode: no terminal control codes
    for phase in ("running", "restarted"):
        assert {r[1] for r in rows if r[0] == phase} == STREAMS, result.stdout[:6000]
    running = [r for r in rows if r[0] == "running"]
    assert max(int(r[4]) for r in running if r[1] == "dropcopy.executions") > 0
    assert any(r[5] != "-" for r in running), "no commit latency shown"
    assert any(r[6] != "-" for r in running), "no lag shown"
    # The kill shows in the restarted bridge's metrics as one gap per live Predexon stream.
    restarted = [r for r in rows if r[0] == "restarted" and r[1].startswith("predexon.")]
    assert max(int(r[8]) for r in restarted) >= 1
