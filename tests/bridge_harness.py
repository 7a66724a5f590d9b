"""Running the bridge as a real process beside a simulator, for end-to-end tests."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bridge.errors import KafkaError
from bridge.kafka.readback import ReadRecord, open_reader, partitions_of, read_ranges, read_topic
from bridge.serde.avro import Serializer, SingleObjectFormat
from bridge.sim.dropcopy import SimulatorThread
from bridge.sim.market import DEFAULT_FIRMS
from bridge.streams.kinds import KINDS
from bridge.verify import Comparison, ExpectedDropCopyRows, compare, kafka_rows, stream_rows

T = TypeVar("T")

ALL_KINDS = ("executions", "trade_captures", "instrument_states", "position_changes")
PARTICIPANT = f"{DEFAULT_FIRMS[0]}/users/alice"


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, poll: float = 0.05
) -> None:
    """Poll `condition` until true; fail with `what` after `timeout` seconds. A KafkaError
    (e.g. the topic is not created yet) counts as "not yet"."""
    deadline = time.monotonic() + timeout
    error: KafkaError | None = None
    while True:
        try:
            if condition():
                return
            error = None
        except KafkaError as exc:
            error = exc
        if time.monotonic() > deadline:
            why = f" (the last check raised {error})" if error is not None else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{why}")
        time.sleep(poll)


def run_within(factory: Callable[[], Awaitable[T]], timeout: float) -> T:
    """`asyncio.run(factory())`, failing after `timeout` seconds. With asyncio.timeout, not
    wait_for: on Python 3.11 wait_for can swallow the cancel, and a hang then passes."""

    async def main() -> T:
        async with asyncio.timeout(timeout):
            return await factory()

    return asyncio.run(main())


async def until(condition: Callable[[], bool], deadline_s: float = 10) -> None:
    """`wait_until` inside an event loop: poll `condition` without blocking the loop."""
    end = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < end, "condition not met before the deadline"
        await asyncio.sleep(0.005)


def wait_followed_then_fresh(
    holds: Callable[[bool], bool], timeout: float, what: str, poll: float
) -> None:
    """Wait until `holds(False)`, polled on followed topics (`TopicFollower`), then until
    `holds(True)`: the verdict, on Kafka read afresh (live generation may still add a
    record between the two reads)."""
    wait_until(lambda: holds(False), timeout, what, poll)
    wait_until(lambda: holds(True), 30, f"{what} (read afresh)", 1.0)


class TopicFollower:
    """One topic's committed records, read incrementally: each `read()` fetches only what
    was committed since the one before. For polls, which read whole topics again every few
    hundred milliseconds before (on a loaded 2-core machine that was much of make test's
    CPU). A verdict reads the topic afresh instead, so a record Kafka lost after a poll had
    seen it still counts as lost."""

    def __init__(self, kafka: Mapping[str, Any], topic: str) -> None:
        self._kafka = dict(kafka)
        self._topic = topic
        self._next: dict[int, int] = {}
        self._records: dict[int, list[ReadRecord]] = {}

    def read(self) -> list[ReadRecord]:
        """Every committed record so far, in partition then offset order."""
        reader = open_reader(self._kafka)
        try:
            try:
                for partition in partitions_of(reader, self._topic, self._kafka):
                    self._next.setdefault(partition, 0)
            except KafkaError:
                if self._next:
                    raise
                return []  # not created yet: nothing committed (as a fresh read finds)
            records, ends = read_ranges(reader, self._topic, self._next, self._kafka)
        finally:
            reader.close()
        for record in records:
            self._records.setdefault(record.partition, []).append(record)
        self._next.update(ends)
        return [r for p in sorted(self._records) for r in self._records[p]]


@dataclass
class BridgeSetup:
    """A bridge configuration against one simulator and one Kafka, with unique names."""

    config_path: Path
    kafka: dict[str, Any]
    prefix: str
    kinds: Sequence[str]
    _expected: dict[str, ExpectedDropCopyRows] = field(default_factory=dict, repr=False)
    _followers: dict[str, TopicFollower] = field(default_factory=dict, repr=False)

    def topic(self, kind: str) -> str:
        return self.prefix + KINDS[kind].topic

    def expected(self, sim: SimulatorThread, kind: str) -> list[tuple[bytes | None, str]]:
        """(key, event_id) the bridge must write for what the simulator generated so far."""
        truth = sim.ground_truth(kind, firms=DEFAULT_FIRMS if KINDS[kind].account_scoped else ())
        if kind not in self._expected:
            self._expected[kind] = ExpectedDropCopyRows(kind, f"dropcopy.{kind}")
        return self._expected[kind](truth)

    def rows(self, kind: str, fresh: bool = True) -> list[tuple[bytes | None, str]]:
        """(key, event_id) of the kind's records in Kafka: read afresh (a verdict), or
        `fresh=False` only what was committed since the last such read (a poll)."""
        stream_id, topic = f"dropcopy.{kind}", self.topic(kind)
        if fresh:
            return kafka_rows(self.kafka, topic, stream_id)
        follower = self._followers.setdefault(topic, TopicFollower(self.kafka, topic))
        return stream_rows(follower.read(), stream_id)

    def compare(self, sim: SimulatorThread, kind: str, fresh: bool = True) -> Comparison:
        stream_id = f"dropcopy.{kind}"
        return compare(stream_id, self.expected(sim, kind), self.rows(kind, fresh))

    def wait_equal(
        self,
        sim: SimulatorThread,
        kinds: Sequence[str] = ALL_KINDS,
        timeout: float = 60,
        log: Path | None = None,
    ) -> None:
        """Wait until each kind in Kafka equals the simulator's ground truth. On timeout the
        error says what differs and quotes the end of the bridge's `log`."""
        for kind in kinds:
            try:
                wait_followed_then_fresh(
                    lambda fresh, kind=kind: self.compare(sim, kind, fresh).equal,
                    timeout,
                    kind,
                    0.5,
                )
            except AssertionError as exc:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:]) if log else ""
                raise AssertionError(
                    f"{exc}: {self.compare(sim, kind).summary()}\nbridge log tail:\n{tail}"
                ) from None

    def count(self, kind: str) -> int:
        """How many records of the kind Kafka holds (followed: for polls)."""
        return len(self.rows(kind, fresh=False))


ALONE = "[cluster]\nenabled = false\n"
"""Configuration for one instance SIGKILLed and restarted in place: outside a stream group it
starts at once, instead of waiting out its dead predecessor's group session (10 s by
default). The stream group under kills is tests/fault/test_high_availability.py's subject."""


def write_setup(
    tmp_path: Path,
    bootstrap: str,
    sim: SimulatorThread,
    prefix: str,
    kinds: Sequence[str] = ALL_KINDS,
    pipeline: str = "",
    extra: str = "",
    dropcopy: str = "",
    maintenance: str = "weekly = false",
    auth: str = "",
    tls_ca: Path | None = None,
) -> BridgeSetup:
    token_file = tmp_path / "token"
    token_file.write_text(sim.issue_token(participant=PARTICIPANT, lifetime_s=3600))
    firms = ", ".join(f'"{f}"' for f in DEFAULT_FIRMS)
    streams = "".join(
        f'[[dropcopy.streams]]\nkind = "{kind}"\nstart = "1970-01-01T00:00:00Z"\n'
        + (f"firms = [{firms}]\n" if KINDS[kind].account_scoped else "")
        for kind in kinds
    )
    tls = f'tls = true\nca_file = "{tls_ca}"\n' if tls_ca else "tls = false\n"
    config = tmp_path / "bridge.toml"
    config.write_text(
        f'app_id = "{prefix}app"\n{extra}\n'
        f'[kafka]\nbootstrap_servers = "{bootstrap}"\ntopic_prefix = "{prefix}"\npartitions = 3\n'
        f"[pipeline]\n{pipeline}\n"
        f'[dropcopy]\nendpoint = "{_endpoint(sim, tls_ca)}"\nparticipant_id = "{PARTICIPANT}"\n'
        f"{tls}{dropcopy}\n"
        # Off by default: a run on a Thursday morning (New York) must not take the faults
        # tests inject for the exchange's weekly maintenance.
        f"[dropcopy.maintenance]\n{maintenance}\n"
        f"[dropcopy.auth]\n{auth or _static_auth(token_file)}\n\n{streams}"
    )
    return BridgeSetup(config, {"bootstrap.servers": bootstrap}, prefix, kinds)


def _endpoint(sim: SimulatorThread, tls_ca: Path | None) -> str:
    # Over TLS the name must match the simulator certificate's names (localhost, 127.0.0.1).
    return sim.address.replace("127.0.0.1", "localhost") if tls_ca else sim.address


def _static_auth(token_file: Path) -> str:
    return f'mode = "static"\ntoken_file = "{token_file}"'


def gap_records(setup: BridgeSetup) -> list[dict[str, Any]]:
    """Decoded gap records in the setup's gaps topic."""
    return decoded_gaps(setup.kafka, setup.prefix)


def decoded_gaps(kafka: Mapping[str, Any], prefix: str) -> list[dict[str, Any]]:
    """Every record of the gaps topic under `prefix`, decoded whole (open gaps and their
    follow-ups), in commit order."""
    serializer = Serializer("polybridge.Gap", SingleObjectFormat().prefix("polybridge.Gap", ""))
    return [
        serializer.decode(r.value)
        for r in read_topic(kafka, prefix + "polybridge.gaps")
        if r.value is not None
    ]


class BridgeProcess:
    """`polybridge run` in a subprocess, its stderr kept in a file for assertions."""

    def __init__(self, setup: BridgeSetup, log_path: Path, env: dict[str, str] | None = None):
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in wait()/kill()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bridge", "run", "--config", str(setup.config_path)],
            stdout=self._log,
            stderr=self._log,
            env={**os.environ, **(env or {})},
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 45) -> int:
        """SIGTERM, and the exit code; a bridge still running after `timeout` (above the
        bridge's own 30 s shutdown grace) is killed, never leaked, and fails the test."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            tail = "\n".join(self.log().splitlines()[-25:])
            raise AssertionError(f"the bridge ignored SIGTERM for {timeout} s:\n{tail}") from None

    def kill(self) -> None:
        self.process.kill()
        self.wait(10)

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        finally:
            if self.process.returncode is not None:
                self._log.close()
