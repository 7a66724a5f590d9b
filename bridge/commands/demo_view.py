"""The demo's live view: the bridge's own /metrics, scraped and shown per stream.

`MetricsView.sample()` scrapes the endpoint (stdlib urllib, Prometheus text parsed by
prometheus-client's parser) and turns counters into rates since the previous scrape.
`render_table()` builds a `rich` table for a terminal; `render_lines()` gives plain
`key=value` lines for logs, CI and tests (no terminal control codes).
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from rich import box
from rich.markup import escape
from rich.table import Table

from bridge.metrics import by_stream, parse_text

# A scrape that takes longer than this counts as "bridge not answering" (it is on
# loopback; a bridge being killed or restarting is the usual cause).
_SCRAPE_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class StreamRow:
    """One stream's numbers at one scrape."""

    stream: str
    up: bool
    records: int
    records_per_s: float
    commit_ms: float | None
    """Mean commit latency over the last interval (None: no commit in it)."""
    lag_s: float | None
    reconnects: int
    gaps: int
    dead_letters: int


class MetricsView:
    """Scrapes one bridge's /metrics and computes per-stream rates between scrapes."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.url = f"http://{host}:{port}/metrics"
        # stream -> (time, records, commit latency sum, commit count) at the last scrape
        self._previous: dict[str, tuple[float, float, float, float]] = {}

    def sample(self) -> list[StreamRow] | None:
        """Rows per stream, or None when the bridge does not answer (killed, starting)."""
        try:
            with urllib.request.urlopen(self.url, timeout=_SCRAPE_TIMEOUT_S) as response:
                text = response.read().decode()
        except (urllib.error.URLError, OSError):
            return None
        now = time.monotonic()
        samples = parse_text(text)
        up = by_stream(samples, "polybridge_up")
        records = by_stream(samples, "polybridge_records_total")
        latency_sum = by_stream(samples, "polybridge_commit_latency_seconds_sum")
        latency_count = by_stream(samples, "polybridge_commit_latency_seconds_count")
        lag = by_stream(samples, "polybridge_lag_seconds")
        reconnects = by_stream(samples, "polybridge_reconnects_total")
        gaps = by_stream(samples, "polybridge_gaps_total")
        dead = by_stream(samples, "polybridge_dead_letters_total")
        rows = []
        for stream in sorted(up):
            current = (now, records.get(stream, 0.0), latency_sum.get(stream, 0.0))
            count = latency_count.get(stream, 0.0)
            before = self._previous.get(stream)
            self._previous[stream] = (*current, count)
            rate, commit_ms = 0.0, None
            # A restarted bridge starts its counters at zero again: then rate from zero.
            if before is not None and current[1] >= before[1] and now > before[0]:
                rate = (current[1] - before[1]) / (now - before[0])
                if count > before[3]:
                    commit_ms = 1000 * (current[2] - before[2]) / (count - before[3])
            rows.append(
                StreamRow(
                    stream=stream,
                    up=up[stream] > 0,
                    records=int(current[1]),
                    records_per_s=rate,
                    commit_ms=commit_ms,
                    lag_s=lag.get(stream),
                    reconnects=int(reconnects.get(stream, 0)),
                    gaps=int(gaps.get(stream, 0)),
                    dead_letters=int(dead.get(stream, 0)),
                )
            )
        return rows


def _number(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def render_table(rows: list[StreamRow] | None, title: str) -> Table:
    """A rich table of `rows` (or a note while the bridge is not answering); a stream
    whose pipeline is not running is shown in red."""
    table = Table(
        title=escape(title),
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        padding=(0, 0),
    )
    # Short headers: the table must fit an 80-column terminal with full stream ids.
    table.add_column("stream", no_wrap=True)
    for header in ("rec/s", "records", "commit ms", "lag s", "recon", "gaps", "dlq"):
        table.add_column(header, justify="right", no_wrap=True)
    if rows is None:
        table.title = escape(f"{title}: bridge not answering (killed or starting)")
        return table
    for row in rows:
        table.add_row(
            row.stream if row.up else f"[red]{row.stream} (down)[/red]",
            f"{row.records_per_s:,.0f}",
            f"{row.records:,}",
            _number(row.commit_ms, ".1f"),
            _number(row.lag_s, ".2f"),
            str(row.reconnects),
            str(row.gaps),
            str(row.dead_letters),
        )
    return table


def render_lines(rows: list[StreamRow] | None, label: str) -> list[str]:
    """Plain `key=value` lines, one per stream, for non-terminal output."""
    if rows is None:
        return [f"[{label}] metrics: bridge not answering (killed or starting)"]
    return [
        f"[{label}] metrics: stream={row.stream} up={int(row.up)} "
        f"records_per_s={row.records_per_s:.0f} records={row.records} "
        f"commit_ms={_number(row.commit_ms, '.1f')} lag_s={_number(row.lag_s, '.2f')} "
        f"reconnects={row.reconnects} gaps={row.gaps} dead_letters={row.dead_letters}"
        for row in rows
    ]
