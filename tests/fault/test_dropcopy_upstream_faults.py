"""Upstream faults from the simulator: nothing lost, nothing doubled, and a gap record
exactly when the exchange could not replay."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import grpc

from bridge.sim.dropcopy import SimConfig, SimulatorThread
from tests.bridge_harness import (
    ALL_KINDS,
    BridgeProcess,
    BridgeSetup,
    gap_records,
    wait_until,
    write_setup,
)

# Fast reconnects so the faults below cost seconds, not the exchange's 1 s .. 30 s.
FAST_RECONNECT = "reconnect_initial_s = 0.05\nreconnect_max_s = 0.2"


def _micros(moment: dt.datetime) -> int:
    return (moment - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)


def _wait_equal(setup: BridgeSetup, sim: SimulatorThread, kinds=ALL_KINDS, timeout=90) -> None:
    """Wait until the simulator has generated everything it will, then for equality."""
    limit = sim.simulator.config.max_records
    if limit is not None:
        wait_until(lambda: sim.simulator.stats.generated >= limit, timeout, "generation to end")
    setup.wait_equal(sim, kinds, timeout)


def _assert_equal(setup: BridgeSetup, sim: SimulatorThread, kinds=ALL_KINDS) -> None:
    results = [setup.compare(sim, kind) for kind in kinds]
    assert all(r.equal for r in results), [r.summary() for r in results]


def _live(prefill: int, total: int) -> SimConfig:
    return SimConfig(
        seed=9, prefill=prefill, rate=3_000, max_records=total, batch=100, heartbeat_s=0.05
    )


# Instrument states carry no id and no time: an upstream re-send of an older state is
# indistinguishable from a real transition back to it, so duplicate-delivery faults are
# applied to the three streams that have identities (README, "Guarantees").
IDENTIFIED = ("executions", "trade_captures", "position_changes")


def _run_with_faults(setup, sim, kinds) -> None:
    faults = sim.simulator.faults
    bridge = BridgeProcess(setup, setup.config_path.parent / "bridge.log")
    try:
        wait_until(lambda: setup.count(kinds[0]) > 0, 60, "records to flow")
        faults.fail_code = grpc.StatusCode.RESOURCE_EXHAUSTED
        faults.fail_next_calls = 6
        _wait_equal(setup, sim, kinds)
    finally:
        assert bridge.terminate() == 0, bridge.log()
    _assert_equal(setup, sim, kinds)
    assert sum(sim.simulator.stats.calls.values()) >= 10, "the faults should force reconnects"
    assert gap_records(setup) == []


def test_drops_bursts_idle_closes_and_duplicates_lose_and_double_nothing(
    kafka_bootstrap: str, tmp_path: Path, unique_name
) -> None:
    with SimulatorThread(_live(3_000, 15_000)) as sim:
        faults = sim.simulator.faults
        faults.drop_after_responses = 7
        faults.fail_next_calls = 6
        faults.duplicate_every = 2
        faults.resume_overlap = 5
        faults.idle_disconnect_s = 0.3
        setup = write_setup(
            tmp_path,
            kafka_bootstrap,
            sim,
            unique_name("faults") + ".",
            kinds=IDENTIFIED,
            dropcopy=FAST_RECONNECT,
        )
        _run_with_faults(setup, sim, IDENTIFIED)


def test_instrument_states_survive_drops_bursts_and_idle_closes(
    kafka_bootstrap: str, tmp_path: Path, unique_name
) -> None:
    with SimulatorThread(_live(3_000, 15_000)) as sim:
        faults = sim.simulator.faults
        faults.drop_after_responses = 3
        faults.fail_next_calls = 6
        faults.idle_disconnect_s = 0.3
        kinds = ("instrument_states",)
        setup = write_setup(
            tmp_path,
            kafka_bootstrap,
            sim,
            unique_name("ifaults") + ".",
            kinds=kinds,
            dropcopy=FAST_RECONNECT,
        )
        _run_with_faults(setup, sim, kinds)


def test_access_token_expiry_mints_new_tokens_and_loses_nothing(
    kafka_bootstrap: str, tmp_path: Path, unique_name
) -> None:
    config = SimConfig(
        seed=4,
        prefill=1_000,
        rate=1_000,
        max_records=6_000,
        batch=100,
        heartbeat_s=0.05,
        token_lifetime_s=2,
    )
    with SimulatorThread(config) as sim:
        key = sim.create_client("bridge-client")
        sim.simulator.faults.drop_after_responses = 20
        auth = (
            'mode = "private_key_jwt"\nclient_id = "bridge-client"\n'
            f'private_key_file = "{key}"\ntoken_url = "{sim.simulator.token_url}"\n'
            f'audience = "{sim.simulator.api_audience}"\nrefresh_margin_s = 1.0'
        )
        setup = write_setup(
            tmp_path,
            kafka_bootstrap,
            sim,
            unique_name("jwt") + ".",
            dropcopy=FAST_RECONNECT,
            auth=auth,
        )
        bridge = BridgeProcess(setup, tmp_path / "bridge.log")
        try:
            _wait_equal(setup, sim)
        finally:
            assert bridge.terminate() == 0, bridge.log()
        _assert_equal(setup, sim)
    log = bridge.log()
    assert "unauthenticated" not in log.lower()  # tokens were renewed before they expired
    assert gap_records(setup) == []


def test_expired_resume_token_replays_by_time_without_a_gap(
    kafka_bootstrap: str, tmp_path: Path, unique_name
) -> None:
    with SimulatorThread(SimConfig(seed=5, prefill=4_000, batch=100, heartbeat_s=0.05)) as sim:
        setup = write_setup(
            tmp_path, kafka_bootstrap, sim, unique_name("tok") + ".", dropcopy=FAST_RECONNECT
        )
        first = BridgeProcess(setup, tmp_path / "bridge.log")
        try:
            _wait_equal(setup, sim)
        finally:
            assert first.terminate() == 0, first.log()
        sim.simulator.faults.token_max_age_s = 0.0  # every stored token is now refused
        sim.generate(4_000)
        second = BridgeProcess(setup, tmp_path / "bridge.log")
        try:
            _wait_equal(setup, sim, IDENTIFIED)
            wait_until(
                lambda: _latest_per_key(setup, sim) is True, 60, "the current instrument states"
            )
        finally:
            assert second.terminate() == 0, second.log()
        _assert_equal(setup, sim, IDENTIFIED)
    assert "resume token refused" in second.log()
    # Instrument states carry no event time to replay from: the live subscription's snapshot
    # restores every current state, and one gap record names the transitions in between.
    gaps = gap_records(setup)
    assert [(g["stream_id"], g["reason"]) for g in gaps] == [
        ("dropcopy.instrument_states", "token_refused_no_replay")
    ]


def _latest_per_key(setup: BridgeSetup, sim: SimulatorThread) -> bool:
    from bridge.verify import expected_dropcopy_rows, kafka_rows

    stream_id = "dropcopy.instrument_states"
    truth = expected_dropcopy_rows(
        "instrument_states", stream_id, sim.ground_truth("instrument_states")
    )
    rows = kafka_rows(setup.kafka, setup.topic("instrument_states"), stream_id)
    return dict(rows) == dict(truth)


def test_gap_record_when_the_exchange_cannot_replay_that_far_back(
    kafka_bootstrap: str, tmp_path: Path, unique_name
) -> None:
    kinds = ("executions",)
    # Retention (500 records a stream, trimmed in chunks of ~1,000) is below the prefill.
    config = SimConfig(seed=6, prefill=3_000, batch=100, heartbeat_s=0.05, retention_records=500)
    with SimulatorThread(config) as sim:
        complete: dict[str, int] = {}  # every execution ever generated: id -> event time

        def observe() -> None:
            for e in sim.ground_truth("executions", firms=setup_firms()):
                complete[e.id] = e.transact_time.ToMicroseconds()

        setup = write_setup(
            tmp_path,
            kafka_bootstrap,
            sim,
            unique_name("gap") + ".",
            kinds=kinds,
            dropcopy=FAST_RECONNECT,
        )
        # First start from 1970: older than retention, so the first start is a gap too.
        first = BridgeProcess(setup, tmp_path / "bridge.log")
        try:
            wait_until(lambda: len(gap_records(setup)) == 1, 60, "the first-start gap")
        finally:
            assert first.terminate() == 0, first.log()
        observe()
        # While the bridge is down the exchange moves far beyond its retention (observed in
        # steps so the test still knows every record the exchange dropped).
        for _ in range(30):
            sim.generate(1_000)
            observe()
        second = BridgeProcess(setup, tmp_path / "bridge.log")
        try:
            wait_until(lambda: len(gap_records(setup)) == 2, 60, "the restart gap")
            known = len(complete)
            sim.generate(1_000)  # live records after the gap must all arrive
            observe()
            wait_until(
                lambda: (
                    set(complete) - {eid for _, eid in _rows(setup)} <= set(list(complete)[:known])
                ),
                60,
                "every live record",
            )
        finally:
            assert second.terminate() == 0, second.log()
    gaps = gap_records(setup)
    assert [g["reason"] for g in gaps] == ["replay_unavailable", "replay_unavailable"]
    windows = [(_micros(g["from_time"]), _micros(g["to_time"])) for g in gaps]
    written = [eid for _, eid in _rows(setup)]
    assert len(written) == len(set(written)), "nothing doubled"
    assert set(written) <= set(complete), "nothing unexpected"
    missing_times = [at for eid, at in complete.items() if eid not in set(written)]
    assert missing_times, "the scenario must lose coverage"
    # Every record the bridge did not write lies in a gap window.
    assert all(any(lo <= t <= hi for lo, hi in windows) for t in missing_times)


def setup_firms() -> tuple[str, ...]:
    from bridge.sim.market import DEFAULT_FIRMS

    return DEFAULT_FIRMS


def _rows(setup: BridgeSetup) -> list[tuple[bytes | None, str]]:
    from bridge.verify import kafka_rows

    return kafka_rows(setup.kafka, setup.topic("executions"), "dropcopy.executions")
