"""Soak: a long run of every stream through one bridge, watching for leaks and drift.

Run: `.venv/bin/python -m bench.soak [--minutes 6] [--prefill 6000000] [--rate 20000]`

Real processes on this machine: a local Apache Kafka (`bridge.embedded`), the DropCopy
simulator (`polybridge sim dropcopy --no-auth`: `--prefill` records journaled up front and
replayed from the epoch, then `--rate` records/s live, all four streams) and the Predexon
simulator (`polybridge sim predexon`, `--predexon-rate` events/s per channel on every
channel), and the bridge (`python -m bridge run`) with all four DropCopy streams and four
Predexon subscriptions, its metrics endpoint on a free port.

Every `--sample-s` seconds this process samples the bridge: RSS (VmRSS), open file
descriptors (/proc/<pid>/fd), threads (/proc/<pid>/status), and from /metrics the records
and commits totals and the commit-latency histogram (mean and p99 bucket of the commits in
the interval). It prints one row per minute and a verdict on the trends (RSS slope over the
second half, fd and thread growth), so a leak shows up as a number, not as a feeling.

Time is compressed: the prefilled journal makes the first minutes a replay at full speed
(what a restart after a long outage looks like), then live traffic at `--rate`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.common import bucket_percentile, machine_facts, markdown_table, rss_mb, scrape
from bench.dropcopy_e2e import simulator, stop_process
from bridge.embedded import EmbeddedBroker, free_port
from bridge.sim.market import DEFAULT_FIRMS

PARTICIPANT = f"{DEFAULT_FIRMS[0]}/users/alice"
KINDS = ("executions", "trade_captures", "instrument_states", "position_changes")
ACCOUNT_SCOPED = ("executions", "trade_captures", "position_changes")
PREDEXON_SUBS = (
    ("orders", "orders", '{ users = ["*"], status = "all" }'),
    ("activity", "activity", '{ users = ["*"] }'),
    ("crypto", "crypto", '{ feeds = ["*"] }'),
    ("collateral", "collateral", '{ users = ["*"] }'),
)


@contextlib.contextmanager
def predexon_simulator(workdir: Path, rate: float) -> Iterator[str]:
    """`polybridge sim predexon` on a free port; its host:port."""
    port = free_port()
    command = [sys.executable, "-m", "bridge.cli", "--log-level=WARNING", "sim", "predexon"]
    command += ["--port", str(port), "--rate", str(rate), "--confirm-scale", "0.02"]
    with open(workdir / "predexon-sim.log", "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while True:  # ready when it accepts a TCP connection
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("predexon simulator did not start")
            time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        stop_process(process)


def bridge_config(workdir: Path, bootstrap: str, dropcopy: str, predexon: str, port: int) -> Path:
    firms = ", ".join(f'"{f}"' for f in DEFAULT_FIRMS)
    streams = "".join(
        f'[[dropcopy.streams]]\nkind = "{k}"\nstart = "1970-01-01T00:00:00Z"\n'
        + (f"firms = [{firms}]\n" if k in ACCOUNT_SCOPED else "")
        for k in KINDS
    )
    subs = "".join(
        f'[[predexon.subscriptions]]\nname = "{n}"\nchannel = "{c}"\nfilters = {f}\n'
        for n, c, f in PREDEXON_SUBS
    )
    key = workdir / "predexon.key"
    key.write_text("sim-pro-key\n")
    path = workdir / "bridge.toml"
    path.write_text(
        'app_id = "soak"\n'
        f'[kafka]\nbootstrap_servers = "{bootstrap}"\ntopic_prefix = "soak."\npartitions = 3\n'
        f"[metrics]\nport = {port}\n"
        f'[dropcopy]\nendpoint = "{dropcopy}"\ntls = false\nparticipant_id = "{PARTICIPANT}"\n'
        '[dropcopy.auth]\nmode = "static"\ntoken_env = "POLYMARKET_ACCESS_TOKEN"\n'
        f"{streams}"
        f'[predexon]\nurl = "ws://{predexon}/v1/{{api_key}}"\napi_key_file = "{key}"\n'
        f'plan = "pro"\n{subs}'
    )
    return path


# -- sampling ----------------------------------------------------------------------------


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


@dataclass
class Sample:
    at: float
    rss_mb: float
    fds: int
    threads: int
    metrics: dict[str, float]

    @property
    def records(self) -> float:
        return self.metrics.get("polybridge_records_total", 0.0)


def minute_rows(samples: list[Sample]) -> list[list[object]]:
    rows: list[list[object]] = []
    start = samples[0].at
    by_minute: dict[int, list[Sample]] = {}
    for s in samples:
        by_minute.setdefault(int((s.at - start) // 60), []).append(s)
    previous = samples[0]
    for minute in sorted(by_minute):
        last = by_minute[minute][-1]
        dt = max(1e-9, last.at - previous.at)
        m0, m1 = previous.metrics, last.metrics
        commits = m1.get("polybridge_commit_latency_seconds_count", 0) - m0.get(
            "polybridge_commit_latency_seconds_count", 0
        )
        latency = m1.get("polybridge_commit_latency_seconds_sum", 0) - m0.get(
            "polybridge_commit_latency_seconds_sum", 0
        )
        p99 = bucket_percentile(m0, m1, 99)
        rows.append(
            [
                minute + 1,
                f"{last.records / 1e6:.2f}",
                f"{(last.records - previous.records) / dt:,.0f}",
                f"{max(s.rss_mb for s in by_minute[minute]):.0f}",
                max(s.fds for s in by_minute[minute]),
                max(s.threads for s in by_minute[minute]),
                f"{commits / dt:.1f}",
                f"{1000 * latency / commits:.1f}" if commits else "-",
                f"{1000 * p99:.0f}" if p99 is not None else "-",
                int(m1.get("polybridge_aborts_total", 0)),
                int(m1.get("polybridge_gaps_total", 0)),
            ]
        )
        previous = last
    return rows


def slope_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) in value per minute."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    return 60 * sum((x - mx) * (y - my) for x, y in points) / var if var else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=6.0)
    parser.add_argument("--prefill", type=int, default=6_000_000, help="DropCopy journal")
    parser.add_argument("--rate", type=int, default=20_000, help="DropCopy live records/s")
    parser.add_argument("--predexon-rate", type=float, default=50.0, help="events/s/channel")
    parser.add_argument("--sample-s", type=float, default=5.0)
    parser.add_argument(
        "--retention",
        type=int,
        default=None,
        help="DropCopy journal records kept per stream (the simulator holds ~1.9 KB per "
        "record in memory: bound it for runs of tens of millions)",
    )
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        workdir = Path(tmp)
        metrics_port = free_port()
        print(f"# soak: {machine_facts()}", flush=True)
        print(f"# preparing: DropCopy journal of {args.prefill:,} records ...", flush=True)
        with (
            EmbeddedBroker(log_path=workdir / "kafka.log") as broker,
            simulator(workdir, args.prefill, args.rate, args.retention) as dropcopy,
            predexon_simulator(workdir, args.predexon_rate) as predexon,
        ):
            print(f"# journal ready after {time.monotonic() - started:.0f} s", flush=True)
            config = bridge_config(
                workdir, broker.bootstrap_servers, dropcopy, predexon, metrics_port
            )
            env = {**os.environ, "POLYMARKET_ACCESS_TOKEN": "unused-sim-has-no-auth"}
            command = [sys.executable, "-m", "bridge", "--log-level=WARNING", "run"]
            with open(workdir / "bridge.log", "wb") as log:
                bridge = subprocess.Popen(
                    [*command, "--config", str(config)], stdout=log, stderr=log, env=env
                )
            samples: list[Sample] = []
            try:
                begin = time.monotonic()
                while time.monotonic() - begin < args.minutes * 60:
                    if bridge.poll() is not None:
                        raise RuntimeError(f"bridge exited with {bridge.returncode}")
                    with contextlib.suppress(OSError):  # endpoint not up yet
                        metrics = scrape(metrics_port)
                        rss = rss_mb(bridge.pid) or 0.0
                        samples.append(
                            Sample(
                                time.monotonic(), rss, fds(bridge.pid), threads(bridge.pid), metrics
                            )
                        )
                        last = samples[-1]
                        print(
                            f"  t={last.at - begin:5.0f}s records={last.records:,.0f} "
                            f"rss={last.rss_mb:.0f}MB fds={last.fds} threads={last.threads}",
                            flush=True,
                        )
                    time.sleep(args.sample_s)  # the sampling period
            finally:
                stop_process(bridge, timeout=30)
                bridge_log = (workdir / "bridge.log").read_text()
                if bridge.returncode not in (0, None):
                    print(bridge_log[-3000:], file=sys.stderr)
        report(samples, args)
        # A gap count is only meaningful with its reasons: print the bridge's gap lines.
        for line in [line for line in bridge_log.splitlines() if " gap from=" in line][:20]:
            print(f"# {line}")


def report(samples: list[Sample], args: argparse.Namespace) -> None:
    if len(samples) < 2:
        raise SystemExit("too few samples: the bridge never served /metrics")
    headers = [
        "min",
        "records (M)",
        "records/s",
        "RSS MB (max)",
        "fds (max)",
        "threads (max)",
        "commits/s",
        "commit ms (mean)",
        "commit ms (p99 ≤)",
        "aborts",
        "gaps",
    ]
    print()
    print(
        f"`python -m bench.soak --minutes {args.minutes:g} --prefill {args.prefill} "
        f"--rate {args.rate} --predexon-rate {args.predexon_rate:g}"
        + (f" --retention {args.retention}" if args.retention else "")
        + f"` on {machine_facts()}"
    )
    print()
    print(markdown_table(headers, minute_rows(samples)))
    half = samples[len(samples) // 2 :]
    t0 = samples[0].at
    rss_slope = slope_per_min([(s.at - t0, s.rss_mb) for s in half])
    first, last = samples[0], samples[-1]
    print()
    print(
        f"records: {last.records:,.0f} in {last.at - t0:.0f} s; "
        f"RSS slope over the second half: {rss_slope:+.1f} MB/min; "
        f"fds {first.fds} -> {last.fds} (max {max(s.fds for s in samples)}); "
        f"threads {first.threads} -> {last.threads} (max {max(s.threads for s in samples)})"
    )


if __name__ == "__main__":
    main()
