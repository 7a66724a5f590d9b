"""Maintenance windows: the weekly window across time zones and DST, announced windows,
their configuration, and how /readyz and /metrics show a stream waiting one out."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from zoneinfo import ZoneInfo

import grpc
import pytest

from bridge.config import DropCopyMaintenanceSettings, Settings, load_settings
from bridge.errors import ConfigError
from bridge.health import HealthServer, in_maintenance, not_ready
from bridge.maintenance import MaintenanceSchedule, WeeklyWindow, parse_clock
from bridge.metrics import BridgeCollector, PipelineStats, StreamView
from bridge.records import Batch, Position, SourceStatus
from bridge.sources.dropcopy.source import MAINTENANCE_CODES

NEW_YORK = ZoneInfo("America/New_York")


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.UTC)  # type: ignore[misc]


def default_schedule(
    extra: list[tuple[dt.datetime, dt.datetime]] | None = None,
) -> MaintenanceSchedule:
    """The default weekly window (Thursday 06:00-08:00 New York) plus `extra`."""
    return MaintenanceSchedule(DropCopyMaintenanceSettings().schedule().weekly, extra or [])


def span(schedule: MaintenanceSchedule, moment: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    window = schedule.window_at(moment)
    assert window is not None, f"no window at {moment}"
    return window.start, window.end


@pytest.mark.parametrize(
    ("thursday", "start_hour_utc"),
    [
        ((2024, 1, 11), 11),  # EST (UTC-5)
        ((2024, 7, 11), 10),  # EDT (UTC-4)
        ((2024, 3, 7), 11),  # the Thursday before DST starts (Sunday 2024-03-10)
        ((2024, 3, 14), 10),  # the Thursday after
        ((2024, 10, 31), 10),  # the Thursday before DST ends (Sunday 2024-11-03)
        ((2024, 11, 7), 11),  # the Thursday after
    ],
)
def test_weekly_window_is_new_york_wall_clock_whatever_the_season(
    thursday: tuple[int, int, int], start_hour_utc: int
) -> None:
    schedule = default_schedule()
    start = utc(*thursday, start_hour_utc)
    end = start + dt.timedelta(hours=2)
    assert schedule.window_at(start - dt.timedelta(seconds=1)) is None
    assert span(schedule, start) == (start, end)
    assert span(schedule, end - dt.timedelta(microseconds=1)) == (start, end)
    assert schedule.window_at(end) is None  # the end is exclusive
    window = schedule.window_at(start)
    assert window is not None and window.kind == "weekly"
    # The same wall-clock hours on the other days are not a window.
    for days in (-3, -2, -1, 1, 2, 3):
        assert schedule.window_at(start + dt.timedelta(days=days, minutes=30)) is None
    # A moment given in any zone means the same instant.
    assert span(schedule, (start + dt.timedelta(minutes=5)).astimezone(NEW_YORK)) == (start, end)


def test_weekly_window_in_a_zone_east_of_utc_falls_on_the_previous_utc_day() -> None:
    tokyo = WeeklyWindow(3, parse_clock("06:00"), parse_clock("08:00"), ZoneInfo("Asia/Tokyo"))
    schedule = MaintenanceSchedule(tokyo)
    # Thursday 06:00 in Tokyo (UTC+9, no DST) is Wednesday 21:00 UTC.
    assert span(schedule, utc(2024, 1, 10, 22)) == (utc(2024, 1, 10, 21), utc(2024, 1, 10, 23))
    assert schedule.window_at(utc(2024, 1, 11, 22)) is None


def test_weekly_window_across_midnight_ends_the_next_day() -> None:
    late = WeeklyWindow(3, parse_clock("22:00"), parse_clock("02:00"), NEW_YORK)
    schedule = MaintenanceSchedule(late)
    # Thursday 2024-01-11 22:00 EST = Friday 03:00 UTC, until Friday 02:00 EST = 07:00 UTC.
    expected = (utc(2024, 1, 12, 3), utc(2024, 1, 12, 7))
    assert span(schedule, utc(2024, 1, 12, 3)) == expected
    assert span(schedule, utc(2024, 1, 12, 6, 59)) == expected  # Friday local time
    assert schedule.window_at(utc(2024, 1, 12, 7)) is None
    assert schedule.window_at(utc(2024, 1, 11, 3, 30)) is None  # Wednesday night


def test_weekly_window_spanning_a_dst_change_lasts_the_real_elapsed_time() -> None:
    night = WeeklyWindow(6, parse_clock("01:00"), parse_clock("04:00"), NEW_YORK)
    schedule = MaintenanceSchedule(night)
    # Spring forward (2024-03-10 02:00 -> 03:00): 01:00 EST .. 04:00 EDT is two hours.
    assert span(schedule, utc(2024, 3, 10, 7)) == (utc(2024, 3, 10, 6), utc(2024, 3, 10, 8))
    # Fall back (2024-11-03 02:00 -> 01:00): 01:00 EDT .. 04:00 EST is four hours.
    assert span(schedule, utc(2024, 11, 3, 8, 30)) == (utc(2024, 11, 3, 5), utc(2024, 11, 3, 9))
    assert schedule.window_at(utc(2024, 11, 3, 9)) is None


def test_announced_windows_alone_and_merged_with_the_weekly_one() -> None:
    extra = (utc(2024, 1, 9, 12), utc(2024, 1, 9, 13))  # a Tuesday
    schedule = default_schedule([extra])
    assert span(schedule, utc(2024, 1, 9, 12, 30)) == extra
    window = schedule.window_at(utc(2024, 1, 9, 12))
    assert window is not None and window.kind == "announced"
    assert schedule.window_at(utc(2024, 1, 9, 13)) is None
    # Announced right after the weekly window (13:00..14:00 UTC in January): one window
    # 11:00..14:00, so a waiting stream does not try in between.
    joined = default_schedule([(utc(2024, 1, 11, 13), utc(2024, 1, 11, 14))])
    assert span(joined, utc(2024, 1, 11, 11, 5)) == (utc(2024, 1, 11, 11), utc(2024, 1, 11, 14))
    window = joined.window_at(utc(2024, 1, 11, 11, 5))
    assert window is not None and window.kind == "weekly+announced"
    assert span(joined, utc(2024, 1, 11, 13, 30)) == (utc(2024, 1, 11, 13), utc(2024, 1, 11, 14))
    # A chain of overlapping announced windows, without the weekly one.
    chain = MaintenanceSchedule(
        None,
        [
            (utc(2024, 1, 1, 0), utc(2024, 1, 1, 1)),
            (utc(2024, 1, 1, 0, 30), utc(2024, 1, 1, 2)),
            (utc(2024, 1, 1, 2), utc(2024, 1, 1, 3)),
        ],
    )
    assert span(chain, utc(2024, 1, 1, 0, 10)) == (utc(2024, 1, 1, 0), utc(2024, 1, 1, 3))
    assert MaintenanceSchedule(None).window_at(utc(2024, 1, 11, 11, 30)) is None


def test_schedule_rejects_naive_times_and_empty_windows() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        default_schedule().window_at(dt.datetime(2024, 1, 11, 11, 30))
    with pytest.raises(ValueError, match="before it starts"):
        MaintenanceSchedule(None, [(utc(2024, 1, 1, 1), utc(2024, 1, 1, 1))])


def test_configuration_defaults_overrides_and_errors(tmp_path: Path) -> None:
    settings = DropCopyMaintenanceSettings()
    assert (settings.weekday, settings.start, settings.end) == ("thursday", "06:00", "08:00")
    assert settings.timezone == "America/New_York" and settings.retry_interval_s == 30.0
    assert {grpc.StatusCode[c] for c in settings.refused_codes} == set(MAINTENANCE_CODES)
    assert Settings().dropcopy.silence_timeout_s == 180.0

    config = tmp_path / "bridge.toml"
    config.write_text(
        "[dropcopy]\nsilence_timeout_s = 2.5\n[dropcopy.maintenance]\n"
        'weekday = "sunday"\nstart = "23:00"\nend = "01:00"\ntimezone = "Europe/London"\n'
        'extra = [{ start = "2024-05-01T10:00:00Z", end = "2024-05-01T11:00:00+00:00" }]\n'
    )
    loaded = load_settings(config, environ={})
    assert loaded.dropcopy.silence_timeout_s == 2.5
    schedule = loaded.dropcopy.maintenance.schedule()
    # Sunday 2024-06-02 23:00 BST = 22:00 UTC, until Monday 01:00 BST = 00:00 UTC.
    assert span(schedule, utc(2024, 6, 2, 23)) == (utc(2024, 6, 2, 22), utc(2024, 6, 3, 0))
    assert span(schedule, utc(2024, 5, 1, 10, 30)) == (utc(2024, 5, 1, 10), utc(2024, 5, 1, 11))
    env = {
        "POLYBRIDGE_DROPCOPY__MAINTENANCE__WEEKLY": "false",
        "POLYBRIDGE_DROPCOPY__MAINTENANCE__EXTRA": '[{"start": "2024-05-02T00:00", '
        '"end": "2024-05-02T01:00"}]',
    }
    from_env = load_settings(config, environ=env).dropcopy.maintenance.schedule()
    assert from_env.weekly is None
    assert span(from_env, utc(2024, 5, 2, 0, 30)) == (utc(2024, 5, 2, 0), utc(2024, 5, 2, 1))

    for bad, message in [
        ('timezone = "Mars/Olympus"', "unknown time zone"),
        ('start = "25:00"', "not a time of day"),
        ('weekday = "thursdy"', "dropcopy.maintenance.weekday"),
        ('refused_codes = ["UNAVAILBLE"]', "dropcopy.maintenance.refused_codes"),
        (
            'extra = [{ start = "2024-05-01T11:00:00Z", end = "2024-05-01T10:00:00Z" }]',
            "is not after start",
        ),
        ('extra = [{ start = "soon", end = "2024-05-01T10:00:00Z" }]', "not an ISO-8601 time"),
    ]:
        config.write_text(f"[dropcopy.maintenance]\n{bad}\n")
        with pytest.raises(ConfigError, match=message):
            load_settings(config, environ={})
    config.write_text("[dropcopy]\nsilence_timeout_s = 0\n")
    with pytest.raises(ConfigError, match="silence_timeout_s"):
        load_settings(config, environ={})


class _Upstream:
    """A source whose status the test sets (`bridge.records.Source`)."""

    def __init__(self, stream_id: str, state: SourceStatus) -> None:
        self.stream_id = stream_id
        self.state = state

    def status(self) -> SourceStatus:
        return self.state

    async def stream(self, start: Position | None) -> AsyncIterator[Batch]:
        raise NotImplementedError
        yield  # pragma: no cover


def _view(
    stream_id: str, source: _Upstream | None, *, commits: int, last_commit_at: float | None
) -> StreamView:
    stats = PipelineStats()
    stats.running = True
    stats.commits = commits
    stats.first_commit_at = stats.last_commit_at = last_commit_at
    return StreamView(stream_id, stats, source)


def test_readyz_reports_maintenance_instead_of_failing() -> None:
    waiting = _Upstream(
        "dropcopy.executions",
        SourceStatus(maintenance=True, maintenance_until="2024-01-11T13:00:00+00:00"),
    )
    healthy = _Upstream("dropcopy.instrument_states", SourceStatus(maintenance=False))
    views = [
        _view("dropcopy.executions", waiting, commits=5, last_commit_at=0.0),
        _view("dropcopy.instrument_states", healthy, commits=5, last_commit_at=99.0),
    ]
    # The refused stream has not committed for 100 s: not a failure, but "maintenance".
    assert not_ready(views, 10, now=100.0) == {}
    assert in_maintenance(views) == {
        "dropcopy.executions": "maintenance until 2024-01-11T13:00:00+00:00"
    }
    # Started inside a window: nothing committed yet, still not a failure.
    fresh = [_view("dropcopy.executions", waiting, commits=1, last_commit_at=None)]
    assert not_ready(fresh, 10, now=100.0) == {}
    # After the window the stream gets one readiness window to commit again, then the
    # usual rule applies.
    waiting.state = SourceStatus(maintenance=False, maintenance_ended_at=95.0)
    assert in_maintenance(views) == {}
    assert not_ready(views, 10, now=100.0) == {}
    assert "last commit 106.0s ago" in not_ready(views, 10, now=106.0)["dropcopy.executions"]
    # A stopped pipeline is a failure whatever its source says.
    waiting.state = replace(waiting.state, maintenance=True)
    views[0].stats.running = False
    assert not_ready(views, 10, now=100.0) == {"dropcopy.executions": "pipeline not running"}
    assert in_maintenance(views) == {}

    views[0].stats.running = True
    views[1].stats.last_commit_at = time.monotonic()  # the endpoint reads the real clock
    server = HealthServer(lambda: views, 10)
    answer = server.respond("/readyz")
    body = json.loads(answer.body)
    assert answer.status == 200, body
    assert body["ready"] is True and body["not_ready"] == {}
    assert set(body["maintenance"]) == {"dropcopy.executions"}
    assert body["maintenance"]["dropcopy.executions"].startswith("maintenance")


def test_maintenance_gauge_per_stream() -> None:
    views = [
        _view("a", _Upstream("a", SourceStatus(maintenance=True)), commits=2, last_commit_at=1.0),
        _view("b", _Upstream("b", SourceStatus(maintenance=False)), commits=2, last_commit_at=1.0),
        # e.g. a Predexon source: no maintenance windows
        _view("c", _Upstream("c", SourceStatus()), commits=2, last_commit_at=1.0),
        _view("d", None, commits=2, last_commit_at=1.0),
    ]
    families = {f.name: f for f in BridgeCollector(lambda: views).collect()}
    samples = {
        s.labels["stream"]: s.value for s in families["polybridge_upstream_maintenance"].samples
    }
    assert samples == {"a": 1.0, "b": 0.0}
