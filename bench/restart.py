"""Restarts and hand-overs: how long the streams are down, this tree against today's main.

Predexon cannot replay, so every second a subscription is down is lost for good and shows
as a gap record (`polybridge.gaps`, reason `restarted`). Three scenarios, each `--trials`
times (10 by default), with the bridge in its stream group (`[cluster]` defaults):

- `kill`: one instance, SIGKILLed and started again at once;
- `term`: one instance, SIGTERM, started again as soon as it has exited (a supervisor's
  restart);
- `standby`: two instances share the streams; the one running the DropCopy stream is
  SIGKILLed, the other takes its streams over; the killed one is then started again;
- `move`: two instances share the streams; the one running the DropCopy stream gets
  SIGTERM (its streams move to the other), and is started again once it has exited (half
  of the streams move back): a rolling restart's step, planned moves only.

Per trial:

- first commit: the fault (SIGKILL or SIGTERM) -> the first DropCopy record committed after
  it by the stream's new owner, as a read_committed reader tailing the topic sees it (from
  the topic's end once the old process has exited, counting only records produced after
  that, so the old process's last commit does not count);
- Predexon gap: for each subscription the faulted instance ran, the length
  (`to_time - from_time`) of the first `restarted` gap record that ends after the fault;
  the trial's number is the longest of them. `move`: every `restarted` gap ending after
  the fault, of any subscription, read once both moves are over (0 when there is none);
  its first commit is not measured (the two instances overlap: the survivor commits
  while the stopping one still runs), its `started` phase is when the survivor started
  the last moved Predexon stream.

Workload: the DropCopy simulator (`polybridge sim dropcopy`, a subprocess, `--rate` records
per second over all kinds; the bridge runs the `executions` stream) and the Predexon
simulator (in-process, four wildcard subscriptions on four channels, `--predexon-rate`
events per second each). Both bridges, `new` (this work tree) and `main` (the `bridge/` of
commit `--baseline-rev`, extracted with `git archive`, run from a temporary directory), run
the same scenarios one after the other against the same broker: `KAFKA_BOOTSTRAP_SERVERS`
if set, else an embedded Apache Kafka.

    .venv/bin/python -m bench.restart [--trials 10] [--scenarios kill,term,standby]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from bench.common import machine_facts, percentile
from bench.dropcopy_e2e import simulator, stop_process
from bench.predexon_common import broker
from bench.predexon_reconnect import read_topic
from bridge.cluster.membership import describe_group
from bridge.errors import KafkaError
from bridge.serde.avro import Serializer, SingleObjectFormat
from bridge.sim.market import DEFAULT_FIRMS
from bridge.sim.predexon import SimConfig, SimulatorThread
from bridge.streams.kinds import KINDS

REPO = Path(__file__).resolve().parent.parent
BASELINE_REV = "15ebbe6"
"""Main before make before break (the Predexon subscription opened after the producer's
init and the state read, and every move was a gap)."""
KEY = "sim-pro-key"
SUBS: dict[str, tuple[str, dict[str, list[str]]]] = {
    "trades": ("orders", {"users": ["*"]}),
    "activity": ("activity", {"condition_ids": ["*"]}),
    "lifecycle": ("lifecycle", {"condition_ids": ["*"]}),
    "crypto": ("crypto", {"feeds": ["*"]}),
}
DROPCOPY_STREAM = "dropcopy.executions"
PREDEXON_STREAMS = [f"predexon.{name}" for name in SUBS]
STREAMS = sorted([DROPCOPY_STREAM, *PREDEXON_STREAMS])
SETTLE_S = 3.0
"""After a trial's streams are back: let them run before the next fault."""
DEADLINE_S = 90.0
"""Any one wait of a trial (first commit, gaps, rebalance) fails after this."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class Trial:
    first_commit_s: float
    gap_s: float
    gaps: dict[str, float]
    phases: dict[str, float] = field(default_factory=dict)
    """Phase name -> seconds from the fault to the phase's end (`PHASES`)."""


PHASES = {
    "exited": "old process exited",
    "spawned": "new process started",
    "starting": "imports, configuration",
    "joining": "topic checks, pipelines built, agreement check",
    "assigned": "stream group assignment",
    "producers": "init_transactions (the last stream)",
    "started": "state read, read-back (the last stream)",
    "subscribed": "Predexon subscribed (the last subscription's gap ends)",
    "first_commit": "first DropCopy record committed",
}
"""The phases from the fault to the first commit, in order, as the table shows them. From
the bridge's log lines (`instance ... starting`, `joining as cluster.instance_id`, `stream
group assigned`, `producer ready`, `stream=... starting from`): main does not log the first
two, and its rows leave them empty."""
_MARKS = {
    "starting": "starting: checking topics",
    "joining": "joining as cluster.instance_id",
    "assigned": "stream group assigned",
    "producers": "producer ready",
    "started": " starting from ",
}


def log_phases(text: str, fault: float) -> dict[str, float]:
    """Seconds from `fault` to each mark's last line at or after it (the first line for
    `starting`, `joining`, `assigned`)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        try:
            at = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        except ValueError:
            continue
        if at < fault:
            continue
        for phase, mark in _MARKS.items():
            if mark in line and (phase in ("producers", "started") or phase not in out):
                out[phase] = at - fault
    return out


@dataclass
class Series:
    system: str
    scenario: str
    trials: list[Trial] = field(default_factory=list)


# --- the bridge processes ------------------------------------------------------------------


class Deployment:
    """The bridge instances of one (system, scenario): one configuration, started from
    `root`, each instance in its slot (new: its own `cluster.instance_id`)."""

    def __init__(
        self, system: str, root: Path, workdir: Path, bootstrap: str, config: Path
    ) -> None:
        self.system = system
        self.root = root
        self.workdir = workdir
        self.bootstrap = bootstrap
        self.config = config
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.spawned: dict[str, float] = {}

    def start(self, slot: str) -> subprocess.Popen[bytes]:
        env = dict(os.environ, PYTHONPATH=str(self.root))
        env["POLYMARKET_ACCESS_TOKEN"] = "unused-sim-has-no-auth"
        env["POLYBRIDGE_CLUSTER__INSTANCE_ID"] = f"bench-{slot}"
        command = [sys.executable, "-m", "bridge", "--log-level", "INFO", "run"]
        with open(self.workdir / f"bridge-{slot}.log", "ab") as log:
            process = subprocess.Popen(
                [*command, "--config", str(self.config)],
                cwd=self.workdir,
                env=env,
                stdout=log,
                stderr=log,
            )
        self.processes[slot] = process
        self.spawned[slot] = time.time()
        return process

    def log(self, slot: str) -> str:
        return (self.workdir / f"bridge-{slot}.log").read_text(errors="replace")

    def owners(self) -> dict[str, str]:
        """Stream id -> slot of the instance the group assigned it to (by its
        `cluster.instance_id`, else by the pid in its client.id)."""
        text = self.config.read_text()
        app_id = text.split('"')[1]
        prefix = text.split('topic_prefix = "')[1].split('"')[0]
        slots = {str(p.pid): slot for slot, p in self.processes.items()}
        owners = {}
        for member in describe_group({"bootstrap.servers": self.bootstrap}, app_id).members:
            if member.group_instance_id:
                slot = member.group_instance_id.removeprefix("bench-")
            else:
                slot = slots.get(member.client_id.rsplit(".", 2)[-2], "?")
            for tp in member.assignment.topic_partitions if member.assignment else []:
                if tp.topic == prefix + "polybridge.streams":
                    owners[STREAMS[tp.partition]] = slot
        return owners

    def stop(self) -> None:
        for process in self.processes.values():
            stop_process(process, timeout=45)


def check_root(root: Path, workdir: Path) -> None:
    """Refuse a run whose `bridge` package would not come from `root`."""
    env = dict(os.environ, PYTHONPATH=str(root))
    where = subprocess.run(
        [sys.executable, "-c", "import bridge; print(bridge.__file__)"],
        cwd=workdir,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if not where.startswith(str(root)):
        raise SystemExit(f"bridge imported from {where}, expected under {root}")


def write_config(workdir: Path, bootstrap: str, dropcopy: str, predexon_url: str) -> Path:
    prefix = f"{workdir.name}."
    key_file = workdir / "key"
    key_file.write_text(KEY)
    firms = ", ".join(f'"{f}"' for f in DEFAULT_FIRMS)
    subs = "".join(
        f'[[predexon.subscriptions]]\nname = "{name}"\nchannel = "{channel}"\n'
        f"filters = {{ {', '.join(f'{k} = {json.dumps(v)}' for k, v in filters.items())} }}\n"
        for name, (channel, filters) in SUBS.items()
    )
    config = workdir / "bridge.toml"
    config.write_text(
        f'app_id = "bench-{uuid.uuid4().hex[:8]}"\n'
        f'[kafka]\nbootstrap_servers = "{bootstrap}"\npartitions = 1\n'
        f'topic_prefix = "{prefix}"\n'
        f'[dropcopy]\nendpoint = "{dropcopy}"\ntls = false\n'
        f'participant_id = "{DEFAULT_FIRMS[0]}/users/alice"\n'
        "reconnect_initial_s = 0.05\nreconnect_max_s = 0.5\n"
        "[dropcopy.maintenance]\nweekly = false\n"
        f'[[dropcopy.streams]]\nkind = "executions"\nstart = "live"\nfirms = [{firms}]\n'
        f'[predexon]\nurl = "{predexon_url}"\napi_key_file = "{key_file}"\nplan = "pro"\n' + subs
    )
    return config


# --- reading Kafka -------------------------------------------------------------------------


class Tail:
    """A read_committed reader of one topic that reports the first record committed after
    the position it is given."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"bench-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "fetch.wait.max.ms": 10,
                "log_level": 3,
            }
        )

    def end(self) -> int:
        """The topic's (one partition's) last stable offset now."""
        _, high = self.consumer.get_watermark_offsets(TopicPartition(self.topic, 0), 10, False)
        return int(high)

    def first_after(self, offset: int, since: float, deadline_s: float = DEADLINE_S) -> float:
        """Wall-clock time at which the first record at or after `offset` produced after
        `since` (its timestamp, wall clock) was read."""
        self.consumer.assign([TopicPartition(self.topic, 0, offset)])
        deadline = time.monotonic() + deadline_s
        try:
            while time.monotonic() < deadline:
                for msg in self.consumer.consume(100, 0.02):
                    if msg.error() is None and msg.timestamp()[1] >= since * 1000:
                        return time.time()
            raise TimeoutError(f"no record committed to {self.topic} within {deadline_s} s")
        finally:
            self.consumer.unassign()

    def close(self) -> None:
        self.consumer.close()


def _us(value: Any) -> int | None:
    if value is None or isinstance(value, int):
        return value
    return int((value - _EPOCH) // timedelta(microseconds=1))


def restart_gaps(bootstrap: str, gaps_topic: str) -> dict[str, list[tuple[int, int]]]:
    """Stream id -> its `restarted` gaps (from_us, to_us), in commit order."""
    serializer = Serializer("polybridge.Gap", SingleObjectFormat().prefix("polybridge.Gap", ""))
    out: dict[str, list[tuple[int, int]]] = {}
    with contextlib.suppress(TimeoutError):
        for msg in read_topic(bootstrap, gaps_topic, timeout=10):
            gap = serializer.decode(msg.value())
            from_us, to_us = _us(gap["from_time"]), _us(gap["to_time"])
            if gap["reason"] == "restarted" and from_us is not None and to_us is not None:
                out.setdefault(gap["stream_id"], []).append((from_us, to_us))
    return out


def wait_gaps(
    bootstrap: str, gaps_topic: str, streams: list[str], fault_us: int
) -> dict[str, tuple[int, int]]:
    """The first `restarted` gap (from_us, to_us) ending after `fault_us`, per stream of
    `streams`, once each has one."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        found: dict[str, tuple[int, int]] = {}
        for stream, gaps in restart_gaps(bootstrap, gaps_topic).items():
            after = [(f, t) for f, t in gaps if t > fault_us and stream in streams]
            if after:
                found[stream] = after[0]
        if set(found) == set(streams):
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"restart gaps of {streams}: only {found}")
        time.sleep(0.2)


def wait_for(condition: Any, what: str, deadline_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + deadline_s
    while True:
        with contextlib.suppress(KafkaException, KafkaError):  # not there yet
            if condition():
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {deadline_s} s")
        time.sleep(0.2)


# --- one series ----------------------------------------------------------------------------


def run_series(
    system: str,
    root: Path,
    scenario: str,
    bootstrap: str,
    dropcopy: str,
    psim: SimulatorThread,
    trials: int,
) -> Series:
    workdir = Path(tempfile.mkdtemp(prefix=f"restart-{system}-{scenario}-"))
    check_root(root, workdir)
    url = psim.sim.url_for(KEY).replace(KEY, "{api_key}")
    config = write_config(workdir, bootstrap, dropcopy, url)
    prefix = f"{workdir.name}."
    deployment = Deployment(system, root, workdir, bootstrap, config)
    dc_topic = prefix + KINDS["executions"].topic
    gaps_topic = prefix + "polybridge.gaps"
    series = Series(system, scenario)
    slots = ["a", "b"] if scenario in ("standby", "move") else ["a"]
    tail: Tail | None = None
    try:
        for slot in slots:
            deployment.start(slot)

        def spread() -> bool:
            owners = deployment.owners()
            return set(owners) == set(STREAMS) and set(owners.values()) == set(slots)

        wait_for(spread, "every stream assigned, every instance running some")
        tail = Tail(bootstrap, dc_topic)
        wait_for(lambda: tail is not None and tail.end() > 0, "first DropCopy records")
        time.sleep(SETTLE_S)
        for n in range(trials):
            owners = deployment.owners()
            victim = owners[DROPCOPY_STREAM]
            process = deployment.processes[victim]
            lost = [s for s in PREDEXON_STREAMS if owners.get(s) == victim]
            fault = time.time()
            if scenario == "move":
                series.trials.append(move_trial(deployment, victim, lost, fault, gaps_topic))
                time.sleep(SETTLE_S)
                continue
            if scenario == "term":
                process.send_signal(signal.SIGTERM)
                process.wait(60)
                exited = time.time()
                offset = tail.end()
                deployment.start(victim)
            else:
                process.send_signal(signal.SIGKILL)
                process.wait(10)
                exited = time.time()
                if scenario == "kill":
                    deployment.start(victim)
                # Its open transaction holds the last stable offset until the next owner
                # aborts it: what comes after is the next owner's.
                offset = tail.end()
            first = tail.first_after(offset, exited) - fault
            found = wait_gaps(bootstrap, gaps_topic, lost, int(fault * 1e6))
            gaps = {stream: (to - from_) / 1e6 for stream, (from_, to) in found.items()}
            owner = victim if scenario != "standby" else next(s for s in slots if s != victim)
            phases = {"exited": exited - fault, **log_phases(deployment.log(owner), fault)}
            if scenario != "standby":
                phases["spawned"] = deployment.spawned[victim] - fault
            if found:
                phases["subscribed"] = max(to for _, to in found.values()) / 1e6 - fault
            phases["first_commit"] = first
            trial = Trial(first, max(gaps.values(), default=0.0), gaps, phases)
            series.trials.append(trial)
            print(
                f"{system} {scenario} {n + 1}: first commit {first:.2f} s, "
                f"predexon gaps {json.dumps({k: round(v, 2) for k, v in gaps.items()})}",
                file=sys.stderr,
            )
            if scenario == "standby":
                deployment.start(victim)  # the next standby
                wait_for(spread, "the restarted instance running streams again")
            time.sleep(SETTLE_S)
    finally:
        if tail is not None:
            tail.close()
        deployment.stop()
    return series


def move_trial(
    deployment: Deployment, victim: str, lost: list[str], fault: float, gaps_topic: str
) -> Trial:
    """SIGTERM the victim, wait until the survivor started its Predexon streams, start the
    victim again and wait for the spread; the restart gaps of both moves."""
    process = deployment.processes[victim]
    survivor = next(slot for slot in deployment.processes if slot != victim)
    process.send_signal(signal.SIGTERM)
    process.wait(60)
    exited = time.time()

    def started() -> dict[str, float]:
        return log_starts(deployment.log(survivor), fault, lost)

    wait_for(lambda: len(started()) == len(lost), "the survivor running the moved streams")
    taken = max(started().values(), default=0.0)
    deployment.start(victim)
    slots = set(deployment.processes)

    def spread() -> bool:
        owners = deployment.owners()
        return set(owners) == set(STREAMS) and set(owners.values()) == slots

    wait_for(spread, "the restarted instance running streams again")
    time.sleep(SETTLE_S)  # the moves back hand over
    after = {
        stream: [(t - f) / 1e6 for f, t in gaps if t > fault * 1e6]
        for stream, gaps in restart_gaps(deployment.bootstrap, gaps_topic).items()
    }
    gaps = {stream: max(lengths) for stream, lengths in after.items() if lengths}
    phases = {"exited": exited - fault, "started": taken}
    print(
        f"{deployment.system} move: streams {lost} taken over {taken:.2f} s after SIGTERM, "
        f"predexon gaps {json.dumps({k: round(v, 2) for k, v in gaps.items()})}",
        file=sys.stderr,
    )
    return Trial(float("nan"), max(gaps.values(), default=0.0), gaps, phases)


def log_starts(text: str, fault: float, streams: list[str]) -> dict[str, float]:
    """Stream -> seconds from `fault` to its first `stream=... starting from` line after it."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        for stream in streams:
            if f"stream={stream} starting from" in line and stream not in out:
                at = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                if at >= fault:
                    out[stream] = at - fault
    return out


# --- CLI -----------------------------------------------------------------------------------


def print_table(results: list[Series], trials: int) -> None:
    print(
        "| scenario | bridge | trials | first DropCopy commit p50 s | max s | "
        "Predexon gap p50 s | max s |"
    )
    print("|---|---|---|---|---|---|---|")
    for s in results:
        first = [t.first_commit_s for t in s.trials if t.first_commit_s == t.first_commit_s]
        gaps = [t.gap_s for t in s.trials]
        print(
            f"| {s.scenario} | {s.system} | {len(s.trials)}/{trials} | "
            f"{_cell(percentile(first, 50))} | {_cell(max(first, default=float('nan')))} | "
            f"{percentile(gaps, 50):.2f} | {max(gaps, default=float('nan')):.2f} |"
        )


def _cell(seconds: float) -> str:
    return "-" if seconds != seconds else f"{seconds:.2f}"


def print_phases(results: list[Series]) -> None:
    """p50 over the trials of each phase's end, in seconds after the fault."""
    print()
    print("| scenario | bridge | " + " | ".join(PHASES) + " |")
    print("|---|---|" + "---|" * len(PHASES))
    for s in results:
        cells = []
        for phase in PHASES:
            ends = [t.phases[phase] for t in s.trials if phase in t.phases]
            cells.append(f"{percentile(ends, 50):.2f}" if ends else "-")
        print(f"| {s.scenario} | {s.system} | " + " | ".join(cells) + " |")
    print()
    print("phases (each column: p50 seconds from the fault to the end of):")
    for phase, meaning in PHASES.items():
        print(f"- {phase}: {meaning}")


def extract_baseline(rev: str, into: Path) -> Path:
    """`bridge/` of commit `rev` with what it reads beside it (`avro/`, which `bridge/avro`
    links to, and the generated `polymarket/`), unpacked under `into`."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", rev, "bridge", "avro", "polymarket"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


@contextlib.contextmanager
def systems(names: list[str], rev: str) -> Iterator[dict[str, Path]]:
    with tempfile.TemporaryDirectory(prefix="restart-main-") as main_root:
        roots = {"new": REPO}
        if "main" in names:
            roots["main"] = extract_baseline(rev, Path(main_root))
        yield {name: roots[name] for name in names}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10, help="faults per scenario and bridge")
    parser.add_argument("--scenarios", default="kill,term,standby")
    parser.add_argument("--systems", default="new,main", help="new (this tree), main")
    parser.add_argument("--baseline-rev", default=BASELINE_REV, help="main's commit")
    parser.add_argument("--rate", type=int, default=200, help="DropCopy records/s (all kinds)")
    parser.add_argument("--predexon-rate", type=float, default=50.0, help="events/s per sub")
    args = parser.parse_args(argv)
    scenarios = args.scenarios.split(",")
    channels = tuple(channel for channel, _ in SUBS.values())
    results: list[Series] = []
    with (
        tempfile.TemporaryDirectory(prefix="restart-sim-") as simdir,
        systems(args.systems.split(","), args.baseline_rev) as roots,
        broker() as bootstrap,
        simulator(Path(simdir), prefill=0, rate=args.rate) as dropcopy,
        SimulatorThread(SimConfig(seed=7, rate=args.predexon_rate, channels=channels)) as psim,
    ):
        for scenario in scenarios:
            for system, root in roots.items():
                results.append(
                    run_series(system, root, scenario, bootstrap, dropcopy, psim, args.trials)
                )
    print()
    print(
        f"machine: {machine_facts()}; DropCopy {args.rate} records/s, Predexon "
        f"{len(SUBS)} subscriptions x {args.predexon_rate:.0f} events/s; "
        f"main = commit {args.baseline_rev}"
    )
    print_table(results, args.trials)
    print_phases(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
