"""Predexon simulator -> bridge process -> Kafka, every channel, compared with what the
simulator wrote to each subscription: nothing missing, nothing doubled, order kept per key."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from bridge.sim.predexon import SimConfig, SimulatorThread
from bridge.sim.predexon.events import Universe
from tests.predexon_harness import BridgeProcess, PredexonSetup, Sub, wait_until, write_setup

EVENTS_PER_SUB = 15
"""Events each subscription must have been sent before generation stops: enough that every
channel carries several keys and (orders) pending/confirmed pairs, small enough to stay
within a few seconds at the test's rate."""


def every_channel(universe: Universe) -> list[Sub]:
    """One subscription per channel with regular filters, plus the wildcard orderbook
    firehose (`event_batch` frames, on its own connection: no mixing on a channel)."""
    markets = universe.markets
    conditions = [m.condition_id for m in markets[:4]]
    tokens = [t for m in markets[:3] for t, _ in m.tokens]
    return [
        Sub("trades", "orders", {"users": universe.users[:4], "status": "all"}),
        Sub("activity", "activity", {"condition_ids": conditions}),
        Sub("lifecycle", "lifecycle", {"condition_ids": [m.condition_id for m in markets]}),
        Sub("book", "orderbook", {"token_ids": tokens}),
        Sub("book-all", "orderbook", {"token_ids": ["*"]}),
        Sub("oracle", "oracle", {"market_slugs": [m.slug for m in markets[:4]]}),
        Sub("collateral", "collateral", {"users": universe.users[:5]}),
        Sub("crypto", "crypto", {"feeds": ["BTC/USD", "ETH/USD", "SOL/USD"]}),
    ]


def stop_generating(sim: SimulatorThread) -> None:
    """Stop new events and wait until scheduled follow-ups (confirmations, fee refunds)
    are emitted, so what each subscription was sent no longer changes."""
    sim.call(setattr, sim.sim.config, "rate", 0.0)
    # `_scheduled` is the simulator's heap of delayed follow-ups; read on its own loop.
    wait_until(lambda: not sim.call(lambda: bool(sim.sim._scheduled)), 10, "follow-ups sent")


def test_every_channel_lands_exactly_once_in_order_per_key(
    kafka_bootstrap: str, tmp_path: Path, unique_name
) -> None:
    config = SimConfig(seed=7, rate=40, confirm_scale=0.02, duplicate_ratio=0.2, bare_ratio=0.1)
    with SimulatorThread(config) as sim:
        subs = every_channel(sim.sim.factory.universe)
        setup = write_setup(tmp_path, kafka_bootstrap, sim, unique_name("pdx-e2e") + ".", subs)
        bridge = BridgeProcess(setup, tmp_path / "bridge.log")
        try:
            for sub in subs:
                wait_until(
                    lambda sub=sub: len(setup.expected_rows(sim, sub)) >= EVENTS_PER_SUB,
                    60,
                    f"{sub.stream_id}: {EVENTS_PER_SUB} events sent",
                    poll=0.2,
                )
            stop_generating(sim)
            for sub in subs:
                setup.wait_equal(sim, sub, 60)
        finally:
            code = bridge.terminate()
        assert code == 0, bridge.log()
        results = [setup.compare(sim, sub) for sub in subs]
        duplicates_sent = sum(_frames_sent_twice(sim, setup, sub) for sub in subs)
        assert all(r.equal for r in results), [r.summary() for r in results]
        assert all(setup.gaps(sub) == [] for sub in subs)  # nothing was lost
        _assert_values_decode_and_carry_the_headers(setup, subs)
        _assert_orderbook_kept_per_token(setup, subs[3])
        assert duplicates_sent > 0  # the bridge really had repeats to drop


def _frames_sent_twice(sim: SimulatorThread, setup: PredexonSetup, sub: Sub) -> int:
    sent = [
        (s.id, e.data.get("event_type"), id(e.data))
        for s in setup.sim_subscriptions(sim, sub)
        for e in sim.call(sim.sim.sent, s.id)
        if e.status == "sent"
    ]
    return len(sent) - len(set(sent))


def _assert_values_decode_and_carry_the_headers(setup: PredexonSetup, subs: list[Sub]) -> None:
    """Every value decodes with the channel's `.avsc`, and its `event_id` field equals the
    `polybridge.event_id` header the pipeline wrote (the id consumers dedupe on)."""
    for sub in subs:
        values = setup.decoded(sub)
        assert [v["event_id"] for v in values] == [e for _, e in setup.rows(sub)]
        assert all(v["stream_id"] == sub.stream_id for v in values)
        assert all(v["receive_time"] is not None for v in values)


def _assert_orderbook_kept_per_token(setup: PredexonSetup, book: Sub) -> None:
    """Per token: the snapshot first, then its deltas in timestamp order (the order a
    consumer needs to rebuild the book)."""
    per_token: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for value in setup.decoded(book):
        if value["token_id"] is not None:
            per_token[value["token_id"]].append(value)
    assert set(per_token) == set(book.filters["token_ids"])
    for events in per_token.values():
        assert events[0]["event_type"] == "book_snapshot"
        stamps = [e["timestamp"] for e in events]
        assert stamps == sorted(stamps)
