"""A newer exchange contract, end to end: the simulator sends fields the compiled contract
lacks; the bridge keeps them byte-exact in Kafka and counts them on /metrics, and
`polybridge check` reports the drift (none against the compiled contract; skipped without
reflection)."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.descriptor import Descriptor
from google.protobuf.message_factory import GetMessageClass

from bridge.embedded import free_port
from bridge.kafka.readback import read_topic
from bridge.mapping.dropcopy import DropCopyMapper
from bridge.serde.avro import Serializer, SingleObjectFormat
from bridge.sim.dropcopy import STREAM_RPCS, SimConfig, SimulatorThread
from bridge.sim.market import DEFAULT_FIRMS
from bridge.streams.kinds import KINDS
from tests.bridge_harness import ALL_KINDS, BridgeProcess, wait_until, write_setup
from tests.integration.test_metrics import metrics_config, scrape, value

PAYLOAD = {
    "executions": "execution",
    "trade_captures": "trade",
    "instrument_states": "instrument",
    "position_changes": "position_change",
}


# -- what the simulator sent, read from its wire bytes without protobuf ----------------------


def _varint(raw: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = raw[i]
        value |= (byte & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if byte < 0x80:
            return value, i


def wire_fields(raw: bytes) -> Iterator[tuple[int, int, bytes, bytes]]:
    """(number, wire type, the field's bytes, its payload if length-delimited) in order."""
    i = 0
    while i < len(raw):
        start = i
        key, i = _varint(raw, i)
        payload = b""
        wire = key & 7
        if wire == 0:
            _, i = _varint(raw, i)
        elif wire == 1:
            i += 8
        elif wire == 2:
            size, i = _varint(raw, i)
            payload, i = raw[i : i + size], i + size
        elif wire == 5:
            i += 4
        else:
            raise AssertionError(f"the simulator does not send wire type {wire}")
        yield key >> 3, wire, raw[start:i], payload


def sent_unknown(raw: bytes, desc: Descriptor, path: str, out: dict[str, bytes]) -> None:
    """The bytes of every field the compiled `desc` lacks, per message path, as sent."""
    own = b""
    index: Counter[int] = Counter()
    for number, wire, whole, payload in wire_fields(raw):
        field = desc.fields_by_number.get(number)
        if field is None:
            own += whole
            continue
        sub = field.message_type
        if sub is None or wire != 2 or sub.GetOptions().map_entry:
            continue
        if sub.full_name.startswith("google.protobuf."):
            continue
        if field.is_repeated:
            where = f"{path}.{field.name}[{index[number]}]"
            index[number] += 1
        else:
            where = f"{path}.{field.name}"
        sent_unknown(payload, sub, where, out)
    if own:
        out[path] = own


def test_newer_contract_fields_reach_kafka_byte_exact_and_are_counted(
    kafka_bootstrap: str, tmp_path: Path, unique_name: Any
) -> None:
    port = free_port()
    config = SimConfig(seed=11, prefill=600, heartbeat_s=0.1, batch=100, contract="newer")
    with SimulatorThread(config) as sim:
        setup = write_setup(
            tmp_path,
            kafka_bootstrap,
            sim,
            unique_name("unknown") + ".",
            extra=metrics_config(port),
        )
        bridge = BridgeProcess(setup, tmp_path / "bridge.log")
        try:
            setup.wait_equal(sim, log=bridge.log_path)
            sent: dict[str, list[tuple[bytes, Any]]] = {}
            for kind in ALL_KINDS:
                firms = DEFAULT_FIRMS if KINDS[kind].account_scoped else ()
                record_class = STREAM_RPCS[kind][2]
                sent[kind] = [
                    (raw, record_class.FromString(raw))
                    for _, _, raw in sim.ground_truth_records(kind, firms=firms)
                ]
            carrying: dict[str, int] = {}
            for kind in ALL_KINDS:
                carrying[kind] = check_topic(setup.topic(kind), kind, sent[kind], setup.kafka)
            assert carrying["executions"] and carrying["trade_captures"], carrying
            assert carrying["instrument_states"] and not carrying["position_changes"], carrying

            def counted() -> bool:
                samples = scrape(port)
                return (
                    all(
                        value(samples, "polybridge_unknown_fields_total", f"dropcopy.{kind}")
                        == carrying[kind]
                        for kind in ALL_KINDS
                    )
                    and (
                        "polybridge_unknown_fields_total",
                        (("stream", "dropcopy.position_changes"),),
                    )
                    in samples
                )

            wait_until(counted, 30, f"polybridge_unknown_fields_total to equal {carrying}")
        finally:
            assert bridge.terminate() == 0, bridge.log()[-3000:]
        newer_execution: Any = GetMessageClass(
            sim.simulator.contract.pool.FindMessageTypeByName("polymarket.v1.Execution")
        )
    # What the kept bytes mean under the newer contract: the simulator's block trades.
    kind = KINDS["executions"]
    serializer = Serializer(kind.schema, SingleObjectFormat().prefix(kind.schema, ""))
    flags = [
        newer_execution.FromString(kept["execution"]).block_trade_indicator
        for record in read_topic(setup.kafka, setup.topic("executions"))
        if (kept := serializer.decode(record.value)["unknown_fields"]) is not None
    ]
    assert flags and all(flags)


def check_topic(
    topic: str, kind_name: str, sent: list[tuple[bytes, Any]], kafka: dict[str, Any]
) -> int:
    """Every record in `topic` holds exactly the unknown fields the simulator sent in the
    message it came from; returns how many records carry some."""
    kind = KINDS[kind_name]
    mapper = DropCopyMapper(kind, "expected", "expected", b"")
    response = kind.response_type()
    getattr(response, kind.list_field).extend(message for _, message in sent)
    records, dead = mapper.map_response(response, 0)
    assert dead == []
    expected: dict[tuple[bytes | None, str], dict[str, bytes] | None] = {}
    desc = STREAM_RPCS[kind_name][2].DESCRIPTOR
    for (raw, _), record in zip(sent, records, strict=True):
        unknown: dict[str, bytes] = {}
        sent_unknown(raw, desc, PAYLOAD[kind_name], unknown)
        expected[(record.key, record.event_id)] = unknown or None
    serializer = Serializer(kind.schema, SingleObjectFormat().prefix(kind.schema, ""))
    written = read_topic(kafka, topic)
    assert written, topic
    carrying = 0
    for record in written:
        datum = serializer.decode(record.value)
        want = expected[(record.key, datum["event_id"])]
        assert datum["unknown_fields"] == want, (kind_name, datum["event_id"])
        carrying += want is not None
    return carrying


# -- polybridge check ------------------------------------------------------------------------

NEWER_DRIFT = [
    "polymarket.v1.EventAttributes field 1 sport (string): the compiled contract lacks it",
    "polymarket.v1.EventAttributes field 2 league (string): the compiled contract lacks it",
    "polymarket.v1.EventAttributes field 3 event_id (string): the compiled contract lacks it",
    "polymarket.v1.EventAttributes field 4 provider (polymarket.v1.SportsDataProvider): "
    "the compiled contract lacks it",
    "polymarket.v1.Execution field 17 block_trade_indicator (bool): the compiled contract lacks it",
    "polymarket.v1.Instrument field 40 event_attributes (polymarket.v1.EventAttributes): "
    "the compiled contract lacks it",
    "polymarket.v1.Instrument field 41 create_time (google.protobuf.Timestamp): "
    "the compiled contract lacks it",
    "polymarket.v1.Instrument field 42 update_time (google.protobuf.Timestamp): "
    "the compiled contract lacks it",
]


def _check(config: Path) -> tuple[int, str, list[str], str]:
    """(exit code, the dropcopy contract line, the drift lines under it, all the output)."""
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=90,
    )
    output = result.stdout + result.stderr
    lines = result.stdout.splitlines()
    found = [i for i, line in enumerate(lines) if "dropcopy contract:" in line]
    assert len(found) == 1, output
    at = found[0]
    notes = []
    for line in lines[at + 1 :]:
        if not line.startswith("     - "):
            break
        notes.append(line.removeprefix("     - "))
    return result.returncode, lines[at], notes, output


def test_check_reports_the_newer_contract_and_skips_without_reflection(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    with SimulatorThread(SimConfig(contract="newer")) as sim:
        setup = write_setup(tmp_path, kafka_bootstrap, sim, "drift.", kinds=("executions",))
        code, line, notes, output = _check(setup.config_path)
        assert code == 0, output
        assert line == (
            "OK   dropcopy contract: 8 field(s) differ from the compiled contract (server "
            "reflection); the bridge keeps fields it does not know as raw bytes in unknown_fields"
        )
        assert notes == NEWER_DRIFT

        # A server without reflection (same token, same Kafka): skipped, not failed.
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        try:
            bare = tmp_path / "bare.toml"
            bare.write_text(setup.config_path.read_text().replace(sim.address, f"127.0.0.1:{port}"))
            code, line, notes, output = _check(bare)
        finally:
            server.stop(None)
    assert code == 0, output
    assert line == "OK   dropcopy contract: reflection not offered, skipped"
    assert notes == []
