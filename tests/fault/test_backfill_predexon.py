"""End to end: a Predexon trades subscription loses connections and the bridge is SIGKILLed
(twice during a backfill); the gaps are filled from the simulator's REST trades history,
through slow pages, a 429 storm and 5xx answers. Afterwards the trades topic holds every
confirmed fill the simulator generated for the subscription, each once, and every gap has
exactly one follow-up record saying it was filled.

Identity of a fill: (tx_hash, order_hash), counted (two fills of one order in one
transaction share it). REST rows carry no `log_index`, so this, not the event id, is what a
backfilled record and the live record of the same fill have in common (`docs/backfill.md`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bridge.backfill.writer import REST_SOURCE, SOURCE_HEADER
from bridge.sim.predexon import SimConfig, SimulatorThread
from bridge.sim.predexon.rest import PredexonRestConfig
from bridge.sim.rest import RestFaults
from bridge.timeutil import now_us
from tests.bridge_harness import ALONE
from tests.predexon_harness import BridgeProcess, PredexonSetup, Sub, wait_until, write_setup

TRADES = Sub("trades", "orders", {"users": ["*"], "status": "confirmed"})

Fill = tuple[str, str]
"""(tx_hash, order_hash)."""


def _fill(event: dict[str, Any]) -> Fill | None:
    if event.get("event_type") != "order_filled" or event.get("status") != "confirmed":
        return None
    return (str(event["tx_hash"]), str(event["order_hash"]))


def _truth(sim: SimulatorThread) -> list[tuple[int, Fill]]:
    """(generated at in us, fill) of every confirmed fill the subscription matches."""
    return [
        (int(e["generated_at"] * 1e6), fill)
        for e in sim.call(sim.sim.ground_truth, TRADES.channel, TRADES.filters)
        if (fill := _fill(e["data"])) is not None
    ]


def _fills_in_kafka(setup: PredexonSetup) -> list[tuple[Fill, bool]]:
    """(fill, whether it was backfilled from REST) of every confirmed fill in the topic."""
    serializer = setup.mapper(TRADES).serializer
    fills = []
    for _, value, headers, _, _ in setup.records(TRADES):
        if value is not None and (fill := _fill(serializer.decode(value))) is not None:
            fills.append((fill, dict(headers).get(SOURCE_HEADER) == REST_SOURCE))
    return fills


def _in_kafka(setup: PredexonSetup) -> Counter[Fill]:
    return Counter(fill for fill, _ in _fills_in_kafka(setup))


def _rest_rows(setup: PredexonSetup) -> int:
    return sum(1 for _, rest in _fills_in_kafka(setup) if rest)


def _follow_ups(setup: PredexonSetup) -> dict[tuple[Any, ...], list[str]]:
    """Each open gap of the stream -> the statuses of the records that closed it."""
    records = [g for g in setup.gap_values() if g["stream_id"] == TRADES.stream_id]
    ident = [(g["from_time"], g["to_time"], g["reason"]) for g in records]
    opened = {k: [] for k, g in zip(ident, records, strict=True) if g["status"] == "open"}
    for k, g in zip(ident, records, strict=True):
        if g["status"] != "open":
            opened.setdefault(k, []).append(g["status"])
    return opened


def _opened(setup: PredexonSetup, gaps: int) -> Callable[[], bool]:
    return lambda: len(_follow_ups(setup)) >= gaps


def _all_closed(setup: PredexonSetup, gaps: int) -> Callable[[], bool]:
    def closed() -> bool:
        follow = _follow_ups(setup)
        return len(follow) >= gaps and all(follow.values())

    return closed


@pytest.mark.slow(100)
def test_trades_gaps_filled_from_rest_across_disconnects_kills_and_rest_faults(
    kafka_bootstrap: str, tmp_path: Path, unique_name
) -> None:
    config = SimConfig(
        seed=23,
        rate=15,
        channels=("orders",),
        confirm_scale=0.02,
        duplicate_ratio=0.1,
        # Slow pages keep a backfill running long enough to be killed in the middle of it.
        rest=PredexonRestConfig(faults=RestFaults(slow_page_s=0.25, retry_after_s=1)),
    )
    log = tmp_path / "bridge.log"
    with SimulatorThread(config) as sim:
        assert sim.sim.rest is not None
        faults = sim.sim.rest.faults
        setup = write_setup(tmp_path, kafka_bootstrap, sim, unique_name("pdx-bf") + ".", [TRADES])
        setup.config_path.write_text(
            setup.config_path.read_text()
            + f'\n[backfill]\nenabled = true\npredexon_url = "{sim.sim.rest.url}"\n'
            "page_size = 10\nmax_records_per_transaction = 7\nretry_interval_s = 0.5\n"
            # The simulator's REST serves a fill as soon as it is generated.
            "predexon_rest_lag_s = 0.5\npredexon_lookback_s = 5\n" + ALONE
        )

        def more_fills(n: int) -> Callable[[], bool]:
            start = sum(_in_kafka(setup).values())
            return lambda: sum(_in_kafka(setup).values()) >= start + n

        def generated(n: int) -> None:
            start = len(_truth(sim))
            wait_until(lambda: len(_truth(sim)) >= start + n, 30, f"{n} fills generated")

        gaps = 0
        bridge = BridgeProcess(setup, log)
        try:
            wait_until(more_fills(20), 60, "live fills", poll=0.3)
            for code in (1006, 1001):
                assert sim.call(sim.sim.drop_connections, code) >= 1
                gaps += 1
                generated(10)
                wait_until(_all_closed(setup, gaps), 60, f"gap after close {code} closed")

            # Down while fills go on; then killed twice in the middle of the backfill.
            for kill in range(3):
                bridge.kill()
                gaps += 1
                generated(30)
                if kill == 2:  # REST misbehaves under the last backfill: 429s, then 5xx
                    faults.rate_limit_next = 6
                    faults.fail_next = 4
                bridge = BridgeProcess(setup, log)
                wait_until(_opened(setup, gaps), 60, f"the gap of restart {kill + 1}")
                if kill == 2:
                    break
                seen = _rest_rows(setup)
                wait_until(
                    lambda s=seen: _rest_rows(setup) > s, 60, f"backfill under way ({kill + 1})"
                )

            wait_until(_all_closed(setup, gaps), 120, "every gap closed", poll=0.5)
            end_us = now_us()
            wait_until(more_fills(10), 30, "live fills after the backfill", poll=0.3)
        finally:
            assert bridge.terminate() == 0, bridge.log()

        assert faults.rate_limited >= 6 and faults.failed >= 4
        # The kills did land in the middle of a backfill: a restart resumed a page cursor.
        assert "resuming from page cursor" in bridge.log()
        truth = _truth(sim)
        fills = _fills_in_kafka(setup)
        got = Counter(fill for fill, _ in fills)
        live = {fill for fill, rest in fills if not rest}
        first_live = min(at for at, fill in truth if fill in live)
        window = Counter(fill for at, fill in truth if first_live <= at <= end_us)
        missing = window - got
        assert not missing, f"{sum(missing.values())} fills missing: {list(missing)[:3]}"
        everything = Counter(fill for _, fill in truth)
        doubled = got - everything
        assert not doubled, f"written more often than generated: {list(doubled.items())[:3]}"
        assert _rest_rows(setup) > 0

        follow = _follow_ups(setup)
        assert len(follow) == gaps, follow
        assert all(statuses == ["filled"] for statuses in follow.values()), follow
