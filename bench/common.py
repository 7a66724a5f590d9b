"""Small helpers shared by the benches: RSS sampling, percentiles, tables, machine facts."""

from __future__ import annotations

import os
import platform
import re
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field


def rss_mb(pid: int) -> float | None:
    """Resident set size of `pid` in MB (VmRSS from /proc), or None once it has exited."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return None


@dataclass
class RssSampler:
    """Samples one process's RSS every `interval_s` in a daemon thread until `stop()`."""

    pid: int
    interval_s: float = 1.0
    samples: list[tuple[float, float]] = field(default_factory=list)
    """(seconds since start, RSS MB)."""
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, name=f"rss {self.pid}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        started = time.monotonic()
        while True:
            mb = rss_mb(self.pid)
            if mb is None:
                return
            self.samples.append((time.monotonic() - started, mb))
            if self._stop.wait(self.interval_s):
                return

    @property
    def max_mb(self) -> float:
        return max((mb for _, mb in self.samples), default=float("nan"))

    def summary(self) -> str:
        """`start/middle/end/max` of the samples, in MB."""
        if not self.samples:
            return "no samples"
        mbs = [mb for _, mb in self.samples]
        return (
            f"start {mbs[0]:.0f} / middle {mbs[len(mbs) // 2]:.0f} / end {mbs[-1]:.0f} / "
            f"max {max(mbs):.0f} MB over {self.samples[-1][0]:.0f} s ({len(mbs)} samples); "
            f"second-half trend {self.trend_mb_per_min():+.1f} MB/min"
        )

    def trend_mb_per_min(self) -> float:
        """Least-squares slope of RSS over the second half of the samples (after warm-up)."""
        half = self.samples[len(self.samples) // 2 :]
        if len(half) < 2:
            return float("nan")
        mean_t = sum(t for t, _ in half) / len(half)
        mean_mb = sum(mb for _, mb in half) / len(half)
        var = sum((t - mean_t) ** 2 for t, _ in half)
        cov = sum((t - mean_t) * (mb - mean_mb) for t, mb in half)
        return 60 * cov / var if var else float("nan")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds `pid` has used so far (/proc/<pid>/stat), None once gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: Sequence[float], p: float) -> float:
    """The `p`-th percentile (0-100) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table; floats are printed without decimals, NaN as "-"."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            return "-" if value != value else f"{value:,.0f}"
        if isinstance(value, int):
            return f"{value:,}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_facts() -> str:
    """nproc, CPU model, memory and Python version, one line."""
    model = "?"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gb = float("nan")
    return (
        f"nproc={len(os.sched_getaffinity(0))} cpu={model!r} mem={mem_gb:.0f} GiB "
        f"python={platform.python_version()} kernel={platform.release()}"
    )


_METRIC = re.compile(r"^(polybridge_[a-z_]+)(\{[^}]*\})? ([0-9.eE+-]+|NaN)$")


def scrape(port: int) -> dict[str, float]:
    """The bridge's /metrics summed over streams; the commit-latency histogram's buckets as
    `bucket:<le>`."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        match = _METRIC.match(line)
        if not match:
            continue
        name, labels, value = match.group(1), match.group(2) or "", float(match.group(3))
        if name == "polybridge_commit_latency_seconds_bucket":
            le = re.search(r'le="([^"]+)"', labels)
            name = f"bucket:{le.group(1) if le else '?'}"
        out[name] = out.get(name, 0.0) + value
    return out


def bucket_percentile(before: dict[str, float], after: dict[str, float], p: float) -> float | None:
    """Upper bound (s) of the commit-latency bucket holding the `p`-th percentile of the
    commits between two scrapes (buckets are cumulative)."""
    buckets = sorted(
        (float(k[7:]), after[k] - before.get(k, 0.0)) for k in after if k.startswith("bucket:")
    )
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    return next(le for le, n in buckets if n >= p / 100 * total)
