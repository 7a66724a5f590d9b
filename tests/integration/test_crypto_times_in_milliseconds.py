"""A Predexon server that sends the crypto channel's `price_feed` times in milliseconds (the
unit is not published; the simulator's `crypto_time_unit` knob), every channel subscribed,
and a restart: every stream resumes, and the crypto records decode with fastavro.

The run this reproduces: read as seconds, the milliseconds became event times in the year
58,000, in the crypto topic and in the crypto stream's state record; on the next start the
state record did not decode and every stream, not only crypto, stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bridge.sim.predexon import SimConfig, SimulatorThread
from bridge.sim.predexon.events import Universe
from tests.predexon_harness import BridgeProcess, PredexonSetup, Sub, wait_until, write_setup

RECORDS_BEFORE_RESTART = 5
"""Records each stream must have committed before the first bridge is stopped: enough that
every stream has a state record with an event time."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def one_per_channel(universe: Universe) -> list[Sub]:
    """The seven channels, one subscription each."""
    markets = universe.markets
    return [
        Sub("orders", "orders", {"users": universe.users[:4], "status": "all"}),
        Sub("activity", "activity", {"condition_ids": [m.condition_id for m in markets[:4]]}),
        Sub("lifecycle", "lifecycle", {"condition_ids": [m.condition_id for m in markets]}),
        Sub("orderbook", "orderbook", {"token_ids": [t for m in markets[:3] for t, _ in m.tokens]}),
        Sub("oracle", "oracle", {"market_slugs": [m.slug for m in markets[:4]]}),
        Sub("collateral", "collateral", {"users": universe.users[:5]}),
        Sub("crypto", "crypto", {"feeds": ["BTC/USD", "ETH/USD", "SOL/USD"]}),
    ]


def _stopped_lines(bridge: BridgeProcess) -> list[str]:
    return [line for line in bridge.log().splitlines() if " stopped: " in line]


def _more_than(
    setup: PredexonSetup, sub: Sub, count: int, bridge: BridgeProcess
) -> Callable[[], bool]:
    """A condition: the stream has more than `count` records; fails at once, quoting the
    line, when a stream of `bridge` stopped."""

    def check() -> bool:
        stopped = _stopped_lines(bridge)
        assert not stopped, "a stream stopped:\n" + "\n".join(stopped)
        return len(setup.rows(sub)) > count

    return check


def test_crypto_times_in_milliseconds_then_a_restart_every_stream_resumes(
    kafka_bootstrap: str, tmp_path: Path, unique_name: Callable[[str], str]
) -> None:
    config = SimConfig(seed=17, rate=30, confirm_scale=0.02, crypto_time_unit="ms")
    with SimulatorThread(config) as sim:
        subs = one_per_channel(sim.sim.factory.universe)
        prefix = unique_name("pdx-ms") + "."
        setup = write_setup(tmp_path, kafka_bootstrap, sim, prefix, subs)
        first = BridgeProcess(setup, tmp_path / "first.log")
        try:
            for sub in subs:
                wait_until(
                    _more_than(setup, sub, RECORDS_BEFORE_RESTART - 1, first),
                    60,
                    f"{sub.stream_id}: {RECORDS_BEFORE_RESTART} records",
                    poll=0.3,
                )
        finally:
            code = first.terminate()
        assert code == 0, first.log()
        before = {sub.stream_id: len(setup.rows(sub)) for sub in subs}

        second = BridgeProcess(setup, tmp_path / "second.log")
        try:
            for sub in subs:
                wait_until(
                    _more_than(setup, sub, before[sub.stream_id], second),
                    60,
                    f"{sub.stream_id}: records after the restart",
                    poll=0.3,
                )
        finally:
            code = second.terminate()
        assert code == 0, second.log()
        for sub in subs:
            assert f"stream={sub.stream_id} starting from " in second.log(), sub.stream_id

    crypto = setup.decoded(subs[-1])  # fastavro, timestamp-micros as datetimes
    assert len(crypto) > RECORDS_BEFORE_RESTART
    now = datetime.now(UTC)
    for value in crypto:
        # The raw milliseconds are kept as sent; the event time is the same instant.
        assert value["timestamp"] > 10**12 and value["observed_at"] > 10**12, value
        assert value["event_time"] == _EPOCH + timedelta(milliseconds=value["timestamp"])
        assert now - timedelta(hours=1) < value["event_time"] < now + timedelta(minutes=1)
