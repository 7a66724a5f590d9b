"""Event times: the unit by magnitude, and the plausibility bounds (bridge.event_times)."""

from __future__ import annotations

import pytest

from bridge.event_times import (
    AHEAD_US,
    EARLIEST_US,
    describe_us,
    is_plausible,
    micros_by_magnitude,
    plausible_or_none,
)

NOW_US = 1_796_000_000_000_000  # 2026-11-30
NOW_S = NOW_US // 1_000_000


@pytest.mark.parametrize(
    "value",
    [NOW_S, NOW_S * 1_000, NOW_S * 1_000_000, 946_684_800, 946_684_800_000, 946_684_800_000_000],
)
def test_seconds_milliseconds_and_microseconds_give_the_same_instant(value: int) -> None:
    micros = micros_by_magnitude(value)
    assert micros is not None and is_plausible(micros, NOW_US)
    assert micros in (NOW_S * 1_000_000, EARLIEST_US)


@pytest.mark.parametrize(
    "value",
    [0, -1, -NOW_S, NOW_S * 10**9, 2**63 - 1, -(2**63), 10**17],
)
def test_zero_negatives_nanoseconds_and_beyond_have_no_unit(value: int) -> None:
    assert micros_by_magnitude(value) is None


def test_band_edges() -> None:
    assert micros_by_magnitude(10**11 - 1) == (10**11 - 1) * 1_000_000  # seconds
    assert micros_by_magnitude(10**11) == 10**14  # milliseconds
    assert micros_by_magnitude(10**14) == 10**14  # microseconds
    assert micros_by_magnitude(10**17 - 1) == 10**17 - 1


def test_plausible_from_2000_to_one_day_past_the_clock() -> None:
    assert not is_plausible(EARLIEST_US - 1, NOW_US)
    assert is_plausible(EARLIEST_US, NOW_US)
    assert is_plausible(NOW_US + AHEAD_US, NOW_US)
    assert not is_plausible(NOW_US + AHEAD_US + 1, NOW_US)
    assert plausible_or_none(None, NOW_US) is None
    assert plausible_or_none(1, NOW_US) is None
    assert plausible_or_none(NOW_US, NOW_US) == NOW_US
    # Seconds read as seconds when they were milliseconds: the year 58,000, refused.
    assert plausible_or_none(NOW_S * 1_000 * 1_000_000, NOW_US) is None


def test_describe_names_a_date_or_says_there_is_none() -> None:
    assert describe_us(EARLIEST_US) == "2000-01-01T00:00:00Z"
    assert "beyond years 1-9999" in describe_us(NOW_S * 1_000 * 1_000_000)
