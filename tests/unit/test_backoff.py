"""Backoff: full-jitter exponential delays, capped, reset only after a healthy period."""

from __future__ import annotations

import pytest

from bridge.sources.backoff import Backoff


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_delays_double_up_to_the_cap_with_max_jitter() -> None:
    backoff = Backoff(1.0, 30.0, 60.0, rng=lambda: 0.999999, clock=FakeClock())
    delays = [round(backoff.next_delay()) for _ in range(8)]
    assert delays == [1, 2, 4, 8, 16, 30, 30, 30]


def test_full_jitter_draws_between_zero_and_the_ceiling() -> None:
    draws = iter([0.0, 0.5, 0.25])
    backoff = Backoff(2.0, 30.0, rng=lambda: next(draws), clock=FakeClock())
    assert [backoff.next_delay() for _ in range(3)] == [0.0, 2.0, 2.0]


def test_success_alone_does_not_reset_a_flapping_connection() -> None:
    clock = FakeClock()
    backoff = Backoff(1.0, 30.0, 60.0, rng=lambda: 1.0, clock=clock)
    for _ in range(4):
        backoff.next_delay()
        backoff.success()
        clock.now += 5  # dropped again after 5 s: not healthy
    assert not backoff.healthy()
    assert backoff.next_delay() == 16.0


def test_resets_after_a_healthy_period() -> None:
    clock = FakeClock()
    backoff = Backoff(1.0, 30.0, 60.0, rng=lambda: 1.0, clock=clock)
    for _ in range(5):
        backoff.next_delay()
    backoff.success()
    clock.now += 59.9
    assert not backoff.healthy()
    clock.now += 0.1
    assert backoff.healthy()
    assert backoff.next_delay() == 1.0
    assert backoff.attempt == 1


def test_long_outages_do_not_overflow() -> None:
    backoff = Backoff(rng=lambda: 1.0, clock=FakeClock())
    for _ in range(2000):
        delay = backoff.next_delay()
    assert delay == 30.0


def test_rejects_nonsense_bounds() -> None:
    with pytest.raises(ValueError):
        Backoff(initial_s=0)
    with pytest.raises(ValueError):
        Backoff(initial_s=5, cap_s=1)


def test_equal_jitter_keeps_a_floor_under_every_delay() -> None:
    lows = Backoff(1.0, 8.0, jitter=0.5, rng=lambda: 0.0, clock=FakeClock())
    highs = Backoff(1.0, 8.0, jitter=0.5, rng=lambda: 0.999999, clock=FakeClock())
    assert [lows.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert [round(highs.next_delay(), 3) for _ in range(5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    exact = Backoff(1.0, 8.0, jitter=0.0, rng=lambda: 0.3, clock=FakeClock())
    assert [exact.next_delay() for _ in range(3)] == [1.0, 2.0, 4.0]
    with pytest.raises(ValueError):
        Backoff(jitter=1.5)
