"""ReconnectPolicy: fast after a healthy connection drops, equal-jitter backoff while
attempts fail, 4002 backs off, and a budget on the fast path."""

from __future__ import annotations

import pytest

from bridge.sources.backoff import Backoff
from bridge.sources.predexon.reconnect import (
    FAIL_CAP_S,
    FAIL_INITIAL_S,
    FAST_BURST,
    FAST_JITTER_S,
    ReconnectPolicy,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def policy(draw: float, clock: FakeClock | None = None) -> ReconnectPolicy:
    """The production numbers with every random draw fixed at `draw`."""
    clock = clock or FakeClock()
    backoff = Backoff(FAIL_INITIAL_S, FAIL_CAP_S, jitter=0.5, rng=lambda: draw, clock=clock)
    return ReconnectPolicy(backoff, rng=lambda: draw, clock=clock)


@pytest.mark.parametrize(("draw", "expected"), [(0.0, 0.0), (0.999, 0.999 * FAST_JITTER_S)])
def test_a_healthy_connection_dropped_reconnects_within_the_fast_jitter(
    draw: float, expected: float
) -> None:
    p = policy(draw)
    p.subscribed()
    assert p.next_delay("close_1006") == pytest.approx(expected)
    assert p.last == "fast" and p.next_delay("close_1006") >= FAIL_INITIAL_S / 2


def test_failing_attempts_double_with_equal_jitter_up_to_the_cap() -> None:
    low, high = policy(0.0), policy(0.999999)
    lows = [low.next_delay("http_503") for _ in range(8)]
    highs = [round(high.next_delay("http_429"), 3) for _ in range(8)]
    assert lows == [0.25, 0.5, 1.0, 2.0, 4.0, 7.5, 7.5, 7.5]
    assert highs == [0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0, 15.0]
    assert low.last == high.last == "backoff"


def test_failures_after_a_fast_reconnect_start_the_backoff_over() -> None:
    p = policy(0.0)
    for _ in range(5):
        p.next_delay("OSError")
    p.subscribed()
    assert p.next_delay("close_1001") == 0.0 and p.last == "fast"
    assert p.next_delay("http_503") == FAIL_INITIAL_S / 2  # counter was reset


def test_no_ack_means_not_healthy_even_after_connecting() -> None:
    p = policy(0.0)
    p.subscribed()
    p.next_delay("close_1006")
    # The next session never got an ack (request timeout or a drop before it): backoff.
    assert p.next_delay("close_1006") == FAIL_INITIAL_S / 2 and p.last == "backoff"
    p.subscribed()
    assert p.next_delay("request_timeout") == FAIL_INITIAL_S and p.last == "backoff"


def test_close_4002_backs_off_even_from_a_healthy_connection_and_keeps_counting() -> None:
    p = policy(0.0)
    delays = []
    for _ in range(4):
        p.subscribed()  # acked again each time, then "limit exceeded" again
        delays.append(p.next_delay("close_4002"))
        assert p.last == "backoff"
    assert delays == [0.25, 0.5, 1.0, 2.0]


def test_fast_reconnects_are_budgeted_against_an_ack_then_drop_loop() -> None:
    clock = FakeClock()
    p = policy(0.0, clock)
    paths = []
    for _ in range(FAST_BURST + 2):
        p.subscribed()
        p.next_delay("close_1006")
        paths.append(p.last)
        clock.now += 0.01
    assert paths == ["fast"] * FAST_BURST + ["backoff"] * 2
    clock.now += 1.0  # one token back
    p.subscribed()
    assert p.next_delay("close_1006") == 0.0 and p.last == "fast"
    p.subscribed()
    p.next_delay("close_1006")
    assert p.last == "backoff"


def test_drops_once_a_second_stay_fast_indefinitely() -> None:
    clock = FakeClock()
    p = policy(0.5, clock)
    for _ in range(100):
        clock.now += 1.0
        p.subscribed()
        assert p.next_delay("close_1006") == 0.5 * FAST_JITTER_S and p.last == "fast"


def test_rejects_nonsense_settings() -> None:
    with pytest.raises(ValueError):
        ReconnectPolicy(burst=0)
    with pytest.raises(ValueError):
        ReconnectPolicy(fast_jitter_s=-1)
