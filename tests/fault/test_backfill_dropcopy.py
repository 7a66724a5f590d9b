"""End to end: a refused resume token the exchange cannot replay -> a gap -> filled from the
simulator's REST history (Report API and position ledger) by the bridge's backfill task,
with the bridge SIGKILLed during the backfill several times and the last fill running
through a 429 storm and 5xx answers; afterwards every topic equals the exchange's records
exactly, and the live stream's lag stayed what it was before any gap."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from bridge.backfill.writer import SOURCE_HEADER
from bridge.embedded import free_port
from bridge.kafka.readback import header, read_topic
from bridge.records import STREAM_HEADER
from bridge.sim.dropcopy import SimConfig, SimulatorThread
from bridge.sim.dropcopy.rest import RestConfig
from bridge.sim.journal import Retention
from bridge.sim.market import DEFAULT_FIRMS
from bridge.sim.rest import RestFaults
from bridge.verify import Comparison, compare, expected_dropcopy_rows, kafka_rows
from tests.bridge_harness import (
    ALONE,
    BridgeProcess,
    BridgeSetup,
    gap_records,
    wait_until,
    write_setup,
)
from tests.integration.test_metrics import metrics_config, scrape, value

KINDS = ("executions", "trade_captures", "position_changes")
LIVE = "dropcopy.executions"
LAG_SAMPLES = 20
LAG_PERIOD_S = 0.25
LIVE_RECORDS_PER_PERIOD = 10
LAG_MARGIN_S = 1.0
"""The live lag during the last fill may exceed the largest seen before any gap by this
much (a second: the simulator's records arrive in bursts, the lag is sampled)."""
OWN_FIRM = DEFAULT_FIRMS[0]
"""REST searches serve the caller's firm only: the streams subscribe to it alone."""


def _expected(sim: SimulatorThread, kind: str) -> list[tuple[bytes | None, str]]:
    return expected_dropcopy_rows(
        kind, f"dropcopy.{kind}", sim.ground_truth(kind, firms=(OWN_FIRM,))
    )


def _rest_rows(setup: BridgeSetup, kind: str) -> int:
    return sum(
        1
        for r in read_topic(setup.kafka, setup.topic(kind))
        if header(r.headers, SOURCE_HEADER) == b"rest"
        and header(r.headers, STREAM_HEADER) == f"dropcopy.{kind}".encode()
    )


def _comparison(setup: BridgeSetup, kind: str, want: list[tuple[bytes | None, str]]) -> Comparison:
    stream_id = f"dropcopy.{kind}"
    return compare(stream_id, want, kafka_rows(setup.kafka, setup.topic(kind), stream_id))


def _equal(setup: BridgeSetup, kind: str, want: list[tuple[bytes | None, str]]) -> bool:
    return _comparison(setup, kind, want).equal


def _same_records(setup: BridgeSetup, kind: str, want: list[tuple[bytes | None, str]]) -> bool:
    """Every wanted record once, nothing else. Not the per-key order: records that arrive
    live while a gap is filled land before the gap's older records of the same key
    (`docs/backfill.md`, "Order:")."""
    return _comparison(setup, kind, want).same_records


@pytest.mark.slow(75)
def test_gap_filled_from_rest_across_sigkills(
    kafka_bootstrap: str, tmp_path: Path, unique_name
) -> None:
    config = SimConfig(
        seed=11,
        prefill=2_000,
        batch=100,
        heartbeat_s=0.05,
        # No REST rate limits (the real 12/min would make this test minutes long), and slow
        # pages so that the backfill is still running when the bridge is killed.
        rest=RestConfig(search_limit=None, ledger_limit=None, faults=RestFaults(slow_page_s=0.3)),
    )
    with SimulatorThread(config) as sim:
        assert sim.simulator.rest is not None
        setup = write_setup(
            tmp_path,
            kafka_bootstrap,
            sim,
            unique_name("bf") + ".",
            kinds=KINDS,
            dropcopy="reconnect_initial_s = 0.05\nreconnect_max_s = 0.2",
            extra=ALONE,
        )
        text = setup.config_path.read_text()
        firms = ", ".join(f'"{f}"' for f in DEFAULT_FIRMS)
        text = text.replace(f"firms = [{firms}]", f'firms = ["{OWN_FIRM}"]')
        accounts = sorted(
            {c.position.account for c in sim.ground_truth("position_changes", firms=(OWN_FIRM,))}
        )
        assert accounts
        port = free_port()
        text += (
            f'\n[backfill]\nenabled = true\nexchange_url = "{sim.simulator.rest.url}"\n'
            "page_size = 40\nmax_records_per_transaction = 15\nretry_interval_s = 0.5\n"
            f"accounts = {json.dumps(accounts)}\n" + metrics_config(port)
        )
        setup.config_path.write_text(text)

        # 1. Everything the exchange has is in Kafka; the live lag before any gap.
        first = BridgeProcess(setup, tmp_path / "bridge.log")
        try:
            for kind in KINDS:
                want = _expected(sim, kind)
                wait_until(lambda k=kind, w=want: _equal(setup, k, w), 90, kind)
            baseline = _lags(port, LAG_SAMPLES, sim)
        finally:
            assert first.terminate() == 0, first.log()
        before = {kind: _expected(sim, kind) for kind in KINDS}

        # 2. While the bridge is down: tokens are refused, new records arrive, and the
        # exchange drops everything the bridge had, so it cannot replay by time either.
        journals = sim.simulator._journals

        def newest() -> int:
            return max(j.time_at(j.head) or 0 for j in journals.values())

        old = sim._on_loop(newest)
        sim.simulator.faults.token_max_age_s = 0.0
        sim.generate(2_000)

        def forget_old() -> None:
            now = newest()
            assert now > old
            for journal in journals.values():
                journal.retention = Retention(max_age_s=(now - old) / 2 / 1e6)
                journal.trim(now)
                journal.retention = Retention()  # what arrives from now on stays

        sim._on_loop(forget_old)
        after = {kind: _expected(sim, kind) for kind in KINDS}
        assert all(after[k] and set(after[k]).isdisjoint(before[k]) for k in KINDS)
        want = {kind: before[kind] + after[kind] for kind in KINDS}

        # 3. The gap is found and filled; the bridge is SIGKILLed mid-backfill 3 times.
        log = tmp_path / "bridge.log"
        for kill in range(3):
            bridge = BridgeProcess(setup, log)
            try:
                if kill == 0:
                    wait_until(lambda: _opened(setup) == set(KINDS), 90, "both gaps")
                    sim.simulator.faults.token_max_age_s = None
                seen = _rest_rows(setup, "executions")
                wait_until(
                    lambda s=seen: (
                        _rest_rows(setup, "executions") > s
                        or _equal(setup, "executions", want["executions"])
                    ),
                    90,
                    f"backfill progress before kill {kill + 1}",
                )
            finally:
                bridge.kill()
        # The last fill runs through a 429 storm (Retry-After 1 s) and 5xx answers.
        faults = sim.simulator.rest.faults
        faults.retry_after_s = 1
        faults.rate_limit_next = 8
        faults.fail_next = 4
        served = sim.simulator.stats.responses
        opened_calls = {kind: served[kind] for kind in KINDS}
        last = BridgeProcess(setup, log)
        try:
            # Every stream is open again (heartbeats flow), so what comes now comes live.
            wait_until(
                lambda: all(served[k] > opened_calls[k] + 2 for k in KINDS), 60, "live again"
            )
            # Until its first commit after the restart the live stream's lag is the time since
            # the last record before the kill: sample from its first fresh commit on.
            limit = max(baseline) + LAG_MARGIN_S
            wait_until(lambda: _lags(port, 1, sim)[0] <= limit, 60, "live records committed")
            during: list[float] = []
            deadline = time.monotonic() + 180
            while not _all_closed(setup):
                assert time.monotonic() < deadline, "the backfill did not end within 180 s"
                during += _lags(port, 4, sim)
            # What arrived live during this run is expected too.
            want = {kind: before[kind] + _expected(sim, kind) for kind in KINDS}
            for kind in KINDS:
                with contextlib.suppress(AssertionError):  # the check below says what differs
                    wait_until(
                        lambda k=kind: _same_records(setup, k, want[k]),
                        120,
                        f"{kind} filled",
                        poll=0.5,
                    )
            wait_until(lambda: _all_closed(setup), 60, "every gap closed")
        finally:
            assert last.terminate() == 0, last.log()
        rest: dict[str, int] = {}
        for kind in KINDS:
            assert _same_records(setup, kind, want[kind]), _comparison(
                setup, kind, want[kind]
            ).summary()
            rest[kind] = _rest_rows(setup, kind)

        # On demand, the same window again: everything is in Kafka already.
        gap = next(
            g
            for g in gap_records(setup)
            if g["stream_id"] == "dropcopy.executions" and g["status"] == "open"
        )
        dry = subprocess.run(
            [
                sys.executable,
                "-m",
                "bridge",
                "backfill",
                "dropcopy.executions",
                "--from",
                gap["from_time"].isoformat(),
                "--to",
                gap["to_time"].isoformat(),
                "--dry-run",
                "--config",
                str(setup.config_path),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert dry.returncode == 0, dry.stderr
        assert dry.stdout.strip().endswith("would write 0, dead letters 0; filled"), dry.stdout
        assert "backfill: fetched" in dry.stderr
    # REST misbehaved during the last fill, and the live stream did not notice.
    assert faults.rate_limited >= 8 and faults.failed >= 4
    assert len(during) >= 8, during
    assert max(during) <= max(baseline) + LAG_MARGIN_S, (baseline, during)
    # Every record the stream missed came from REST, once.
    assert rest == {kind: len(after[kind]) for kind in KINDS}
    assert "resuming from page cursor" in log.read_text()
    gaps = gap_records(setup)
    opened = [g for g in gaps if g["status"] == "open"]
    assert {g["reason"] for g in opened} == {"replay_unavailable"}
    assert {g["stream_id"] for g in opened} == {f"dropcopy.{k}" for k in KINDS}
    closed = Counter(g["status"] for g in gaps if g["status"] != "open")
    assert closed == Counter({"filled": len(opened)}), gaps


def _lags(port: int, samples: int, sim: SimulatorThread) -> list[float]:
    """`polybridge_lag_seconds` of the live executions stream, sampled every 0.25 s while
    the exchange sends a few records each period (a live stream, at the test's pace)."""
    lags = []
    for _ in range(samples):
        sim.generate(LIVE_RECORDS_PER_PERIOD)
        time.sleep(LAG_PERIOD_S)  # the sampling period, not a synchronisation
        lags.append(value(scrape(port), "polybridge_lag_seconds", LIVE))
    return lags


def _all_closed(setup: BridgeSetup) -> bool:
    gaps = gap_records(setup)
    key = [(g["stream_id"], g["from_time"], g["to_time"], g["reason"]) for g in gaps]
    opened = {k for k, g in zip(key, gaps, strict=True) if g["status"] == "open"}
    closed = {k for k, g in zip(key, gaps, strict=True) if g["status"] != "open"}
    return bool(opened) and opened <= closed


def _opened(setup: BridgeSetup) -> set[str]:
    """The kinds whose stream wrote a gap."""
    return {
        g["stream_id"].removeprefix("dropcopy.")
        for g in gap_records(setup)
        if g["status"] == "open"
    }
