"""`polybridge demo`: simulators -> bridge -> Kafka on this machine, and the proof.

Starts the embedded broker (or uses `--bootstrap-servers`), the exchange DropCopy simulator
and the Predexon simulator, and runs the bridge as a separate process with every DropCopy
stream and two Predexon subscriptions. Halfway through it SIGKILLs the bridge and restarts
it, then checks that every DropCopy topic equals the simulator's ground truth (nothing
missing, nothing doubled, order per key kept) and that the Predexon topics hold no
duplicate and one gap record per subscription for the kill.

While it runs it shows the bridge's own /metrics per stream (records/s, totals, commit
latency, end-to-end lag, reconnects, gaps, dead letters): a `rich` live table on a
terminal, plain `key=value` lines otherwise (CI, tests, a pipe).

`--registry` (`make demo REGISTRY=1`) writes with Schema Registry framing instead of Avro
single-object encoding: a local Schema Registry starts beside the broker
(`bridge.embedded_registry`) and the bridge registers its schemas there at start.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from rich.console import Console
from rich.live import Live

from bridge.commands.demo_view import MetricsView, StreamRow, render_lines, render_table
from bridge.embedded import EmbeddedBroker, free_port
from bridge.embedded_registry import EmbeddedRegistry
from bridge.errors import KafkaError
from bridge.kafka.readback import header, read_topic
from bridge.records import EVENT_ID_HEADER, STREAM_HEADER
from bridge.sim import dropcopy as dropcopy_sim
from bridge.sim import predexon as predexon_sim
from bridge.sim.market import DEFAULT_FIRMS
from bridge.streams.channels import CHANNELS
from bridge.streams.kinds import KINDS
from bridge.verify import Comparison, compare, expected_dropcopy_rows, kafka_rows

PARTICIPANT = f"{DEFAULT_FIRMS[0]}/users/demo"
PREDEXON_KEY = "sim-pro-key"
PREDEXON_SUBSCRIPTIONS = {
    "whale-trades": ("orders", '{ users = ["*"], status = "all" }'),
    "crypto": ("crypto", '{ feeds = ["*"] }'),
}
PREFIX = "demo."
# How often the live view scrapes /metrics, and how often plain mode prints its lines.
VIEW_REFRESH_S = 1.0
PLAIN_EVERY_S = 2.0
STREAMING_TIMEOUT_S = 60.0
"""How long the demo waits for the bridge's first committed records before its clock runs."""
LIVE_RATE = 2_000.0
"""Exchange records generated a second while the demo runs (all DropCopy streams), unless
`--rate` says otherwise."""


class _LiveExchange:
    """Generates the exchange's live records at `rate` a second from the demo's own loop,
    so they keep coming through the kill and the restart however slow the machine is, and
    stop when the phases end (the comparison with the ground truth needs a still journal)."""

    def __init__(self, dc: dropcopy_sim.SimulatorThread, rate: float) -> None:
        self._dc = dc
        self._rate = rate
        self._since = time.monotonic()

    def tick(self) -> None:
        owed = int((time.monotonic() - self._since) * self._rate)
        if owed > 0:
            self._dc.generate(owed)
            self._since += owed / self._rate


def _config(
    workdir: Path,
    bootstrap: str,
    dc: dropcopy_sim.SimulatorThread,
    pdx_url: str,
    metrics_port: int,
    registry_url: str = "",
) -> Path:
    token = workdir / "dropcopy.token"
    token.write_text(dc.issue_token(participant=PARTICIPANT, lifetime_s=24 * 3600))
    key = workdir / "predexon.key"
    key.write_text(PREDEXON_KEY)
    firms = ", ".join(f'"{f}"' for f in DEFAULT_FIRMS)
    lines = [
        f'app_id = "{PREFIX}polybridge"',
        f'[kafka]\nbootstrap_servers = "{bootstrap}"\ntopic_prefix = "{PREFIX}"\npartitions = 3',
        "[pipeline]\nmax_latency_ms = 20",
        # One instance, killed and restarted at once: outside a stream group it takes its
        # streams back immediately, instead of after the dead member's session timeout.
        "[cluster]\nenabled = false",
        f'[metrics]\nport = {metrics_port}\nhost = "127.0.0.1"',
        f'[dropcopy]\nendpoint = "{dc.address}"\ntls = false\nparticipant_id = "{PARTICIPANT}"',
        f'[dropcopy.auth]\nmode = "static"\ntoken_file = "{token}"',
        f'[predexon]\nurl = "{pdx_url}"\napi_key_file = "{key}"\nplan = "pro"',
    ]
    if registry_url:
        lines.append(f'[schema_registry]\nurl = "{registry_url}"')
    for kind in KINDS:
        firms_line = f"firms = [{firms}]\n" if KINDS[kind].account_scoped else ""
        lines.append(
            f'[[dropcopy.streams]]\nkind = "{kind}"\nstart = "1970-01-01T00:00:00Z"\n{firms_line}'
        )
    for name, (channel, filters) in PREDEXON_SUBSCRIPTIONS.items():
        lines.append(
            f'[[predexon.subscriptions]]\nname = "{name}"\nchannel = "{channel}"\n'
            f"filters = {filters}"
        )
    path = workdir / "bridge.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@contextlib.contextmanager
def _broker(bootstrap: str | None) -> Iterator[str]:
    if bootstrap:
        yield bootstrap
        return
    with EmbeddedBroker() as broker:
        yield broker.bootstrap_servers


@contextlib.contextmanager
def _registry(wanted: bool) -> Iterator[str]:
    """A local Schema Registry's URL when `wanted`, else "" (single-object encoding)."""
    if not wanted:
        yield ""
        return
    with EmbeddedRegistry() as registry:
        yield registry.url


def _start_bridge(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "bridge", "run", "--config", str(config)],
            stdout=out,
            stderr=out,
            env=os.environ.copy(),
        )


def _framing(kafka: dict[str, str], topic: str) -> str:
    """Which schema ids the records of `topic` carry (registry framing: 00 + 4-byte id)."""
    heads = Counter(r.value[:5] for r in read_topic(kafka, topic) if r.value is not None)
    ids = sorted(int.from_bytes(h[1:], "big") for h in heads if h[:1] == b"\x00")
    other = sum(n for h, n in heads.items() if h[:1] != b"\x00")
    return f"registry framing: {topic} schema ids {ids}, {other} records framed otherwise"


def _dropcopy_comparisons(
    kafka: dict[str, str], dc: dropcopy_sim.SimulatorThread
) -> list[Comparison]:
    results = []
    for kind, spec in KINDS.items():
        stream_id = f"dropcopy.{kind}"
        truth = dc.ground_truth(kind, firms=DEFAULT_FIRMS if spec.account_scoped else ())
        expected = expected_dropcopy_rows(kind, stream_id, truth)
        try:
            actual = kafka_rows(kafka, PREFIX + spec.topic, stream_id)
        except KafkaError:
            actual = []
        results.append(compare(stream_id, expected, actual))
    return results


def _predexon_summary(kafka: dict[str, str]) -> list[tuple[str, int, int, int]]:
    """(stream, records, duplicated event ids, gap records) per Predexon subscription."""
    try:
        gaps = Counter(
            (header(r.headers, STREAM_HEADER) or b"").decode()
            for r in read_topic(kafka, PREFIX + "polybridge.gaps")
        )
    except KafkaError:
        gaps = Counter()
    rows = []
    for name, (channel, _) in PREDEXON_SUBSCRIPTIONS.items():
        stream_id = f"predexon.{name}"
        try:
            records = [
                r
                for r in read_topic(kafka, PREFIX + CHANNELS[channel].topic)
                if header(r.headers, STREAM_HEADER) == stream_id.encode()
            ]
        except KafkaError:
            records = []
        ids = Counter(header(r.headers, EVENT_ID_HEADER) for r in records)
        rows.append((stream_id, len(records), sum(n - 1 for n in ids.values()), gaps[stream_id]))
    return rows


def _progress(kafka: dict[str, str], dc: dropcopy_sim.SimulatorThread, label: str) -> None:
    parts = [
        f"{c.stream_id.split('.')[1]}={c.actual}/{c.expected}"
        for c in _dropcopy_comparisons(kafka, dc)
    ]
    parts += [f"{s.split('.')[1]}={n}" for s, n, _, _ in _predexon_summary(kafka)]
    print(f"[{label}] in Kafka: " + "  ".join(parts), flush=True)


def run_demo(
    duration: float, bootstrap: str | None, registry: bool = False, rate: float = LIVE_RATE
) -> int:
    half = max(3.0, duration / 2)
    dc_config = dropcopy_sim.SimConfig(seed=7, prefill=20_000, rate=0, heartbeat_s=0.1)
    pdx_config = predexon_sim.SimConfig(seed=7, rate=20.0)
    with (
        tempfile.TemporaryDirectory(prefix="polybridge-demo-") as tmp,
        _broker(bootstrap) as servers,
        _registry(registry) as registry_url,
        dropcopy_sim.SimulatorThread(dc_config) as dc,
        predexon_sim.SimulatorThread(pdx_config) as pdx,
    ):
        workdir = Path(tmp)
        kafka = {"bootstrap.servers": servers}
        url = pdx.sim.url_for(PREDEXON_KEY).replace(PREDEXON_KEY, "{api_key}")
        metrics_port = free_port()
        config = _config(workdir, servers, dc, url, metrics_port, registry_url)
        view = MetricsView(metrics_port)
        console = Console() if sys.stdout.isatty() else None
        log = workdir / "bridge.log"
        print(f"Kafka: {servers}   exchange simulator: {dc.address}   Predexon simulator: {url}")
        if registry_url:
            print(f"Schema Registry: {registry_url} (values framed 00 + schema id)")
        print(f"bridge configuration: {config}")
        print(f"bridge metrics: {view.url} (also /healthz, /readyz)", flush=True)
        live = _LiveExchange(dc, rate)
        bridge = _start_bridge(config, log)
        try:
            _until_streaming(view, live)
            _run_for(half, kafka, dc, "running", view, console, live)
            bridge.send_signal(signal.SIGKILL)
            bridge.wait()
            print("[kill -9] the bridge is gone mid-stream; restarting it", flush=True)
            bridge = _start_bridge(config, log)
            _until_running(view, live)  # on a loaded machine the restart can outlast the phase
            _run_for(duration - half, kafka, dc, "restarted", view, console, live)
            deadline = time.monotonic() + 120  # live generation has stopped: let it catch up
            while not all(c.equal for c in _dropcopy_comparisons(kafka, dc)):
                if time.monotonic() > deadline:
                    break
                time.sleep(1.0)
            comparisons = _dropcopy_comparisons(kafka, dc)
            predexon = _predexon_summary(kafka)
        finally:
            bridge.send_signal(signal.SIGTERM)
            try:
                bridge.wait(30)
            except subprocess.TimeoutExpired:
                bridge.kill()
        if registry_url:
            print(_framing(kafka, PREFIX + KINDS["executions"].topic))
        print("\nDropCopy topics against the exchange simulator's ground truth:")
        for comparison in comparisons:
            print("  " + comparison.summary())
        print("Predexon topics (no replay upstream: the kill is a gap record, not a loss):")
        for stream_id, records, duplicated, gaps in predexon:
            print(f"  {stream_id}: records={records} duplicated={duplicated} gap_records={gaps}")
        # A Predexon subscription not yet live when the bridge was killed had covered
        # nothing, so its restart owes no gap record: only duplicates are checked.
        ok = all(c.equal for c in comparisons) and all(d == 0 for _, _, d, _ in predexon)
        print(
            "\nRESULT: " + ("EQUAL to ground truth after kill -9 and restart" if ok else "MISMATCH")
        )
        topics = [PREFIX + k.topic for k in KINDS.values()]
        registry_hint = " --schema-registry-url URL" if registry_url else ""
        print(
            "\nLook at the data (the embedded broker stops with the demo; run "
            "`polybridge demo --bootstrap-servers HOST:9092` against your own Kafka to keep it):\n"
            f"  polybridge tail {topics[0]} --from-beginning --max 5 "
            f"--bootstrap-servers HOST:9092{registry_hint}\n"
            "  polybridge state show --config <a bridge.toml with that Kafka>\n"
            "  topics: " + ", ".join(topics)
        )
        if not ok:
            print(f"bridge log:\n{log.read_text(errors='replace')[-4000:]}")
        return 0 if ok else 1


def _until_streaming(
    view: MetricsView, live: _LiveExchange, timeout: float = STREAMING_TIMEOUT_S
) -> None:
    """Wait until the bridge has committed DropCopy executions: the kill must land
    mid-stream, not while a slow machine is still starting the bridge."""
    _until(
        view,
        lambda rows: any(r.stream == "dropcopy.executions" and r.records > 0 for r in rows),
        "the bridge committing executions",
        live,
        timeout,
    )


def _until_running(
    view: MetricsView, live: _LiveExchange, timeout: float = STREAMING_TIMEOUT_S
) -> None:
    """Wait until every stream of the restarted bridge runs (it may have nothing left to
    commit: the exchange simulator can have finished before the kill)."""
    streams = len(KINDS) + len(PREDEXON_SUBSCRIPTIONS)
    _until(
        view,
        lambda rows: sum(r.up for r in rows) == streams,
        "every stream of the restarted bridge running",
        live,
        timeout,
    )


def _until(
    view: MetricsView,
    ready: Callable[[list[StreamRow]], bool],
    what: str,
    live: _LiveExchange,
    timeout: float,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        live.tick()
        rows = view.sample()
        if rows and ready(rows):
            return
        time.sleep(VIEW_REFRESH_S)
    print(
        f"[warning] {what}: not seen within {timeout:.0f} s; going on "
        "(the bridge's log is in the work directory)",
        flush=True,
    )


def _run_for(
    seconds: float,
    kafka: dict[str, str],
    dc: dropcopy_sim.SimulatorThread,
    label: str,
    view: MetricsView,
    console: Console | None,
    live: _LiveExchange,
) -> None:
    """Show the live view for `seconds` (rich table on a terminal, else plain lines),
    then where Kafka stands against the ground truth."""
    end = time.monotonic() + seconds
    if console is not None:
        title = f"[{label}] bridge /metrics"
        with Live(render_table(view.sample(), title), console=console, auto_refresh=False) as table:
            while time.monotonic() < end:
                time.sleep(min(VIEW_REFRESH_S, max(0.0, end - time.monotonic())))
                live.tick()
                table.update(render_table(view.sample(), title))
                table.refresh()
    else:
        next_print = time.monotonic() + PLAIN_EVERY_S
        while time.monotonic() < end:
            time.sleep(min(VIEW_REFRESH_S, max(0.0, end - time.monotonic())))
            live.tick()
            rows = view.sample()  # every interval, so rates cover one interval
            if time.monotonic() >= next_print or time.monotonic() >= end:
                next_print += PLAIN_EVERY_S
                print("\n".join(render_lines(rows, label)), flush=True)
    _progress(kafka, dc, label)


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number above 0, not {text}")
    return value


class DemoCommand:
    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--duration", type=float, default=20.0, help="seconds of live data")
        parser.add_argument(
            "--rate",
            type=_positive,
            default=LIVE_RATE,
            help=f"exchange records generated a second, live (default {LIVE_RATE:g})",
        )
        parser.add_argument(
            "--bootstrap-servers", default=None, help="use this Kafka instead of the embedded one"
        )
        parser.add_argument(
            "--registry",
            action="store_true",
            help="write with Schema Registry framing, through a local Schema Registry",
        )

    def run(self, args: argparse.Namespace) -> int:
        return run_demo(args.duration, args.bootstrap_servers, args.registry, args.rate)


def command(path: tuple[str, ...]) -> DemoCommand:
    return DemoCommand()
