"""A local Apache Kafka broker, or a cluster of three, for the demo, the tests and the
benchmarks.

One node in KRaft mode, broker and controller combined, started the way Kafka's own
distribution starts it: `kafka.tools.StorageTool format --standalone` once per data
directory, then `kafka.Kafka server.properties`, on a classpath of the jars that the
committed Maven project `kafka/pom.xml` resolves from Maven Central. The classpath is
resolved on first use and cached in `kafka/target/` (like `.venv`); the jars stay in
Maven's local repository.

`EmbeddedCluster` starts several such nodes (node ids 1..N) as one KRaft cluster: a static
controller quorum (`controller.quorum.voters` lists every node), one cluster id formatted
into each data directory, replication factor 3 for every topic and internal topic,
`min.insync.replicas` 2 and no unclean leader election, so that one node killed at a
time leaves every partition writable.

Data lives on disk: a broker SIGKILLed and started again on the same `data_dir` keeps
every record it acknowledged. Without a `data_dir` the broker uses a temporary directory
that `stop()` deletes.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import logging
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

from bridge.errors import BridgeError

log = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0
"""How long `start()` waits for the broker to answer. It answers in 4-8 s on 2 cores
(JVM start, storage format, KRaft election); the margin covers a loaded CI runner."""

STOP_TIMEOUT_S = 30.0
"""How long `stop()` waits after SIGTERM (controlled shutdown) before it SIGKILLs."""

HEAP = "-Xmx768m"
"""Bounded heap: a test broker holds little, and 2-core machines run several at once."""

CLUSTER_HEAP = "-Xmx512m"
"""Heap of each node of an `EmbeddedCluster`: three of them share the machine."""

CLUSTER_JVM_OPTIONS = ("-XX:TieredStopAtLevel=1",)
"""JIT with the client compiler only: a node starts on about 30% less CPU (4.0 instead of
5.5-6.2 CPU seconds measured), which failover tests pay on every restart; the peak
throughput it gives up is not what a local cluster is for."""

CLUSTER_START_TIMEOUT_S = 300.0
"""How long `EmbeddedCluster.start()` waits for every node to be in the metadata: three
JVMs starting at once on 2 cores take 15-30 s, and took over 120 s on a machine running
several test suites at once (load average 60); a deadline, not a wait."""

CLUSTER_NODE_START_TIMEOUT_S = 180.0
"""How long `EmbeddedCluster.restart()` waits for one node to rejoin: 5-10 s on 2 cores,
over 30 s measured on the loaded machine above."""

CLUSTER_REPLICAS = 3
"""Replicas of every topic on an `EmbeddedCluster` (its default size)."""

CLUSTER_MIN_ISR = 2
"""`min.insync.replicas` on an `EmbeddedCluster`: an acks=all write needs two replicas, so
one node may be down and no acknowledged record lives on one disk only."""

CLUSTER_BROKER_SESSION_MS = 4000
"""`broker.session.timeout.ms` on an `EmbeddedCluster` (Kafka's default: 9000): how long the
controller waits for a silent node's heartbeat before fencing it and electing new leaders
for its partitions. A SIGKILLed node's partitions are unwritable until then, so this
bounds every crash failover; lower than the default, failover tests cost seconds less per
kill. Nodes heartbeat every 500 ms (`broker.heartbeat.interval.ms`, default 2000), which
also unfences a restarted node sooner."""

JAVA_MIN_VERSION = 17
"""Apache Kafka 4 brokers need Java 17 or newer."""

NO_BROKER_HINT = "or pass --bootstrap-servers to use a running Kafka, or run docker compose up"

_REPO = Path(__file__).resolve().parent.parent
_CLASSPATH_LOCK = "classpath.lock"


def pom_path() -> Path:
    """The Maven project that pins the Kafka release (`POLYBRIDGE_KAFKA_POM` overrides)."""
    override = os.environ.get("POLYBRIDGE_KAFKA_POM")
    pom = Path(override) if override else _REPO / "kafka" / "pom.xml"
    if not pom.is_file():
        raise BridgeError(
            f"the local Kafka broker needs {pom} (part of a polybridge source checkout; "
            f"set POLYBRIDGE_KAFKA_POM to its path), {NO_BROKER_HINT}"
        )
    return pom


def java_binary() -> str:
    """`java` (from JAVA_HOME, else PATH), checked to be version 17 or newer."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).exists():
        raise BridgeError(
            f"the local Kafka broker needs Java {JAVA_MIN_VERSION}+ and none was found: "
            f"install OpenJDK {JAVA_MIN_VERSION} (apt-get install openjdk-17-jre-headless), "
            + NO_BROKER_HINT
        )
    out = subprocess.run(
        [java, "-version"], capture_output=True, text=True, check=False, timeout=30
    ).stderr
    found = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    major = int(found.group(1)) if found else 0
    if major == 1 and found and found.group(2):  # "1.8.0" style
        major = int(found.group(2))
    if major < JAVA_MIN_VERSION:
        raise BridgeError(
            f"the local Kafka broker needs Java {JAVA_MIN_VERSION}+, {java} is "
            f"{found.group(0) if found else 'unknown'}: install OpenJDK {JAVA_MIN_VERSION} "
            f"or set JAVA_HOME to one, {NO_BROKER_HINT}"
        )
    return java


def broker_classpath() -> str:
    """The broker's classpath, resolved by Maven on first use and cached beside the pom.

    The cache is keyed by the pom's content and checked to still name existing jars, so a
    changed release or a cleaned Maven repository resolves again. A file lock keeps two
    processes from running Maven at once.
    """
    pom = pom_path()
    target = pom.parent / "target"
    target.mkdir(exist_ok=True)
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()[:12]
    cached = target / f"classpath-{digest}.txt"
    with open(target / _CLASSPATH_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if cached.is_file():
            classpath = cached.read_text().strip()
            if classpath and all(Path(jar).is_file() for jar in classpath.split(os.pathsep)):
                return classpath
        mvn = shutil.which("mvn")
        if mvn is None:
            raise BridgeError(
                "the local Kafka broker needs Maven (mvn) once, to fetch Apache Kafka's jars "
                f"from Maven Central: install it (apt-get install maven), {NO_BROKER_HINT}"
            )
        log.info("resolving Apache Kafka's jars with Maven pom=%s (first use only)", pom)
        partial = target / f"classpath-{digest}.tmp"
        done = subprocess.run(
            [
                mvn,
                "--batch-mode",
                "--quiet",
                "-f",
                str(pom),
                "dependency:build-classpath",
                f"-Dmdep.outputFile={partial}",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0 or not partial.is_file():
            tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
            raise BridgeError(
                f"Maven could not resolve Apache Kafka from {pom} (exit {done.returncode}): "
                + " | ".join(tail)
            )
        partial.replace(cached)
        return cached.read_text().strip()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, below the kernel's
    ephemeral range.

    A port the kernel hands out for `bind(0)` is also what it hands out as the source port
    of the next outgoing connection (a Kafka client's, say), which can take it before the
    caller's server binds it. A port below the ephemeral range is never taken that way.
    There is still a short race with other listeners; `EmbeddedBroker.start()` notices a
    lost race (the broker exits) and raises.
    """
    low = _ephemeral_range_start()
    if low > _LISTEN_PORTS_FROM + 1000:
        for _ in range(200):
            port = _RANDOM.randrange(_LISTEN_PORTS_FROM, low)
            if _bindable(port):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Independent of `random.seed()` in tests, so two processes do not draw the same ports.
_RANDOM = random.SystemRandom()
_LISTEN_PORTS_FROM = 20_000


def _ephemeral_range_start() -> int:
    """The first port of Linux's ephemeral range (32768 when it cannot be read)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def _bindable(port: int) -> bool:
    """Whether 127.0.0.1:`port` can be bound without SO_REUSEADDR: nothing listens on it
    and no connection lingers on it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def port_free(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:`port` now (TIME_WAIT leftovers ignored, as the
    broker binds with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass(frozen=True, slots=True)
class Quorum:
    """The KRaft controller quorum of an `EmbeddedCluster`: every node's id and controller
    port, and the one cluster id formatted into every node's data directory."""

    voters: tuple[tuple[int, int], ...]
    """(node id, controller port) of every node."""
    cluster_id: str

    def voters_property(self) -> str:
        """`controller.quorum.voters`: `1@127.0.0.1:port,2@...`."""
        return ",".join(f"{node}@127.0.0.1:{port}" for node, port in self.voters)

    @property
    def replicas(self) -> int:
        return min(len(self.voters), CLUSTER_REPLICAS)


def server_properties(
    port: int,
    controller_port: int,
    log_dirs: Path,
    advertised: str | None,
    node_id: int = 1,
    quorum: Quorum | None = None,
    extra: Mapping[str, str] | None = None,
) -> str:
    """`server.properties` for one combined broker+controller on loopback: a node of its
    own (`quorum` None), or node `node_id` of the cluster `quorum` describes; `extra`
    settings override."""
    replicas = quorum.replicas if quorum is not None else 1
    min_isr = min(replicas, CLUSTER_MIN_ISR) if quorum is not None else 1
    settings = {
        "process.roles": "broker,controller",
        "node.id": str(node_id),
        **(
            {"controller.quorum.voters": quorum.voters_property()}
            if quorum is not None
            else {"controller.quorum.bootstrap.servers": f"127.0.0.1:{controller_port}"}
        ),
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{advertised or f'127.0.0.1:{port}'}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(log_dirs),
        # One node: every topic has one replica. A cluster: every topic, internal ones
        # included, has a replica on each of (up to) three nodes, and a write needs two.
        "default.replication.factor": str(replicas),
        "min.insync.replicas": str(min_isr),
        "offsets.topic.replication.factor": str(replicas),
        "transaction.state.log.replication.factor": str(replicas),
        "transaction.state.log.min.isr": str(min_isr),
        "share.coordinator.state.topic.replication.factor": str(replicas),
        "share.coordinator.state.topic.min.isr": str(min_isr),
        # A replica that was not in sync never becomes leader: no acknowledged record lost.
        "unclean.leader.election.enable": "false",
        **(
            {
                "broker.session.timeout.ms": str(CLUSTER_BROKER_SESSION_MS),
                "broker.heartbeat.interval.ms": "500",
            }
            if quorum is not None
            else {}
        ),
        # Fewer internal partitions than the defaults (50): created on first use, and 50
        # each cost seconds of a 2-core machine for no benefit on a local broker.
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.num.partitions": "4",
        # A new group rebalances at once instead of waiting 3 s for more members.
        "group.initial.rebalance.delay.ms": "0",
        "num.partitions": "1",
        **(extra or {}),
    }
    return "".join(f"{key}={value}\n" for key, value in settings.items())


def log4j_properties(log_file: Path | None) -> str:
    """The broker's log4j2 configuration: INFO to `log_file`, or nothing at all."""
    if log_file is None:
        return "status = error\nrootLogger.level = OFF\n"
    return (
        "status = error\n"
        "appender.file.type = File\n"
        "appender.file.name = file\n"
        f"appender.file.fileName = {log_file}\n"
        "appender.file.layout.type = PatternLayout\n"
        "appender.file.layout.pattern = [%d] %p %m (%c)%n\n"
        "rootLogger.level = INFO\n"
        "rootLogger.appenderRef.file.ref = file\n"
        # Per-request and per-partition chatter: thousands of lines a minute under load.
        "logger.request.name = kafka.request.logger\n"
        "logger.request.level = WARN\n"
        "logger.state.name = state.change.logger\n"
        "logger.state.level = WARN\n"
    )


class EmbeddedBroker:
    """An Apache Kafka broker subprocess on 127.0.0.1, for tests, benchmarks and the demo.

    Use as a context manager, or call `start()` / `stop()`. `kill()` SIGKILLs it and a
    later `start()` restarts it on the same ports and data directory.

    As node `node_id` of an `EmbeddedCluster` it is given the cluster's `quorum` and its
    own `controller_port` (one of the quorum's voters); `start()` then returns once the
    cluster's metadata, as this node serves it, shows every node.
    """

    def __init__(
        self,
        port: int | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
        advertised: str | None = None,
        *,
        node_id: int = 1,
        controller_port: int | None = None,
        quorum: Quorum | None = None,
        heap: str = HEAP,
        jvm_options: Sequence[str] = (),
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.port = port if port is not None else free_port()
        self.settings = dict(settings or {})
        """Broker settings over the defaults of `server_properties` (a test's own broker)."""
        self.controller_port = controller_port if controller_port is not None else free_port()
        self.node_id = node_id
        self.quorum = quorum
        self.heap = heap
        self.jvm_options = tuple(jvm_options)
        self._owns_data = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="polybridge-kafka-"))
        self.log_path = Path(log_path) if log_path is not None else None
        self.advertised = advertised
        """`host:port` advertised to clients instead of the listen address, e.g. a TCP proxy
        in front of the broker that fault tests cut and restore."""
        self._proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        """`host:port` for librdkafka's `bootstrap.servers`."""
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs (fault tests SIGSTOP/SIGCONT it)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def nodes(self) -> int:
        """How many brokers the metadata shows once this broker's cluster is up."""
        return len(self.quorum.voters) if self.quorum is not None else 1

    def start(self, timeout: float = START_TIMEOUT_S) -> EmbeddedBroker:
        """Format the data directory if new, start the broker, return once it answers
        (and, as a cluster node, once the metadata it serves shows every node)."""
        base = self.prepare()
        self.launch(base)
        self.wait_ready(timeout)
        return self

    def prepare(self) -> list[str]:
        """Write the configuration, format the data directory if new; the java command
        line's start for `launch()`. Safe in a worker thread (nothing is started)."""
        if self._proc is not None:
            raise BridgeError("embedded broker already started")
        java, classpath = java_binary(), broker_classpath()
        for port in (self.port, self.controller_port):
            if not port_free(port):
                raise BridgeError(f"embedded broker: port {port} on 127.0.0.1 is already in use")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "server.properties"
        config.write_text(
            server_properties(
                self.port,
                self.controller_port,
                self.data_dir / "log",
                self.advertised,
                self.node_id,
                self.quorum,
                self.settings,
            )
        )
        log4j = self.data_dir / "log4j2.properties"
        log4j.write_text(log4j_properties(self.log_path))
        base = [
            java,
            self.heap,
            *self.jvm_options,
            f"-Dlog4j2.configurationFile={log4j}",
            "-cp",
            classpath,
        ]
        if not (self.data_dir / "log" / "meta.properties").exists():
            self._format(base, config)
        return base

    def launch(self, base: list[str]) -> None:
        """Start the broker process from `prepare()`'s command line, without waiting.
        Call it on the thread that lives as long as the broker should (see
        `die_with_parent`)."""
        config = self.data_dir / "server.properties"
        self._out = open(self._out_path, "ab")  # noqa: SIM115 (closed in stop())
        log.info(
            "starting embedded Kafka node=%d port=%d data_dir=%s",
            self.node_id,
            self.port,
            self.data_dir,
        )
        self._proc = subprocess.Popen(
            [
                *die_with_parent(),
                *base,
                "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20",
                "kafka.Kafka",
                str(config),
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    @property
    def _out_path(self) -> Path:
        return self.data_dir / "broker.out"

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        """Return once the launched broker answers with every node in its metadata; stop
        it and raise if it exits or `timeout` passes first."""
        try:
            self._wait_ready(timeout, self._out_path)
        except BaseException:
            self.stop()
            raise

    def _format(self, base: list[str], config: Path) -> None:
        # A node of its own is its own quorum (--standalone); a cluster node gets the
        # cluster's id, and its voters come from controller.quorum.voters.
        how = (
            ["--standalone", "--cluster-id", _cluster_id()]
            if self.quorum is None
            else ["--cluster-id", self.quorum.cluster_id]
        )
        done = subprocess.run(
            [
                *base,
                "kafka.tools.StorageTool",
                "format",
                *how,
                "--config",
                str(config),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise BridgeError(
                f"embedded broker: formatting {self.data_dir} failed: "
                + (done.stdout + done.stderr).strip().splitlines()[-1:][0]
            )

    def _wait_ready(self, timeout: float, out_path: Path) -> None:
        from confluent_kafka.admin import AdminClient

        from bridge.kafka.client_log import client_log_config

        deadline = time.monotonic() + timeout
        conf = {"bootstrap.servers": self.bootstrap_servers}
        admin = AdminClient({**conf, **client_log_config(conf)})
        last: Exception | None = None
        while True:
            proc = self._proc
            assert proc is not None
            if proc.poll() is not None:
                tail = out_path.read_text(errors="replace").strip().splitlines()[-3:]
                raise BridgeError(
                    f"embedded broker exited with status {proc.returncode} on start "
                    f"(port {self.port}): {' | '.join(tail) or 'no output'}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BridgeError(
                    f"embedded broker on {self.bootstrap_servers} did not answer within "
                    f"{timeout:.0f} s: {last}"
                )
            try:
                brokers = admin.list_topics(timeout=min(1.0, remaining)).brokers
                if len(brokers) >= self.nodes:
                    log.info("embedded Kafka ready bootstrap=%s", self.bootstrap_servers)
                    return
                last = BridgeError(f"{len(brokers)} of {self.nodes} brokers in the metadata")
            except Exception as exc:  # KafkaException while the port is not bound yet
                last = exc
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL the broker (a crash); its data directory stays for a restart."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait()
            self._proc = None
        self._close_out()

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Shut the broker down cleanly (SIGKILL after `timeout`); delete a temporary
        data directory."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("embedded broker ignored SIGTERM, killing port=%d", self.port)
                proc.kill()
                proc.wait()
        self._close_out()
        if self._owns_data and not os.environ.get("POLYBRIDGE_KEEP_KAFKA_DATA"):
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def _close_out(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None

    def wait(self) -> int:
        """Block until the broker exits on its own; its exit status."""
        assert self._proc is not None
        return self._proc.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self if self._proc is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class EmbeddedCluster:
    """A KRaft cluster of `nodes` combined broker+controller nodes on 127.0.0.1, for tests,
    benchmarks and `polybridge broker --nodes 3`.

    Node `i` (1..N) is an `EmbeddedBroker` with its own broker and controller port, its
    data in `data_dir/node-i` and its log in `log_dir/kafka-i.log`. `start()` formats the
    data directories and starts the JVMs side by side, and returns once every node serves
    metadata showing all N brokers. `kill(i)` / `stop_node(i)` and `restart(i)` act on one
    node, keeping its ports and data.
    """

    def __init__(
        self,
        nodes: int = CLUSTER_REPLICAS,
        data_dir: str | os.PathLike[str] | None = None,
        log_dir: str | os.PathLike[str] | None = None,
        ports: Sequence[int] | None = None,
        heap: str = CLUSTER_HEAP,
    ) -> None:
        if nodes < 1:
            raise BridgeError(f"an embedded cluster needs at least one node, not {nodes}")
        if ports is not None and len(ports) != nodes:
            raise BridgeError(f"{nodes} nodes need {nodes} broker ports, not {len(ports)}")
        self._owns_data = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="polybridge-kafka-cluster-"))
        taken: set[int] = set(ports or ())
        broker_ports = (
            list(ports) if ports is not None else [_distinct_port(taken) for _ in range(nodes)]
        )
        controller_ports = [_distinct_port(taken) for _ in range(nodes)]
        self.quorum = Quorum(
            tuple((i + 1, controller_ports[i]) for i in range(nodes)), _cluster_id()
        )
        logs = Path(log_dir) if log_dir is not None else None
        self.nodes: dict[int, EmbeddedBroker] = {
            node: EmbeddedBroker(
                broker_ports[node - 1],
                self.data_dir / f"node-{node}",
                logs / f"kafka-{node}.log" if logs is not None else None,
                node_id=node,
                controller_port=controller_port,
                quorum=self.quorum,
                heap=heap,
                jvm_options=CLUSTER_JVM_OPTIONS,
            )
            for node, controller_port in self.quorum.voters
        }

    @property
    def bootstrap_servers(self) -> str:
        """Every node's `host:port`, comma-separated, for `bootstrap.servers`."""
        return ",".join(node.bootstrap_servers for node in self.nodes.values())

    def node(self, node_id: int) -> EmbeddedBroker:
        return self.nodes[node_id]

    def running(self) -> list[int]:
        """The ids of the nodes whose process runs."""
        return [i for i, node in self.nodes.items() if node.running]

    def start(self, timeout: float = CLUSTER_START_TIMEOUT_S) -> EmbeddedCluster:
        """Start every node that is not running, side by side; return once each serves
        metadata showing every node."""
        deadline = time.monotonic() + timeout
        stopped = [node for node in self.nodes.values() if not node.running]
        try:
            # Formatting is a JVM run per node: in parallel. The brokers themselves are
            # started on this thread (they die with the thread that started them).
            with ThreadPoolExecutor(max(1, len(stopped))) as pool:
                bases = list(pool.map(lambda node: node.prepare(), stopped))
            for node, base in zip(stopped, bases, strict=True):
                node.launch(base)
            for node in stopped:
                node.wait_ready(max(0.1, deadline - time.monotonic()))
        except BaseException:
            self.stop()
            raise
        log.info("embedded Kafka cluster ready bootstrap=%s", self.bootstrap_servers)
        return self

    def kill(self, node_id: int) -> None:
        """SIGKILL node `node_id` (a crash); its data stays for `restart()`."""
        self.nodes[node_id].kill()

    def stop_node(self, node_id: int, timeout: float = STOP_TIMEOUT_S) -> None:
        """Shut node `node_id` down cleanly (a controlled shutdown moves its leaderships
        away first); its data stays for `restart()`."""
        self.nodes[node_id].stop(timeout)

    def restart(self, node_id: int, timeout: float = CLUSTER_NODE_START_TIMEOUT_S) -> None:
        """Start node `node_id` again on its ports and data; return once it serves metadata
        showing every node (it has rejoined and is unfenced)."""
        self.nodes[node_id].start(timeout)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Shut every node down at once (SIGKILL after `timeout`); a temporary cluster is
        SIGKILLed and its data directory deleted. Nodes shutting down together can wait
        on each other's controlled shutdown for the whole `timeout` (measured: 30 s), which
        data about to be deleted does not need."""
        if self._owns_data:
            for node in self.nodes.values():
                node.kill()
            shutil.rmtree(self.data_dir, ignore_errors=True)
            return
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(lambda node: node.stop(timeout), self.nodes.values()))

    def __enter__(self) -> EmbeddedCluster:
        return self if self.running() else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _distinct_port(taken: set[int]) -> int:
    """A free port not in `taken` (which it joins): the kernel may hand out a port again
    once its probe socket closed."""
    while True:
        port = free_port()
        if port not in taken:
            taken.add(port)
            return port


def die_with_parent() -> list[str]:
    """A command prefix that has the process (a broker, the registry) SIGKILLed when the
    thread that started it ends (util-linux `setpriv --pdeathsig`, Linux), so a test run or
    demo that is itself killed leaks no JVM. Not a `preexec_fn`: code in a forked child of
    a threaded process can crash or deadlock."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


def _cluster_id() -> str:
    """A new KRaft cluster id: 16 random bytes, URL-safe base64 without padding.

    One id in 64 would start with "-", which the storage tool reads as an option;
    Kafka's own Uuid.randomUuid() draws again in that case, and so do we.
    """
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text
