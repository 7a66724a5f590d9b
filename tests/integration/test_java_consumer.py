"""A Java consumer reads what the bridge wrote: `java/topic-reader` (kafka-clients 4.4.0,
Avro 1.12's `BinaryMessageDecoder` over `GenericData`, every exported `.avsc` registered
with `addSchema`) reads every data topic read_committed and prints each record as JSON.

The bridge runs as a process (`tests/bridge_harness.py`) against the DropCopy simulator
(all four streams) and the Predexon simulator (three channels) at once; the schemas are
what `python -m bridge schemas export DIR` writes. What Java prints is checked against the
DropCopy simulator's ground truth (the (key, event_id) rows, order per key included), and
for every topic against what fastavro decodes from the same records.

With Schema Registry framing the bridge registers its schemas in the session's registry
(`schema_registry_url`), and the Java program fetches each writer schema by id from the
registry's Confluent API; Python's view then is confluent-kafka's `AvroDeserializer`.

The Maven build runs inside the test, once per content of `java/topic-reader` (pom and
sources): its output stays in `java/topic-reader/target/` with a stamp naming that content.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from bridge.serde.avro import Serializer, SingleObjectFormat
from bridge.serde.exact_json import dumps
from bridge.sim import dropcopy as dsim
from bridge.sim import predexon as psim
from bridge.streams.channels import CHANNELS
from bridge.streams.kinds import KINDS
from bridge.verify import compare
from tests import kafka_fixture
from tests.bridge_harness import ALL_KINDS, BridgeProcess, BridgeSetup, wait_until, write_setup
from tests.predexon_harness import Sub, predexon_section

READER = Path(__file__).resolve().parents[2] / "java" / "topic-reader"
JAR = READER / "target" / "topic-reader.jar"
MAVEN_TIMEOUT_S = 900
"""A cold build downloads the plugins and jars from Maven Central (about 40 s here)."""
JAVA_TIMEOUT_S = 120

EVENT_ID_HEADER = "polybridge.event_id"
STREAM_HEADER = "polybridge.stream"
PREDEXON_EVENTS = 20
"""Records each Predexon stream must have in Kafka before the bridge is stopped."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# -- building and running the Java program ------------------------------------------------


@dataclass(frozen=True)
class TopicReader:
    java: str
    jar: Path

    def run(
        self, bootstrap: str, schemas: Path | None, topics: list[str], registry: str = ""
    ) -> subprocess.CompletedProcess[str]:
        """With `registry` (its Confluent API URL) values are read by schema id, else by
        fingerprint among the `.avsc` files in `schemas`."""
        command = [self.java, "-jar", str(self.jar), "--timeout-s", "60"]
        if registry:
            command += ["--registry", registry, bootstrap]
        else:
            command += [bootstrap, str(schemas)]
        return subprocess.run(
            [*command, *topics],
            capture_output=True,
            text=True,
            encoding="utf-8",
            timeout=JAVA_TIMEOUT_S,
            check=False,
        )

    def read(
        self, bootstrap: str, schemas: Path | None, topics: list[str], registry: str = ""
    ) -> list[dict[str, Any]]:
        """Every record of `topics`, as the JSON lines the program prints."""
        done = self.run(bootstrap, schemas, topics, registry)
        assert done.returncode == 0, f"topic-reader exit {done.returncode}:\n{done.stderr}"
        return [json.loads(line) for line in done.stdout.splitlines()]


def _tools() -> tuple[str, str]:
    """`java` (JAVA_HOME's first) and `mvn`; a clear failure when either is missing."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    mvn = shutil.which("mvn")
    missing = [
        what
        for what, path in (("a Java 17+ JDK (java)", java), ("Maven (mvn)", mvn))
        if not path or not Path(path).exists()
    ]
    if missing:
        pytest.fail(
            f"the Java consumer test needs {' and '.join(missing)} to build and run "
            f"{READER}: install them (apt-get install openjdk-17-jdk-headless maven)",
            pytrace=False,
        )
    assert java is not None and mvn is not None
    return java, mvn


def _source_digest() -> str:
    """Hash of everything the build reads: the pom and every file under src/."""
    digest = hashlib.sha256()
    for path in [
        READER / "pom.xml",
        *sorted(p for p in (READER / "src").rglob("*") if p.is_file()),
    ]:
        digest.update(str(path.relative_to(READER)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _built(stamp: Path) -> bool:
    """Whether the stamp's build is still there: the jar and every jar it lists in lib/."""
    if not (stamp.is_file() and JAR.is_file()):
        return False
    libs = stamp.read_text().split()
    return bool(libs) and all((JAR.parent / "lib" / name).is_file() for name in libs)


@functools.cache
def build_topic_reader() -> TopicReader:
    """`mvn -q -B package` in java/topic-reader, unless the build of the same sources is
    already in target/ (a file lock keeps two test processes from building at once)."""
    java, mvn = _tools()
    target = READER / "target"
    target.mkdir(exist_ok=True)
    stamp = target / f"built-{_source_digest()}.txt"
    with open(target / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _built(stamp):
            for old in target.glob("built-*.txt"):
                old.unlink()
            done = subprocess.run(
                [mvn, "-q", "-B", "-f", str(READER / "pom.xml"), "package"],
                capture_output=True,
                text=True,
                timeout=MAVEN_TIMEOUT_S,
                check=False,
            )
            output = (done.stdout + done.stderr).strip().splitlines()
            assert done.returncode == 0 and JAR.is_file(), (
                f"mvn package in {READER} failed (exit {done.returncode}):\n"
                + "\n".join(output[-30:])
            )
            libs = sorted(p.name for p in (target / "lib").glob("*.jar"))
            stamp.write_text("\n".join(libs) + "\n")
    return TopicReader(java, JAR)


@pytest.fixture(scope="module")
def schema_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The exported `.avsc` files, as a consumer gets them (`schemas export DIR`)."""
    folder = tmp_path_factory.mktemp("schemas")
    done = subprocess.run(
        [sys.executable, "-m", "bridge", "schemas", "export", str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    written = sorted(Path(line).name for line in done.stdout.split())
    assert written == sorted(p.name for p in folder.glob("*.avsc"))
    names = [KINDS[k].schema for k in ALL_KINDS] + [c.schema for c in CHANNELS.values()]
    assert {f"{name}.avsc" for name in names} <= set(written)
    return folder


# -- what Python reads from the same topics -----------------------------------------------


def _plain(datum: Any) -> Any:
    """A fastavro datum in the JSON form the Java program prints: timestamps (fastavro
    gives aware datetimes) as microseconds, bytes as base64."""
    if isinstance(datum, dict):
        return {k: _plain(v) for k, v in datum.items()}
    if isinstance(datum, list):
        return [_plain(v) for v in datum]
    if isinstance(datum, datetime):
        return (datum - _EPOCH) // timedelta(microseconds=1)
    if isinstance(datum, bytes):
        return base64.b64encode(datum).decode()
    return datum


def _text(value: bytes | None) -> str | None:
    return value.decode() if value is not None else None


def python_view(
    bootstrap: str, topic: str, schema: str, decode: Callable[[bytes], Any] | None = None
) -> list[dict[str, Any]]:
    """The topic's committed records, read by the tests' own reader (confluent-kafka) and
    decoded by fastavro (or by `decode`), in the shape of the Java program's lines."""
    if decode is None:
        decode = Serializer(schema, SingleObjectFormat().prefix(schema, topic)).decode
    return [
        {
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "key": _text(key),
            "event_id": _text(dict(headers).get(EVENT_ID_HEADER)),
            "stream": _text(dict(headers).get(STREAM_HEADER)),
            "schema": schema,
            "value": _plain(decode(value)) if value is not None else None,
        }
        for key, value, headers, partition, offset in kafka_fixture.read_all(bootstrap, topic)
    ]


def _position(line: dict[str, Any]) -> tuple[int, int]:
    return line["partition"], line["offset"]


# -- the bridge: DropCopy and Predexon in one process ---------------------------------------


@dataclass
class Run:
    dc: BridgeSetup
    subs: list[Sub]
    dsim: dsim.SimulatorThread
    psim: psim.SimulatorThread

    def predexon_topic(self, sub: Sub) -> str:
        return self.dc.prefix + CHANNELS[sub.channel].topic


@contextlib.contextmanager
def bridge_run(bootstrap: str, tmp_path: Path, prefix: str, extra: str = "") -> Iterator[Run]:
    """A bridge run written to Kafka and stopped: every DropCopy topic equal to the
    simulator's ground truth, every Predexon stream with `PREDEXON_EVENTS` or more records.
    `extra`: more configuration (the `[schema_registry]` section)."""
    dconfig = dsim.SimConfig(seed=31, prefill=1_000, heartbeat_s=0.1, batch=200, rate=0)
    pconfig = psim.SimConfig(
        seed=32, rate=30, channels=("orders", "crypto", "orderbook"), confirm_scale=0.02
    )
    with dsim.SimulatorThread(dconfig) as dc_sim, psim.SimulatorThread(pconfig) as pdx_sim:
        tokens = [t for m in pdx_sim.sim.factory.universe.markets[:3] for t, _ in m.tokens]
        subs = [
            Sub("trades", "orders", {"users": ["*"], "status": "all"}),
            Sub("crypto", "crypto", {"feeds": ["*"]}),
            Sub("book", "orderbook", {"token_ids": tokens}),
        ]
        dc = write_setup(tmp_path, bootstrap, dc_sim, prefix, extra=extra)
        text = dc.config_path.read_text()
        dc.config_path.write_text(text + "\n" + predexon_section(tmp_path, pdx_sim, subs))
        run = Run(dc, subs, dc_sim, pdx_sim)
        bridge = BridgeProcess(dc, tmp_path / "bridge.log")
        try:
            dc.wait_equal(dc_sim, log=bridge.log_path)
            for sub in subs:
                wait_until(
                    lambda sub=sub: _stream_count(bootstrap, run, sub) >= PREDEXON_EVENTS,
                    60,
                    f"{sub.stream_id}: {PREDEXON_EVENTS} records in Kafka",
                    poll=0.3,
                )
        finally:
            code = bridge.terminate()
        assert code == 0, bridge.log()
        yield run


def _stream_count(bootstrap: str, run: Run, sub: Sub) -> int:
    wanted = sub.stream_id.encode()
    rows = kafka_fixture.read_all(bootstrap, run.predexon_topic(sub))
    return sum(1 for row in rows if dict(row[2]).get(STREAM_HEADER) == wanted)


# -- the tests ----------------------------------------------------------------------------


def test_java_reads_every_topic_the_bridge_wrote(
    kafka_bootstrap: str, tmp_path: Path, unique_name: Callable[[str], str], schema_dir: Path
) -> None:
    topic_reader = build_topic_reader()  # first: a failing build needs no bridge
    with bridge_run(kafka_bootstrap, tmp_path, unique_name("java") + ".") as run:
        _check_java_output(kafka_bootstrap, run, topic_reader, schema_dir)


def test_java_reads_registry_framed_topics_with_schemas_from_the_registry(
    kafka_bootstrap: str,
    tmp_path: Path,
    unique_name: Callable[[str], str],
    schema_registry_url: str,
) -> None:
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    topic_reader = build_topic_reader()
    extra = f'[schema_registry]\nurl = "{schema_registry_url}"\n'
    with bridge_run(kafka_bootstrap, tmp_path, unique_name("javasr") + ".", extra) as run:
        deserializer = AvroDeserializer(SchemaRegistryClient({"url": schema_registry_url}))

        def decoder(topic: str) -> Callable[[bytes], Any]:
            context = SerializationContext(topic, MessageField.VALUE)
            return lambda value: deserializer(value, context)

        _check_java_output(kafka_bootstrap, run, topic_reader, None, schema_registry_url, decoder)
        registry = SchemaRegistryClient({"url": schema_registry_url})
        for kind in ALL_KINDS:  # framed with the id registered under the topic's subject
            topic = run.dc.topic(kind)
            schema_id = registry.get_latest_version(f"{topic}-value").schema_id
            values = {row[1][:5] for row in kafka_fixture.read_all(kafka_bootstrap, topic)}
            assert values == {b"\x00" + schema_id.to_bytes(4, "big")}, topic


def _check_java_output(
    kafka_bootstrap: str,
    run: Run,
    topic_reader: TopicReader,
    schema_dir: Path | None,
    registry: str = "",
    decoder: Callable[[str], Callable[[bytes], Any]] | None = None,
) -> None:
    """What Java printed for every topic of `run`, checked against the ground truth and
    against Python's view (`decoder(topic)` decodes a value; default fastavro by
    fingerprint)."""
    dropcopy_topics = {run.dc.topic(kind): kind for kind in ALL_KINDS}
    predexon_topics = {run.predexon_topic(sub): sub for sub in run.subs}
    lines = topic_reader.read(
        kafka_bootstrap, schema_dir, [*dropcopy_topics, *predexon_topics], registry
    )
    if registry:
        assert lines and all(line["value"] is not None for line in lines)

    def view(topic: str, schema: str) -> list[dict[str, Any]]:
        decode = decoder(topic) if decoder is not None else None
        return python_view(kafka_bootstrap, topic, schema, decode)

    by_topic: dict[str, list[dict[str, Any]]] = {
        t: [] for t in [*dropcopy_topics, *predexon_topics]
    }
    for line in lines:
        by_topic[line["topic"]].append(line)
    for topic_lines in by_topic.values():
        topic_lines.sort(key=_position)

    for topic, kind in dropcopy_topics.items():
        java = by_topic[topic]
        rows = [(_bytes(line["key"]), line["event_id"]) for line in java]
        expected = run.dc.expected(run.dsim, kind)
        result = compare(f"dropcopy.{kind}", expected, rows)
        assert result.equal and result.expected > 0, result.summary()
        for line in java:
            assert line["schema"] == KINDS[kind].schema, line
            assert line["stream"] == f"dropcopy.{kind}", line
            assert line["value"]["event_id"] == line["event_id"], line
            assert line["value"]["stream_id"] == f"dropcopy.{kind}", line
            _assert_identity(kind, line["key"], line["event_id"], line["value"])
        _assert_same_records(topic, java, view(topic, KINDS[kind].schema))

    for topic, sub in predexon_topics.items():
        java = by_topic[topic]
        python = view(topic, CHANNELS[sub.channel].schema)
        assert len(java) >= PREDEXON_EVENTS, (topic, len(java))
        assert [line["event_id"] for line in java] == [line["event_id"] for line in python]
        _assert_same_records(topic, java, python)
        for line in java:
            assert line["stream"] == sub.stream_id, line
            assert line["value"]["event_id"] == line["event_id"], line
            assert line["value"]["stream_id"] == sub.stream_id, line
            assert line["value"]["filters"] == dumps(sub.filters), line


def _assert_same_records(
    topic: str, java: list[dict[str, Any]], python: list[dict[str, Any]]
) -> None:
    """Java's lines equal Python's view of the same records: position, key, headers and
    every decoded field (the first difference is reported, not a diff of thousands)."""
    assert len(java) == len(python), f"{topic}: Java read {len(java)}, Python {len(python)}"
    for from_java, from_python in zip(java, python, strict=True):
        assert from_java == from_python, f"{topic} at {_position(from_python)}"


def _bytes(text: str | None) -> bytes | None:
    return text.encode() if text is not None else None


def _assert_identity(kind: str, key: str, event_id: str, value: dict[str, Any]) -> None:
    """The decoded upstream message carries the key and event id the bridge derived from
    it (see bridge/mapping/dropcopy.py)."""
    if kind == "executions":
        assert value["execution"]["id"] == event_id, value
        assert value["execution"]["order"]["id"] == key, value
    elif kind == "trade_captures":
        assert f"{value['trade']['id']}|{value['trade']['state']}" == event_id, value
        assert value["trade"]["id"] == key, value
    elif kind == "instrument_states":
        assert value["instrument"]["symbol"] == key, value
        assert event_id.startswith(f"{key}|"), value
    else:
        change = value["position_change"]
        assert f"{change['position']['account']}|{change['position']['symbol']}" == key, value
        assert event_id == f"{key}|{change['change_time']}", value


def test_java_names_the_record_it_cannot_decode(
    kafka_bootstrap: str, make_topic: Callable[..., str], schema_dir: Path
) -> None:
    """A value whose fingerprint no exported schema has: exit 1 naming topic, partition
    and offset, after printing the records before it."""
    topic_reader = build_topic_reader()
    topic = make_topic()
    gap = Serializer("polybridge.Gap", SingleObjectFormat().prefix("polybridge.Gap", topic))
    good = gap(
        {
            "stream_id": "predexon.x",
            "upstream": "predexon",
            "channel": "orders",
            "filters": "{}",
            "from_time": None,
            "to_time": _EPOCH + timedelta(seconds=1),
            "reason": "test",
            "detected_at": _EPOCH + timedelta(seconds=2),
        }
    )
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(topic, good, b"k0", headers=[(EVENT_ID_HEADER, b"e0")])
    producer.produce(topic, b"\xc3\x01" + bytes(8) + good[10:], b"k1")
    assert producer.flush(30) == 0

    done = topic_reader.run(kafka_bootstrap, schema_dir, [topic])
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert f"cannot decode {topic} partition 0 offset 1" in done.stderr, done.stderr
    assert "MissingSchemaException" in done.stderr, done.stderr
    printed = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(p["offset"], p["key"], p["event_id"], p["schema"]) for p in printed] == [
        (0, "k0", "e0", "polybridge.Gap")
    ]
    assert printed[0]["value"]["to_time"] == 1_000_000
