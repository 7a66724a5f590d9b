"""A stream's state is its own: a state record that does not decode, or holds an implausible
time, stops only the stream it belongs to, with one line naming the stream, the key, what is
wrong and the `polybridge state reset` that fixes it; every other stream runs. After that
reset the stream starts again."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from bridge.kafka.state import STATE_SCHEMA, state_datum, write_state
from bridge.records import Position
from bridge.serde.avro import Serializer, SingleObjectFormat
from bridge.sim.predexon import SimConfig, SimulatorThread
from bridge.timeutil import now_us
from tests import kafka_fixture
from tests.predexon_harness import BridgeProcess, Sub, wait_until, write_setup


def _poisoned(stream_id: str) -> bytes:
    """The record versions before the plausibility check wrote after a server sent
    milliseconds: an event time in the year 58,000."""
    serializer = Serializer(STATE_SCHEMA, SingleObjectFormat().prefix(STATE_SCHEMA, ""))
    now = now_us()
    datum = state_datum(stream_id, "predexon", Position(live_time_us=now), "old", now)
    return serializer({**datum, "event_time": (now // 1_000) * 1_000_000})


def _stopped(log: str, stream_id: str) -> list[str]:
    return [line for line in log.splitlines() if f"stream={stream_id} stopped: " in line]


def test_a_bad_state_record_stops_only_its_stream(
    kafka_bootstrap: str, tmp_path: Path, unique_name: Callable[[str], str]
) -> None:
    config = SimConfig(seed=23, rate=30, confirm_scale=0.02)
    with SimulatorThread(config) as sim:
        universe = sim.sim.factory.universe
        subs = [
            Sub("orders", "orders", {"users": universe.users[:4], "status": "all"}),
            Sub("crypto", "crypto", {"feeds": ["BTC/USD", "ETH/USD"]}),
            Sub("collateral", "collateral", {"users": universe.users[:5]}),
        ]
        orders, crypto, collateral = subs
        prefix = unique_name("state-iso") + "."
        setup = write_setup(tmp_path, kafka_bootstrap, sim, prefix, subs)
        state_topic = prefix + "polybridge.state"
        kafka_fixture.create_topic(kafka_bootstrap, state_topic, 1, {"cleanup.policy": "compact"})
        kafka = {"bootstrap.servers": kafka_bootstrap}
        for stream_id, value in (
            (crypto.stream_id, _poisoned(crypto.stream_id)),
            (collateral.stream_id, b"\x7b\x22not avro\x22\x7d"),
        ):
            txn = f"{prefix}app.{stream_id}"
            asyncio.run(write_state(kafka, state_topic, txn, stream_id, value))

        bridge = BridgeProcess(setup, tmp_path / "first.log")
        try:
            wait_until(
                lambda: (
                    bool(_stopped(bridge.log(), crypto.stream_id))
                    and bool(_stopped(bridge.log(), collateral.stream_id))
                ),
                60,
                "the two streams with bad state records to stop",
                poll=0.2,
            )
            before = len(setup.rows(orders))
            wait_until(lambda: len(setup.rows(orders)) > before + 5, 60, "orders going on")
            log = bridge.log()
            assert bridge.process.poll() is None, log  # the instance runs on
        finally:
            code = bridge.terminate()
        assert code == 1, log  # it stopped with failed streams
        assert _stopped(log, orders.stream_id) == [], log
        (crypto_line,) = _stopped(log, crypto.stream_id)
        assert f"key '{crypto.stream_id}', {state_topic} offset " in crypto_line
        assert "its event_time " in crypto_line and "is implausible" in crypto_line
        assert f"polybridge state reset {crypto.stream_id} " in crypto_line
        (collateral_line,) = _stopped(log, collateral.stream_id)
        assert "unknown framing" in collateral_line
        assert f"polybridge state reset {collateral.stream_id} " in collateral_line
        assert setup.rows(crypto) == setup.rows(collateral) == []

        # `state show` names them too; the command in the line fixes each.
        show = _polybridge("state", "show", "--config", str(setup.config_path))
        assert crypto_line.split(" stopped: ", 1)[1] in show
        for stream_id in (crypto.stream_id, collateral.stream_id):
            _polybridge("state", "reset", stream_id, "--config", str(setup.config_path))
        bridge = BridgeProcess(setup, tmp_path / "second.log")
        try:
            for sub in (crypto, collateral):
                wait_until(lambda sub=sub: len(setup.rows(sub)) > 0, 60, f"{sub.stream_id}")
        finally:
            code = bridge.terminate()
        assert code == 0, bridge.log()
        assert " stopped: " not in bridge.log()


def _polybridge(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "bridge", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout
