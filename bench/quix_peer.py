"""Peer benchmark: the same DropCopy workload through the bridge and through Quix Streams.

Run: `make bench-peer` (builds `.venv-quix` on first use), or, once `.venv-quix` exists,
`.venv/bin/python -m bench.quix_peer [--quick] [--kills K] [--seed S] [--flush-interval S]`.

The peer is Quix Streams' own answer to "a resumable upstream into Kafka": a `StatefulSource`
(`DropCopyQuixSource` below) subscribes to the simulator's executions stream, produces each
execution (key `order.id`; value the `polymarket.v1.dropcopy.ExecutionRecord` Avro body from
`fastavro.schemaless_writer`, as the naive loop of bench/dropcopy_e2e.py writes it), keeps the
latest `resume_token` in its state store (backed by the store's changelog topic) and calls
`flush()` every `--flush-interval` seconds, which writes the state to the changelog and
flushes the producer; a restart recovers the state from the changelog and resumes from the
token. The Application runs with `processing_guarantee="exactly-once"`. Quix Streams needs
confluent-kafka < 2.13, so it runs from `.venv-quix` as `python -m bench.quix_peer
quix-worker ...`; this process (the orchestrator, `.venv`) starts it and measures.

Both systems, in the same run, each scenario on a fresh local Apache Kafka broker, replay the
same prefilled simulator journal (executions, all firms) from the epoch:
- throughput: records/s visible to a read_committed consumer, as bench/dropcopy_e2e.py
  defines it: distinct records / (wall clock at the last one - CreateTime of the first);
- SIGKILL survival: the same replay, the system's whole process group SIGKILLed at K seeded
  random points (once the consumer has seen a random 5-90% of the journal and something the
  current run wrote, plus 0-100 ms) and restarted each time with the same configuration and
  state; once the last run has caught up (and SETTLE_S more), everything read_committed is
  checked against the journal's execution ids: missing, duplicated (copies beyond the first,
  by `Execution.id`), total.
RSS is summed over the system's process tree (a Quix source runs in a child process),
sampled every second.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from bench.common import RssSampler, machine_facts, markdown_table, rss_mb
from bench.dropcopy_e2e import (
    BRIDGE_PREFIX_LEN,
    EXECUTION_SCHEMA,
    FIRMS,
    PARTICIPANT,
    Reader,
    bridge_config,
    simulator,
    wrapper_fields,
)
from bridge.embedded import free_port

try:
    from quixstreams.sources import StatefulSource
except ImportError:  # the orchestrator's .venv has no Quix Streams; only the worker needs it
    StatefulSource = object  # type: ignore[misc,assignment]

ROOT = Path(__file__).resolve().parent.parent
QUIX_PYTHON = ROOT / ".venv-quix" / "bin" / "python"
EPOCH = "1970-01-01T00:00:00Z"
PARTITIONS = 6
"""The bridge's default `kafka.partitions`; the Quix output topic gets the same."""

FLUSH_INTERVAL_S = 1.0
"""How often the Quix source flushes (state + producer). Quix's own Application default
commit interval is 5 s; a shorter one only narrows the window re-sent after a crash."""

TOKEN_KEY = "resume_token"
SOURCE_NAME = "dropcopy-executions"
SETTLE_S = 3.0
"""After the last run has caught up, read this much longer for late duplicates."""

STALL_S = 60.0
"""A run that makes no visible progress for this long has stalled (or lost records)."""

KILL_JITTER_S = 0.1
"""Each kill lands up to this much after its trigger, off the consumer's poll rhythm."""

IDLE_KILL_S = 5.0


@dataclass(frozen=True)
class Plan:
    """Sizes of one run (full or --quick)."""

    prefill: int
    """Records generated before serving (all streams; executions are ~58%)."""
    kills: int


FULL = Plan(prefill=345_000, kills=5)  # ~200k executions
QUICK = Plan(prefill=40_000, kills=3)  # ~23k executions


# -- the Quix Streams worker (runs in .venv-quix) ---------------------------------------------


def subscription_request(token: bytes | None) -> Any:
    """Executions of all firms after `token`, or from the epoch without one."""
    from polymarket.v1 import dropcopy_pb2

    request = dropcopy_pb2.CreateDropCopySubscriptionRequest(firms=FIRMS)
    if token:
        request.resume_token = token
    else:
        request.resume_time.FromMicroseconds(0)
    return request


def subscribe(channel: Any, token: bytes | None) -> Any:
    """The simulator's executions stream (no auth; the participant header only)."""
    from polymarket.v1 import dropcopy_pb2_grpc

    stub = dropcopy_pb2_grpc.DropCopyAPIStub(channel)
    metadata = [("x-participant-id", PARTICIPANT)]
    return stub.CreateDropCopySubscription(subscription_request(token), metadata=metadata)


def grpc_channel(address: str) -> Any:
    import grpc

    return grpc.insecure_channel(address, [("grpc.max_receive_message_length", 16 << 20)])


def execution_value(execution: Any, received_us: int, schema: Any) -> bytes:
    """The ExecutionRecord Avro body the naive loop writes (generic proto -> dict)."""
    import fastavro

    from bench.mapping_throughput import naive_datum
    from bridge.serde.transcode import timestamp_micros

    has_time = execution.HasField("transact_time")
    datum = {
        "event_id": execution.id,
        "stream_id": "quix.executions",
        "event_time": timestamp_micros(execution.transact_time) if has_time else None,
        "receive_time": received_us,
        "execution": naive_datum(execution),
        "unrecognized_enums": {},
    }
    out = io.BytesIO()
    fastavro.schemaless_writer(out, schema, datum)
    return out.getvalue()


class DropCopyQuixSource(StatefulSource):  # type: ignore[misc]
    """Executions from the simulator; the latest resume_token in the source's state store.

    Built in the Application's process and pickled into the source's child process, so it
    holds only plain settings; the channel and schema are made in `run()`.
    """

    def __init__(self, address: str, flush_interval_s: float) -> None:
        super().__init__(name=SOURCE_NAME)
        self.address = address
        self.flush_interval_s = flush_interval_s

    def run(self) -> None:
        from bridge.serde.avro import load_schema

        schema = load_schema(EXECUTION_SCHEMA)
        token = self.state.get_bytes(TOKEN_KEY)
        # Evidence for the report (see `worker_notes`): where it resumed, and whether the
        # producer Quix gave the source is transactional.
        start = "resumed from the stored token" if token else "started from the epoch"
        transactional = self.producer._producer.transactional
        print(f"quix-worker: {start}; source producer transactional={transactional}", flush=True)
        with grpc_channel(self.address) as channel:
            call = subscribe(channel, token)
            flushed = time.monotonic()
            for response in call:
                received_us = time.time_ns() // 1000
                for execution in response.executions:
                    value = execution_value(execution, received_us, schema)
                    self.produce(value=value, key=execution.order.id.encode())
                # After the records it covers; committed to the changelog by the next flush.
                self.state.set_bytes(TOKEN_KEY, response.resume_token)
                if time.monotonic() - flushed >= self.flush_interval_s:
                    self.flush()
                    flushed = time.monotonic()
                if not self.running:  # the heartbeats (0.5 s) bring us here when idle
                    call.cancel()
                    return


def quix_worker(argv: list[str]) -> None:
    """`quix-worker`: the Application with the source, until SIGTERM (or SIGKILL)."""
    from quixstreams import Application
    from quixstreams.models import TopicConfig

    parser = argparse.ArgumentParser(prog="quix-worker")
    for option in ("--address", "--bootstrap", "--topic", "--group", "--state-dir"):
        parser.add_argument(option, required=True)
    parser.add_argument("--guarantee", choices=("exactly-once", "at-least-once"), required=True)
    parser.add_argument("--flush-interval", type=float, default=FLUSH_INTERVAL_S)
    args = parser.parse_args(argv)
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,  # names the changelog topic: the same on every restart
        processing_guarantee=args.guarantee,
        state_dir=args.state_dir,
        loglevel="INFO",
    )
    config = TopicConfig(num_partitions=PARTITIONS, replication_factor=1)
    topic = app.topic(args.topic, value_serializer="bytes", key_serializer="bytes", config=config)
    app.add_source(DropCopyQuixSource(args.address, args.flush_interval), topic)
    app.run()


# -- the systems under test, as restartable process groups ----------------------------------


@dataclass(frozen=True)
class Peer:
    """How to start one system on one broker; every restart runs the same command."""

    system: str
    guarantee: str
    topic: str
    prefix_len: int
    """Bytes before the Avro body: the bridge's single-object prefix; Quix: none."""
    command: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)


PeerFactory = Callable[[str], Peer]
"""Builds a peer for a broker's bootstrap servers."""


def bridge_peer(workdir: Path, address: str) -> PeerFactory:
    """`python -m bridge run`, executions stream only, default pipeline settings."""

    def make(bootstrap: str) -> Peer:
        prefix = f"b{uuid.uuid4().hex[:6]}."
        config = bridge_config(workdir, bootstrap, address, prefix, EPOCH, {}, free_port())
        command = (sys.executable, "-m", "bridge", "--log-level=WARNING", "run")
        return Peer(
            "polybridge",
            "exactly-once",
            prefix + "polymarket.dropcopy.executions",
            BRIDGE_PREFIX_LEN,
            (*command, "--config", str(config)),
            {"POLYMARKET_ACCESS_TOKEN": "unused-sim-has-no-auth"},
        )

    return make


def quix_peer(workdir: Path, address: str, guarantee: str, flush_interval_s: float) -> PeerFactory:
    """The Quix Streams worker from `.venv-quix`."""

    def make(bootstrap: str) -> Peer:
        name = f"q{uuid.uuid4().hex[:6]}"
        command = (str(QUIX_PYTHON), "-m", "bench.quix_peer", "quix-worker")
        command += ("--address", address, "--bootstrap", bootstrap, "--topic", name + ".exec")
        command += ("--group", name, "--state-dir", str(workdir / name))
        command += ("--guarantee", guarantee, "--flush-interval", str(flush_interval_s))
        return Peer(f"Quix Streams {quix_version()}", guarantee, name + ".exec", 0, command)

    return make


def quix_version() -> str:
    """The version installed in `.venv-quix` (from its dist-info directory name)."""
    found = sorted(QUIX_PYTHON.parent.parent.glob("lib/python*/site-packages/quixstreams-*"))
    return found[-1].name.split("-")[1].removesuffix(".dist") if found else "?"


class PeerFailed(Exception):
    """The system under test exited on its own or stalled; the message says why."""


def tree_rss_mb(pid: int) -> float | None:
    """VmRSS summed over `pid` and its descendants; None once `pid` has exited."""
    parents: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as stat:
                    ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    root = rss_mb(pid)
    if root is None:
        return None
    pending, total = list(parents.get(pid, [])), root
    while pending:
        child = pending.pop()
        total += rss_mb(child) or 0.0
        pending += parents.get(child, [])
    return total


class TreeRssSampler(RssSampler):
    """`RssSampler` over the whole process tree."""

    def _run(self) -> None:
        started = time.monotonic()
        while (mb := tree_rss_mb(self.pid)) is not None:
            self.samples.append((time.monotonic() - started, mb))
            if self._stop.wait(self.interval_s):
                return


class Run:
    """One start of a peer, in its own session so that SIGKILL takes the whole tree."""

    def __init__(self, peer: Peer, log_path: Path) -> None:
        self.log_path = log_path
        self.started_ms = time.time() * 1000
        self.started = time.monotonic()
        env = {**os.environ, **peer.env}
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                peer.command, cwd=ROOT, env=env, stdout=log, stderr=log, start_new_session=True
            )
        self.rss = TreeRssSampler(self.process.pid).start()

    def check(self) -> None:
        """Raise `PeerFailed` with the log's last error if the system has exited."""
        if self.process.poll() is not None:
            raise PeerFailed(f"exited with status {self.process.returncode}: {self.error()}")

    def error(self) -> str:
        """The last line of the log that names an error, else its last line."""
        lines = [line.strip() for line in self.log_path.read_text(errors="replace").splitlines()]
        lines = [line for line in lines if line]
        errors = [line for line in lines if "Error" in line or "error" in line]
        return (errors or lines or ["(empty log)"])[-1][:300]

    def kill(self) -> None:
        """SIGKILL the process group, as a crash or an OOM kill would."""
        self._signal_group(signal.SIGKILL)
        self.process.wait()
        self.rss.stop()

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (graceful), SIGKILL after `timeout`; then whatever is left of the group."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        self.kill()

    def _signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)


# -- what became visible ------------------------------------------------------------------


class Tally:
    """Every record a read_committed consumer has seen of one topic, across restarts.

    Unlike `measure_throughput` it checks the system between polls, so a crash or a stall
    is reported at once instead of after the whole timeout."""

    def __init__(self, reader: Reader, prefix_len: int) -> None:
        self.reader = reader
        self.prefix_len = prefix_len
        self.ids: Counter[bytes] = Counter()
        self.first_ms = float("inf")
        self.newest_ms = 0.0
        self.last_at = 0.0
        self.progress_at = time.monotonic()

    @property
    def total(self) -> int:
        return self.ids.total()

    @property
    def distinct(self) -> int:
        return len(self.ids)

    def poll(self) -> None:
        messages = self.reader.batch()
        if not messages:
            return
        self.last_at, self.progress_at = time.time(), time.monotonic()
        for m in messages:
            created_ms = m.timestamp()[1]
            self.first_ms = min(self.first_ms, created_ms)
            self.newest_ms = max(self.newest_ms, created_ms)
            self.ids[wrapper_fields(m.value(), self.prefix_len)[0]] += 1

    def rate(self) -> float:
        """Distinct records / (last arrival - CreateTime of the first)."""
        return self.distinct / (self.last_at - self.first_ms / 1000)

    def wait(self, done: Callable[[], bool], run: Run, what: str) -> None:
        """Poll until `done()`; `PeerFailed` if the run exits or nothing arrives for STALL_S."""
        self.progress_at = time.monotonic()
        while not done():
            self.poll()
            run.check()
            if time.monotonic() - self.progress_at > STALL_S:
                raise PeerFailed(f"stalled at {self.distinct:,} distinct records ({what})")


def open_tally(bootstrap: str, peer: Peer, run: Run, timeout: float = 60.0) -> Tally:
    """A Tally of the peer's topic, once the peer has created it (or `PeerFailed`)."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    deadline = time.monotonic() + timeout
    while True:
        meta = admin.list_topics(peer.topic, timeout=5).topics.get(peer.topic)
        if meta is not None and meta.error is None and meta.partitions:
            return Tally(Reader(bootstrap, peer.topic), peer.prefix_len)
        run.check()
        if time.monotonic() > deadline:
            raise PeerFailed(f"topic {peer.topic} did not appear within {timeout:.0f} s")
        time.sleep(0.2)


# -- scenarios ------------------------------------------------------------------------------


@dataclass
class Row:
    """One system's line of the table."""

    system: str
    guarantee: str
    records_per_s: float = float("nan")
    kills: int = 0
    missing: int | None = None
    duplicated: int | None = None
    total: int | None = None
    throughput_rss_mb: float = float("nan")
    kill_rss_mb: list[float] = field(default_factory=list)
    """Max RSS of each run of the SIGKILL scenario."""
    notes: list[str] = field(default_factory=list)


def throughput(make: PeerFactory, workdir: Path, expected: int, row: Row) -> None:
    """Records/s of a replay of the whole journal, into `row`."""
    from bridge.embedded import EmbeddedBroker

    with EmbeddedBroker() as broker:
        peer = make(broker.bootstrap_servers)
        run = Run(peer, workdir / f"{peer.topic}.log")
        tally = None
        try:
            tally = open_tally(broker.bootstrap_servers, peer, run)
            tally.wait(lambda: tally is not None and tally.distinct >= expected, run, "throughput")
        finally:
            run.stop()
            if tally is not None:
                tally.reader.close()
            row.throughput_rss_mb = run.rss.max_mb
    row.records_per_s = tally.rate()
    row.notes.append(f"throughput run: {tally.total - tally.distinct} duplicates")


def survival(
    make: PeerFactory, workdir: Path, truth: set[bytes], kills: int, rng: random.Random, row: Row
) -> None:
    """The replay with `kills` SIGKILLs and restarts; what is visible at the end, into `row`."""
    from bridge.embedded import EmbeddedBroker

    fractions = sorted(rng.uniform(0.05, 0.9) for _ in range(kills))
    with EmbeddedBroker() as broker:
        peer = make(broker.bootstrap_servers)
        log_path = workdir / f"{peer.topic}.log"
        runs = [Run(peer, log_path)]
        late = 0
        tally = open_tally(broker.bootstrap_servers, peer, runs[0])
        try:
            for fraction in fractions:
                target = fraction * len(truth)
                tally.wait(partial(killable, tally, runs[-1], target, len(truth)), runs[-1], "kill")
                late += tally.distinct >= len(truth)
                time.sleep(rng.uniform(0, KILL_JITTER_S))
                runs[-1].kill()
                row.kills += 1
                runs.append(Run(peer, log_path))
            try:
                tally.wait(lambda: tally.distinct >= len(truth), runs[-1], "final run")
            except PeerFailed as exc:
                runs[-1].check()  # a crash is a failure; a stall means records are missing
                row.notes.append(str(exc))
            settle_until = time.monotonic() + SETTLE_S
            while time.monotonic() < settle_until:
                tally.poll()
        finally:
            runs[-1].stop()
            tally.reader.close()
    seen = set(tally.ids)
    row.notes += worker_notes(log_path)
    if late:
        row.notes.append(f"{late} kills after the whole journal was visible")
    row.missing = len(truth - seen)
    row.duplicated = tally.total - tally.distinct
    row.total = tally.total
    if seen - truth:
        row.notes.append(f"{len(seen - truth)} ids not in the journal")
    row.kill_rss_mb = [run.rss.max_mb for run in runs]


def killable(tally: Tally, run: Run, target: float, complete: int) -> bool:
    """Kill now? Past `target`, and records this run wrote are visible: records its killed
    predecessor left in flight must not get it killed in its startup. Once the journal is
    complete a run may have nothing left to write: then after IDLE_KILL_S."""
    if tally.distinct < target:
        return False
    if tally.newest_ms >= run.started_ms:
        return True
    return tally.distinct >= complete and time.monotonic() - run.started > IDLE_KILL_S


def worker_notes(log_path: Path) -> list[str]:
    """What the Quix worker said about its starts (nothing for the bridge)."""
    lines = [line for line in log_path.read_text().splitlines() if line.startswith("quix-worker")]
    if not lines:
        return []
    resumed = sum("resumed from the stored token" in line for line in lines)
    producers = sorted({line.rsplit(";", 1)[1].strip() for line in lines})
    return [f"{resumed} of {len(lines)} starts resumed from the stored token", *producers]


def journal_ids(address: str) -> set[bytes]:
    """Execution ids in the simulator's journal (all firms): one replay to the heartbeat."""
    ids: set[bytes] = set()
    with grpc_channel(address) as channel:
        call = subscribe(channel, None)
        for response in call:
            if not response.executions:
                break
            ids.update(e.id.encode() for e in response.executions)
        call.cancel()
    return ids


def evaluate(
    row: Row, make: PeerFactory, workdir: Path, truth: set[bytes], kills: int, seed: int
) -> Row:
    """Both scenarios for one system; a failure ends up in the row's notes."""
    print(f"{row.system} ({row.guarantee}):", flush=True)
    try:
        throughput(make, workdir, len(truth), row)
        print(f"  throughput {row.records_per_s:,.0f} records/s", flush=True)
        survival(make, workdir, truth, kills, random.Random(seed), row)
        print(
            f"  after {row.kills} SIGKILLs: {row.missing:,} missing, "
            f"{row.duplicated:,} duplicated, {row.total:,} total; RSS MB per run "
            + " / ".join(f"{mb:.0f}" for mb in row.kill_rss_mb),
            flush=True,
        )
    except PeerFailed as exc:
        row.notes.append(f"FAILED: {exc}")
        print(f"  FAILED: {exc}", flush=True)
    return row


def run_all(plan: Plan, workdir: Path, seed: int, flush_interval_s: float) -> tuple[int, list[Row]]:
    """(journal executions, one row per system), printing progress."""
    rows: list[Row] = []
    print(f"replay simulator: prefill {plan.prefill:,} records", flush=True)
    with simulator(workdir, plan.prefill, 0) as address:
        truth = journal_ids(address)
        print(f"  journal holds {len(truth):,} executions", flush=True)
        row = Row("polybridge", "exactly-once")
        rows.append(evaluate(row, bridge_peer(workdir, address), workdir, truth, plan.kills, seed))
        if not QUIX_PYTHON.exists():
            row = Row(
                "Quix Streams", "-", notes=[f"FAILED: {QUIX_PYTHON} missing: make bench-peer"]
            )
            rows.append(row)
            return len(truth), rows
        for guarantee in ("exactly-once", "at-least-once"):
            make = quix_peer(workdir, address, guarantee, flush_interval_s)
            row = Row(f"Quix Streams {quix_version()}", guarantee)
            rows.append(evaluate(row, make, workdir, truth, plan.kills, seed))
            if not any(note.startswith("FAILED") for note in row.notes):
                break  # at-least-once only as the fallback
    return len(truth), rows


def print_report(rows: list[Row], executions: int, command: str, seconds: float) -> None:
    """The markdown table, the command and the machine."""

    def count(value: int | None) -> object:
        return "-" if value is None else value

    table = [
        (
            r.system,
            r.guarantee,
            r.records_per_s,
            r.kills,
            count(r.missing),
            count(r.duplicated),
            count(r.total),
            r.throughput_rss_mb,
            max(r.kill_rss_mb, default=float("nan")),
            "; ".join(r.notes),
        )
        for r in rows
    ]
    headers = ("system", "guarantee", "records/s", "kills", "missing", "duplicated", "total")
    headers += ("RSS MB (throughput)", "RSS MB (kill runs, max)", "notes")
    print()
    print(markdown_table(headers, table))
    print(f"\njournal: {executions:,} executions; command: `{command}` ({seconds:.0f} s)")
    print(f"machine: {machine_facts()}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "quix-worker":
        quix_worker(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a small journal, ~2 minutes")
    parser.add_argument("--kills", type=int, help="SIGKILLs per system (default 5, quick 3)")
    parser.add_argument("--seed", type=int, default=1, help="seeds the kill points")
    parser.add_argument("--flush-interval", type=float, default=FLUSH_INTERVAL_S)
    parser.add_argument("--keep", action="store_true", help="keep the logs (printed path)")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    if args.kills is not None:
        plan = Plan(plan.prefill, args.kills)
    workdir = Path(tempfile.mkdtemp(prefix="polybridge-peer-"))
    started = time.monotonic()
    try:
        executions, rows = run_all(plan, workdir, args.seed, args.flush_interval)
        command = " ".join([".venv/bin/python -m bench.quix_peer", *sys.argv[1:]])
        print_report(rows, executions, command, time.monotonic() - started)
    finally:
        if args.keep:
            print(f"logs: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
