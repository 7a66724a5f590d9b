"""Malformed Predexon frames, end to end: each lands in `polybridge.dlq` as a
`polybridge.DeadLetter` with its raw bytes, and the valid events around them are all in
their topic exactly once, as the simulator sent them."""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from bridge.kafka.readback import read_topic
from bridge.serde.avro import Serializer, SingleObjectFormat
from bridge.sim.predexon import SimConfig, SimulatorThread, malformed_frame
from tests.predexon_harness import BridgeProcess, PredexonSetup, Sub, wait_until, write_setup

SUB = Sub("crypto", "crypto", {"feeds": ["*"]})
KINDS = ("invalid_json", "truncated", "oversized", "wrong_types", "unknown_type")
BULK_KINDS = ("invalid_json", "truncated", "wrong_types", "unknown_type")
BULK_ROUNDS = 2  # 2 rounds x 1,250 of each of 4 bulk kinds = 10,000 bad frames
PER_ROUND = 1_250
MAX_RAW = 900_000  # bridge.pipeline._MAX_DEAD_LETTER_RAW


def dead_letters(setup: PredexonSetup) -> list[dict[str, Any]]:
    topic = setup.prefix + "polybridge.dlq"
    serializer = Serializer(
        "polybridge.DeadLetter", SingleObjectFormat().prefix("polybridge.DeadLetter", topic)
    )
    return [
        serializer.decode(r.value)
        for r in read_topic({"bootstrap.servers": setup.bootstrap}, topic)
        if r.value is not None
    ]


def _count(setup: PredexonSetup) -> int:
    """Dead letters committed so far (counted, not decoded: there are thousands)."""
    return len(read_topic({"bootstrap.servers": setup.bootstrap}, setup.prefix + "polybridge.dlq"))


@pytest.mark.slow(25)
def test_malformed_frames_land_in_the_dlq_with_their_raw_bytes(
    kafka_bootstrap: str, tmp_path: Path, unique_name
) -> None:
    with SimulatorThread(SimConfig(seed=21, rate=40, channels=("crypto",))) as sim:
        setup = write_setup(tmp_path, kafka_bootstrap, sim, unique_name("dlq") + ".", [SUB])
        bridge = BridgeProcess(setup, tmp_path / "bridge.log")
        try:
            wait_until(lambda: len(setup.rows(SUB)) >= 10, 60, "records flowing", poll=0.3)
            (sim_sub,) = setup.sim_subscriptions(sim, SUB)
            for kind in KINDS:
                sim.call(sim.sim.send_malformed, kind)
                # Valid events keep arriving between the bad frames.
                n = len(setup.rows(SUB))
                wait_until(lambda n=n: len(setup.rows(SUB)) >= n + 5, 30, f"events after {kind}")
            wait_until(
                lambda: len(dead_letters(setup)) >= len(KINDS), 60, "every dead letter", poll=0.5
            )
            # Then 10,000 more bad frames in rounds, valid events flowing in between.
            for round_ in range(1, BULK_ROUNDS + 1):
                for kind in BULK_KINDS:
                    sim.call(sim.sim.send_malformed, kind, PER_ROUND)
                want = len(KINDS) + round_ * PER_ROUND * len(BULK_KINDS)
                wait_until(lambda w=want: _count(setup) >= w, 60, "bulk dead letters", poll=0.5)
            sim.call(setattr, sim.sim.config, "rate", 0.0)  # what was sent stops changing
            setup.wait_equal(sim, SUB, 30)
        finally:
            assert bridge.terminate() == 0, bridge.log()[-3000:]
        letters = dead_letters(setup)
        frames = {k: malformed_frame(k, sim_sub.id).encode() for k in KINDS}
        comparison = setup.compare(sim, SUB)
        gaps = setup.gaps(SUB)
    assert len(letters) == len(KINDS) + BULK_ROUNDS * PER_ROUND * len(BULK_KINDS)
    first = {bytes(d["raw"]): d for d in letters[: len(KINDS)]}
    for kind, frame in frames.items():
        if kind == "oversized":
            # Kept whole would exceed Kafka's record limit: the head, with the whole's hash.
            (letter,) = [d for raw, d in first.items() if len(raw) == MAX_RAW]
            assert frame.startswith(bytes(letter["raw"]))
            assert len(letter["raw"]) == MAX_RAW
            assert hashlib.sha256(frame).hexdigest() in letter["error"]
        else:
            assert frame in first, (kind, [(d["error_type"], len(d["raw"])) for d in letters[:5]])
    bulk = Counter(bytes(d["raw"]) for d in letters[len(KINDS) :])
    assert bulk == Counter({frames[k]: PER_ROUND * BULK_ROUNDS for k in BULK_KINDS})
    for letter in letters:
        assert letter["stream_id"] == SUB.stream_id
        assert letter["upstream"] == "predexon"
        assert letter["target_topic"] == setup.topic(SUB)
    assert comparison.equal, comparison.summary()
    # A bad frame is not a lost connection: no disconnect gap. The 5 MB frame alone is more
    # than Predexon queues before dropping (1 MB), so the bridge may rightly report the
    # ping windows it arrived in as a possible loss (two when a ping went out while it was
    # arriving), and nothing else.
    assert all(g.reason == "slow_consumer" for g in gaps), gaps
    assert len(gaps) <= 2, gaps
    assert all(a.to_us == b.from_us for a, b in itertools.pairwise(gaps)), gaps  # one stretch
