"""End to end: DropCopy simulator -> bridge process -> local Apache Kafka, against a naive loop.

Run: `.venv/bin/python -m bench.dropcopy_e2e [--quick] [--profile]`

Every scenario runs real processes on this machine: the simulator (`polybridge sim dropcopy`,
no auth), the local Apache Kafka (`bridge.embedded`), the system under test (the bridge,
`python -m bridge run`, executions stream only; or the naive loop below), and this process
as a read_committed consumer (`assign()`, no group, short fetch waits) that measures what
became visible:

- throughput: the simulator's prefilled executions journal is replayed from the epoch;
  records/s = records / (consumer's wall clock at the last record - Kafka CreateTime of the
  first record, i.e. when the producer got it). Every record is counted and its event id
  checked for duplicates; done when the consumer has seen the whole journal;
- latency: the simulator generates live (`--rate`, all four streams together; executions
  are ~58%) and the system subscribes live; latency = consumer's wall clock at receipt -
  the record's `event_time`, which for executions is `transact_time`, set by the simulator
  to its wall clock when it generates a live record (same host, same clock);
- RSS: VmRSS of the system's process from /proc every second, in every scenario, and over
  one longer live run at a rate the bridge sustains.

The naive baseline is the exchange's documented client loop (sync stub, iterate the
subscription) feeding a plain idempotent producer: generic descriptor-walking proto -> dict,
`fastavro.schemaless_writer` with the same `polymarket.v1.dropcopy.ExecutionRecord` schema,
`enable.idempotence=true`, no transactions, no state: at-least-once. It runs as
`python -m bench.dropcopy_e2e naive-worker ...` in its own process.

`--profile` instead runs the bridge under cProfile in the throughput scenario and prints the
top functions (cProfile inflates call-heavy code; treat percentages as relative).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import pstats
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    RssSampler,
    bucket_percentile,
    cpu_seconds,
    machine_facts,
    markdown_table,
    percentile,
    scrape,
)
from bridge.embedded import free_port
from bridge.kafka.readback import next_messages

SIM_BATCH = 500
"""Records per simulator response (the exchange batches up to this under load)."""

LIVE_RATE = 5_000
"""Records/s (all streams) the simulator generates live in the latency scenarios."""

FIRMS = ("firms/acme-capital", "firms/bluefin-trading", "firms/cobalt-markets")
PARTICIPANT = "firms/acme-capital/users/alice"
METHOD = "/polymarket.v1.DropCopyAPI/CreateDropCopySubscription"
EXECUTION_SCHEMA = "polymarket.v1.dropcopy.ExecutionRecord"
BRIDGE_PREFIX_LEN = 10
"""Avro single-object prefix (C3 01 + 8-byte fingerprint) the bridge writes; naive: none."""

TUNED = {"max_latency_ms": 10}
"""The tuned exactly-once variant. Throughput is CPU-bound in the bridge's one Python thread,
so batching settings barely move it (10k-record / 50 ms defaults, 10 ms, 200 ms: within
noise; 1 s / 100k-record transactions are ~30% slower, commits stall the loop); a short
max_latency cuts latency at no throughput cost."""

FLOOR_VALUE_BYTES = 600
"""Padding of the floor producer's records, about an executions record's size."""


@dataclass(frozen=True)
class Plan:
    """Sizes of one run (full or --quick)."""

    prefill: int
    """Records generated before serving (all streams; executions are ~58%)."""
    naive_records: int
    """The naive throughput is measured over the first this-many records of the journal."""
    latency_s: float
    rss_s: float
    rss_rate: int


FULL = Plan(prefill=800_000, naive_records=100_000, latency_s=20, rss_s=60, rss_rate=20_000)
QUICK = Plan(prefill=100_000, naive_records=15_000, latency_s=5, rss_s=8, rss_rate=20_000)


@dataclass
class Result:
    """One row of the results table."""

    scenario: str
    records_per_s: float = float("nan")
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    max_ms: float = float("nan")
    rss: RssSampler | None = None
    cpu_percent: float = float("nan")
    """CPU of the system under test's process while measured (100 = one core)."""
    cpu_us_per_record: float = float("nan")
    """CPU microseconds of the system's process per record, over the measured window."""
    produce_p99_ms: float = float("nan")
    """Live rows: event -> produce() (Kafka CreateTime) p99, the wait before Kafka."""
    note: str = ""

    def line(self) -> str:
        """One progress line."""
        rss = self.rss.summary() if self.rss else "-"
        return (
            f"{self.scenario}: {self.records_per_s:,.0f} records/s, p50 {self.p50_ms:.1f} ms, "
            f"p99 {self.p99_ms:.1f} ms, CPU {self.cpu_percent:.0f}% "
            f"({self.cpu_us_per_record:.1f} us/record); {self.note}; RSS {rss}"
        )


# -- processes --------------------------------------------------------------------------------


def stop_process(process: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL after `timeout`; always reaps the process."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def simulator(
    workdir: Path, prefill: int, rate: int, retention_records: int | None = None
) -> Iterator[str]:
    """`polybridge sim dropcopy` in a subprocess (no auth, log in `workdir`); its address.
    `retention_records` bounds each stream's journal (and the simulator's memory)."""
    command = [sys.executable, "-m", "bridge.cli", "--log-level=WARNING", "sim", "dropcopy"]
    command += ["--prefill", str(prefill), "--rate", str(rate), "--batch", str(SIM_BATCH)]
    command += ["--no-auth", "--heartbeat", "0.5"]
    if retention_records is not None:
        command += ["--retention-records", str(retention_records)]
    log_path = workdir / f"sim-{rate}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"address=(\S+)", line)
        if match is None:
            raise RuntimeError(f"simulator did not start: {line!r} {log_path.read_text()}")
        yield match.group(1)
    finally:
        stop_process(process)


def journal_executions(address: str) -> int:
    """Executions (all firms) in the simulator's journal: one fast replay to the heartbeat."""
    from bench.sim_throughput import replay_once

    count, _ = replay_once(address)
    return count


def bridge_config(
    workdir: Path,
    bootstrap: str,
    address: str,
    prefix: str,
    start: str,
    pipeline: Mapping[str, int],
    metrics_port: int,
) -> Path:
    """A bridge TOML for the executions stream of all firms; defaults unless `pipeline`."""
    firms = ", ".join(f'"{f}"' for f in FIRMS)
    settings = "".join(f"{key} = {value}\n" for key, value in pipeline.items())
    path = workdir / f"{prefix}bridge.toml"
    path.write_text(
        f'app_id = "{prefix}app"\n'
        f'[kafka]\nbootstrap_servers = "{bootstrap}"\ntopic_prefix = "{prefix}"\n'
        f"[pipeline]\n{settings}"
        f"[metrics]\nport = {metrics_port}\n"
        f'[dropcopy]\nendpoint = "{address}"\ntls = false\nparticipant_id = "{PARTICIPANT}"\n'
        f'[[dropcopy.streams]]\nkind = "executions"\nstart = "{start}"\nfirms = [{firms}]\n'
    )
    return path


@contextlib.contextmanager
def bridge_process(config: Path, profile_out: Path | None = None) -> Iterator[int]:
    """`python -m bridge run --config` in a subprocess (optionally under cProfile); its pid."""
    command = [sys.executable]
    if profile_out is not None:
        command += ["-m", "cProfile", "-o", str(profile_out)]
    command += ["-m", "bridge", "--log-level=WARNING", "run", "--config", str(config)]
    log_path = config.with_suffix(".log")
    env = {**os.environ, "POLYMARKET_ACCESS_TOKEN": "unused-sim-has-no-auth"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=log, env=env)
        try:
            yield process.pid
            if process.poll() is not None:
                raise RuntimeError(f"the bridge exited early (status {process.returncode})")
        except BaseException:
            print(f"bridge log ({log_path}):\n{log_path.read_text()[-3000:]}", file=sys.stderr)
            raise
        finally:
            stop_process(process, timeout=30)


@contextlib.contextmanager
def worker_process(*args: str) -> Iterator[int]:
    """`python -m bench.dropcopy_e2e WORKER ARGS...` in a subprocess; its pid."""
    process = subprocess.Popen([sys.executable, "-m", "bench.dropcopy_e2e", *args])
    try:
        yield process.pid
    finally:
        stop_process(process)


def create_topic(bootstrap: str, topic: str, partitions: int = 6) -> None:
    """Create `topic` (the bridge creates its own; the naive loop does not)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    futures = admin.create_topics([NewTopic(topic, partitions, 1)], operation_timeout=10)
    for future in futures.values():
        future.result(10)


# -- reading what became visible ----------------------------------------------------------------


class Reader:
    """A read_committed, group-less consumer of every partition of one topic."""

    def __init__(self, bootstrap: str, topic: str, timeout: float = 60.0) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"bench-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                # Measure the system, not the consumer's fetch wait.
                "fetch.wait.max.ms": 5,
                "log_level": 3,
            }
        )
        deadline = time.monotonic() + timeout
        while True:  # the system under test creates the topic when it starts
            meta = self._consumer.list_topics(topic, timeout=5).topics.get(topic)
            if meta is not None and meta.error is None and meta.partitions:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"topic {topic} did not appear within {timeout:.0f} s")
            time.sleep(0.2)
        self._consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions])

    def batch(self, timeout: float = 0.05) -> list[Any]:
        """Records that became visible (errors and partition EOFs dropped)."""
        # What is ready, stamped on return: consume(n, t) would wait all of t unless n were
        # there, and add up to t to every measured latency.
        return [m for m in next_messages(self._consumer, timeout) if m.error() is None]

    def close(self) -> None:
        self._consumer.close()


def _varint(data: bytes, i: int) -> tuple[int, int]:
    """Zig-zag decoded Avro long at `i`, and the index after it."""
    shift = result = 0
    while True:
        byte = data[i]
        i += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return (result >> 1) ^ -(result & 1), i


def wrapper_fields(value: bytes, prefix_len: int) -> tuple[bytes, int | None]:
    """(event_id, event_time in µs) from the head of an ExecutionRecord value."""
    length, i = _varint(value, prefix_len)
    event_id = value[i : i + length]
    length, i = _varint(value, i + length)  # stream_id
    branch, i = _varint(value, i + length)
    return event_id, (_varint(value, i)[0] if branch == 1 else None)


class CpuWindow:
    """CPU seconds a process used between `open()` and `close()`."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start = self.end = 0.0

    def open(self) -> None:
        self.start = cpu_seconds(self.pid) or 0.0

    def close(self) -> None:
        self.end = cpu_seconds(self.pid) or self.start

    def us_per(self, records: int) -> float:
        return 1e6 * (self.end - self.start) / records if records else float("nan")


def measure_throughput(
    reader: Reader, expected: int, prefix_len: int, timeout: float, cpu: CpuWindow
) -> tuple[float, int, float]:
    """(records/s, duplicates, CPU us/record) until `expected` records are visible; CPU
    from the first visible record on (the records before it are not counted either)."""
    ids: set[bytes] = set()
    first_ms = float("inf")
    count = 0
    counted = 0
    last_at = time.time()
    deadline = time.monotonic() + timeout
    while count < expected:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {count:,} of {expected:,} records within {timeout:.0f} s")
        messages = reader.batch()
        if not messages:
            continue
        if count == 0:
            cpu.open()
        else:
            counted += len(messages)
        last_at = time.time()
        for m in messages:
            first_ms = min(first_ms, m.timestamp()[1])
            ids.add(wrapper_fields(m.value(), prefix_len)[0])
        count += len(messages)
    cpu.close()
    return expected / (last_at - first_ms / 1000), count - len(ids), cpu.us_per(counted)


def measure_latency(
    reader: Reader,
    seconds: float,
    prefix_len: int,
    cpu: CpuWindow,
    at_start: Callable[[], None] = lambda: None,
    warmup_s: float = 2.0,
) -> tuple[list[float], list[float], float]:
    """Of the records visible during `seconds` after a warm-up: (latencies in ms, the
    simulator -> producer part of them (Kafka CreateTime, ms resolution), records/s).
    `cpu` and `at_start` are called when the measured window opens."""
    deadline = time.monotonic() + 60
    while not reader.batch():  # the first record: the system is up and subscribed
        if time.monotonic() > deadline:
            raise RuntimeError("no record became visible within 60 s")
    started = time.monotonic()
    latencies: list[float] = []
    upstream: list[float] = []
    while (elapsed := time.monotonic() - started) < warmup_s + seconds:
        messages = reader.batch()
        now_us = time.time() * 1e6
        if elapsed < warmup_s:
            continue
        if cpu.start == 0.0:
            cpu.open()
            at_start()
        for m in messages:
            event_time = wrapper_fields(m.value(), prefix_len)[1]
            if event_time is not None:
                latencies.append((now_us - event_time) / 1000)
                upstream.append(m.timestamp()[1] - event_time / 1000)
    cpu.close()
    return latencies, upstream, len(latencies) / seconds


# -- scenarios --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """The system under test as a running process: its pid, topic and value framing, and
    the port of its /metrics (the bridge's)."""

    pid: int
    topic: str
    prefix_len: int
    metrics_port: int | None = None


System = Callable[[str], contextlib.AbstractContextManager[Target]]
"""Starts a system under test against a broker (bootstrap servers)."""


def bridge_system(
    workdir: Path,
    address: str,
    start: str,
    pipeline: Mapping[str, int] | None = None,
    profile_out: Path | None = None,
) -> System:
    """The bridge (executions stream of all firms) from `start` (an ISO time or "live")."""

    @contextlib.contextmanager
    def run(bootstrap: str) -> Iterator[Target]:
        prefix = f"b{uuid.uuid4().hex[:6]}."
        port = free_port()
        config = bridge_config(workdir, bootstrap, address, prefix, start, pipeline or {}, port)
        with bridge_process(config, profile_out) as pid:
            topic = prefix + "polymarket.dropcopy.executions"
            yield Target(pid, topic, BRIDGE_PREFIX_LEN, port)

    return run


def naive_system(address: str, start: str) -> System:
    """The naive loop from `start` ("epoch" or "live")."""

    @contextlib.contextmanager
    def run(bootstrap: str) -> Iterator[Target]:
        topic = "naive.executions"
        create_topic(bootstrap, topic)
        args = ("--address", address, "--bootstrap", bootstrap, "--topic", topic)
        with worker_process("naive-worker", *args, "--start", start) as pid:
            yield Target(pid, topic, 0)

    return run


def floor_system(rate: int) -> System:
    """The broker's own latency: a plain idempotent producer, `rate` small records/s."""

    @contextlib.contextmanager
    def run(bootstrap: str) -> Iterator[Target]:
        topic = "floor"
        create_topic(bootstrap, topic)
        args = ("--bootstrap", bootstrap, "--topic", topic, "--rate", str(rate))
        with worker_process("floor-worker", *args) as pid:
            yield Target(pid, topic, 0)

    return run


@contextlib.contextmanager
def observed(system: System) -> Iterator[tuple[Target, Reader, Result]]:
    """A fresh broker, the system on it, a reader of its topic, and a Result that gets the
    system's RSS samples and CPU use (filled in when the block ends)."""
    from bridge.embedded import EmbeddedBroker

    with EmbeddedBroker() as broker, system(broker.bootstrap_servers) as target:
        result = Result("", rss=RssSampler(target.pid).start())
        cpu_before = cpu_seconds(target.pid) or 0.0
        started = time.monotonic()
        reader = Reader(broker.bootstrap_servers, target.topic)
        try:
            yield target, reader, result
        finally:
            reader.close()
            assert result.rss is not None
            result.rss.stop()
            cpu = (cpu_seconds(target.pid) or cpu_before) - cpu_before
            result.cpu_percent = 100 * cpu / (time.monotonic() - started)


def throughput(name: str, system: System, expected: int) -> Result:
    """Records/s until `expected` records are visible."""
    with observed(system) as (target, reader, result):
        cpu = CpuWindow(target.pid)
        rate, dups, result.cpu_us_per_record = measure_throughput(
            reader, expected, target.prefix_len, 300, cpu
        )
    result.scenario, result.records_per_s = name, rate
    result.note = f"{expected:,} records, {dups} duplicates"
    return result


def latency(name: str, system: System, seconds: float) -> Result:
    """Latency percentiles of a live stream over `seconds`."""
    with observed(system) as (target, reader, result):
        cpu = CpuWindow(target.pid)
        port = target.metrics_port
        before: dict[str, float] = {}
        if port is not None:
            total, upstream, rate = measure_latency(
                reader, seconds, target.prefix_len, cpu, lambda: before.update(scrape(port))
            )
            commits = commit_summary(before, scrape(port), seconds)
        else:
            total, upstream, rate = measure_latency(reader, seconds, target.prefix_len, cpu)
            commits = ""
    result.scenario, result.records_per_s = name, rate
    result.p50_ms, result.p99_ms = percentile(total, 50), percentile(total, 99)
    result.max_ms = max(total, default=float("nan"))
    result.cpu_us_per_record = cpu.us_per(len(total))
    result.produce_p99_ms = percentile(upstream, 99)
    result.note = f"{len(total):,} records; event->produce() p50 {percentile(upstream, 50):.0f} ms"
    result.note += commits
    return result


def commit_summary(before: dict[str, float], after: dict[str, float], seconds: float) -> str:
    """Commits/s and the commit-time distribution (histogram bucket bounds) between two
    scrapes of the bridge's /metrics."""
    count = after.get("polybridge_commit_latency_seconds_count", 0.0) - before.get(
        "polybridge_commit_latency_seconds_count", 0.0
    )
    if count <= 0:
        return "; no commits"
    total = after.get("polybridge_commit_latency_seconds_sum", 0.0) - before.get(
        "polybridge_commit_latency_seconds_sum", 0.0
    )
    p50, p99 = (bucket_percentile(before, after, p) for p in (50, 99))
    return (
        f"; {count / seconds:.0f} commits/s, commit ms mean {1000 * total / count:.1f}, "
        f"p50 <= {1000 * (p50 or 0):g}, p99 <= {1000 * (p99 or 0):g}"
    )


def run_all(plan: Plan, workdir: Path) -> list[Result]:
    """Every scenario, in order; prints each result as it comes."""
    results: list[Result] = []

    def done(result: Result) -> None:
        results.append(result)
        print(f"  {result.line()}", flush=True)

    epoch = "1970-01-01T00:00:00Z"
    tuned = ", ".join(f"{k}={v}" for k, v in TUNED.items())
    print(f"replay simulator: prefill {plan.prefill:,} records, batch {SIM_BATCH}", flush=True)
    with simulator(workdir, plan.prefill, 0) as address:
        expected = journal_executions(address)
        print(f"  journal holds {expected:,} executions", flush=True)
        done(
            throughput(
                "bridge EOS, replay, defaults", bridge_system(workdir, address, epoch), expected
            )
        )
        system = bridge_system(workdir, address, epoch, TUNED)
        done(throughput(f"bridge EOS, replay, {tuned}", system, expected))
        system = naive_system(address, "epoch")
        done(throughput("naive loop, replay (at-least-once)", system, plan.naive_records))
    live = f"live {LIVE_RATE:,}/s"
    floor_rate = round(LIVE_RATE * 0.58)
    name = f"Kafka floor: idempotent producer, {floor_rate:,}/s, no upstream"
    done(latency(name, floor_system(floor_rate), plan.latency_s))
    print(f"live simulator: {LIVE_RATE:,} records/s (all streams)", flush=True)
    with simulator(workdir, 0, LIVE_RATE) as address:
        system = bridge_system(workdir, address, "live")
        done(latency(f"bridge EOS, {live}, defaults", system, plan.latency_s))
        system = bridge_system(workdir, address, "live", TUNED)
        done(latency(f"bridge EOS, {live}, {tuned}", system, plan.latency_s))
        done(latency(f"naive loop, {live}", naive_system(address, "live"), plan.latency_s))
    print(f"long run: live simulator at {plan.rss_rate:,} records/s for {plan.rss_s:.0f} s")
    with simulator(workdir, 0, plan.rss_rate) as address:
        name = f"bridge EOS, live {plan.rss_rate:,}/s, {plan.rss_s:.0f} s"
        done(latency(name, bridge_system(workdir, address, "live"), plan.rss_s))
        name = f"naive loop, live {plan.rss_rate:,}/s"
        done(latency(name, naive_system(address, "live"), plan.latency_s))
    return results


# -- profile ----------------------------------------------------------------------------------


def run_profile(plan: Plan, workdir: Path, top: int = 30) -> None:
    """The throughput scenario with the bridge under cProfile; prints the top functions."""
    out = workdir / "bridge.prof"
    with simulator(workdir, plan.prefill, 0) as address:
        expected = journal_executions(address)
        system = bridge_system(workdir, address, "1970-01-01T00:00:00Z", profile_out=out)
        result = throughput("bridge EOS under cProfile", system, expected)
    print(result.line())
    stats = pstats.Stats(str(out))
    for order in ("tottime", "cumulative"):
        text = io.StringIO()
        stats.stream = text  # type: ignore[attr-defined]
        stats.sort_stats(order).print_stats(top)
        print(text.getvalue())


# -- the naive baseline (its own process) -----------------------------------------------------


def naive_worker(address: str, bootstrap: str, topic: str, start: str) -> None:
    """The documented client loop -> generic proto->dict -> fastavro -> idempotent producer."""
    from io import BytesIO

    import fastavro
    import grpc
    from confluent_kafka import Producer

    from bench.mapping_throughput import naive_datum
    from bridge.serde.avro import load_schema
    from bridge.serde.transcode import timestamp_micros
    from polymarket.v1 import dropcopy_pb2, dropcopy_pb2_grpc

    schema = load_schema(EXECUTION_SCHEMA)
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    request = dropcopy_pb2.CreateDropCopySubscriptionRequest(firms=FIRMS)
    if start == "epoch":
        request.resume_time.FromMicroseconds(0)
    options = [("grpc.max_receive_message_length", 16 * 1024 * 1024)]
    channel = grpc.insecure_channel(address, options=options)
    stub = dropcopy_pb2_grpc.DropCopyAPIStub(channel)
    metadata = [("x-participant-id", PARTICIPANT)]
    for response in stub.CreateDropCopySubscription(request, metadata=metadata):
        received = time.time_ns() // 1000
        for execution in response.executions:
            datum = {
                "event_id": execution.id,
                "stream_id": "naive.executions",
                "event_time": timestamp_micros(execution.transact_time)
                if execution.HasField("transact_time")
                else None,
                "receive_time": received,
                "execution": naive_datum(execution),
                "unrecognized_enums": {},
            }
            out = BytesIO()
            fastavro.schemaless_writer(out, schema, datum)
            while True:
                try:
                    producer.produce(topic, out.getvalue(), execution.order.id.encode())
                    break
                except BufferError:
                    producer.poll(0.05)
            producer.poll(0)


def floor_worker(bootstrap: str, topic: str, rate: int) -> None:
    """Records whose event_time is their produce time, `rate`/s in 10 ms ticks."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    padding = b"x" * FLOOR_VALUE_BYTES
    started = time.monotonic()
    sent = 0
    while True:
        due = int((time.monotonic() - started) * rate)
        while sent < due:
            now_us = time.time_ns() // 1000
            # ExecutionRecord head: event_id, stream_id "", event_time (union branch 1).
            value = _long(1) + b"f" + _long(0) + _long(1) + _long(now_us) + padding
            producer.produce(topic, value, str(sent).encode())
            sent += 1
        producer.poll(0.01)


def _long(n: int) -> bytes:
    """Avro long (zig-zag varint)."""
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


# -- main -------------------------------------------------------------------------------------


def print_report(results: list[Result], command: str, seconds: float) -> None:
    """The markdown results table, the command and the machine."""
    rows = [
        (
            r.scenario,
            r.records_per_s,
            f"{r.p50_ms:.1f}" if r.p50_ms == r.p50_ms else "-",
            f"{r.p99_ms:.1f}" if r.p99_ms == r.p99_ms else "-",
            f"{r.max_ms:.0f}" if r.max_ms == r.max_ms else "-",
            f"{r.produce_p99_ms:.0f}" if r.produce_p99_ms == r.produce_p99_ms else "-",
            f"{r.cpu_us_per_record:.1f}",
            r.rss.max_mb if r.rss else float("nan"),
            r.cpu_percent,
            r.note,
        )
        for r in results
    ]
    headers = ("scenario", "records/s", "p50 ms", "p99 ms", "max ms", "event->produce p99 ms")
    headers += ("CPU us/record", "RSS MB (max)", "CPU %", "notes")
    print()
    print(markdown_table(headers, rows))
    print()
    for r in results:
        if r.rss is not None:
            print(f"- RSS {r.scenario}: {r.rss.summary()}")
    print(f"\ncommand: `{command}` ({seconds:.0f} s)\nmachine: {machine_facts()}")


def run_worker(name: str, argv: list[str]) -> None:
    """`naive-worker` or `floor-worker` (subprocesses of the scenarios); run until killed."""
    parser = argparse.ArgumentParser(prog=name)
    for option in ("--bootstrap", "--topic"):
        parser.add_argument(option, required=True)
    if name == "naive-worker":
        parser.add_argument("--address", required=True)
        parser.add_argument("--start", choices=("epoch", "live"), required=True)
    else:
        parser.add_argument("--rate", type=int, required=True)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if name == "naive-worker":
        naive_worker(args.address, args.bootstrap, args.topic, args.start)
    else:
        floor_worker(args.bootstrap, args.topic, args.rate)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1].endswith("-worker"):
        run_worker(sys.argv[1], sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument("--profile", action="store_true", help="cProfile the bridge instead")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    workdir = Path(tempfile.mkdtemp(prefix="polybridge-e2e-"))
    started = time.monotonic()
    try:
        if args.profile:
            run_profile(plan, workdir)
            return
        results = run_all(plan, workdir)
        command = " ".join([".venv/bin/python -m bench.dropcopy_e2e", *sys.argv[1:]])
        print_report(results, command, time.monotonic() - started)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
