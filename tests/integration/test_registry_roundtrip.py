"""Both wire formats round-trip every topic's records byte-exactly through Kafka.

Records are made by the bridge's own mappers and serializers (DropCopy transcoders fed by
the market generator, Predexon mappers fed by the event factory, and the state, dead-letter
and gap serializers), produced to Kafka, read back read_committed, decoded by
`bridge.serde.decode.Decoder` (writer schema by fingerprint, or by id from the registry)
and re-encoded: the bytes must be the same. Registry mode runs against the session's
Schema Registry (`schema_registry_url`: a local Apicurio Registry, or `SCHEMA_REGISTRY_URL`),
and every registry-framed value is also read by confluent-kafka's own `AvroDeserializer`,
which must give the same datum field for field.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from bridge.config import SchemaRegistrySettings
from bridge.kafka.state import state_datum
from bridge.mapping.dropcopy import DropCopyMapper
from bridge.mapping.predexon import PredexonMapper
from bridge.records import Position
from bridge.serde.avro import Serializer, SingleObjectFormat, WireFormat
from bridge.serde.decode import Decoded, Decoder
from bridge.serde.exact_json import loads
from bridge.serde.registry import RegistryFormat, registry_client
from bridge.sim.market import MarketGenerator
from bridge.sim.predexon.events import EventFactory
from bridge.streams.channels import CHANNELS
from bridge.streams.kinds import KINDS

T0_US = 1_767_000_000_000_000

Made = list[tuple[str, str, bytes | None, bytes]]
"""(schema name, topic, key, value)."""


def make_records(fmt: WireFormat, topic_of: Callable[[str], str], per_schema: int = 40) -> Made:
    """Records of every topic value schema, made by the bridge's own code."""
    made: Made = []
    gen = MarketGenerator(seed=3)
    mappers = {
        name: DropCopyMapper(
            kind,
            f"dropcopy.{name}",
            topic_of(kind.schema),
            fmt.prefix(kind.schema, topic_of(kind.schema)),
        )
        for name, kind in KINDS.items()
    }
    counts = dict.fromkeys(KINDS, 0)
    step = 0
    while min(counts.values()) < per_schema:
        for rec in gen.step(T0_US + step * 10_000):
            kind = KINDS[rec.stream]
            response = kind.response_type()
            getattr(response, kind.list_field).append(rec.message)
            records, dead = mappers[rec.stream].map_response(response, T0_US + step)
            assert dead == []
            made += [(kind.schema, r.topic, r.key, r.value) for r in records]
            counts[rec.stream] += len(records)
        step += 1
    factory = EventFactory(seed=3)
    for name, channel in CHANNELS.items():
        topic = topic_of(channel.schema)
        mapper = PredexonMapper(
            name, f"predexon.{name}", topic, fmt.prefix(channel.schema, topic), '{"all": true}'
        )
        n = 0
        second = 0
        while n < per_schema:
            for _, event in factory.make(name, 1_767_000_000.0 + second):
                data = loads(json.dumps(event, default=float))  # decimals as JSON numbers
                r = mapper.map_event(data, T0_US + second, "sub-1")
                made.append((channel.schema, r.topic, r.key, r.value))
                n += 1
            second += 1
    side: list[tuple[str, dict[str, Any]]] = []
    for i in range(per_schema):
        position = Position(
            resume_token=bytes([i]) * 7,
            event_time_us=T0_US + i,
            live_time_us=None,
            detail={"k": str(i)},
        )
        side.append(
            ("polybridge.State", state_datum(f"s{i}", "dropcopy", position, "owner", T0_US + i))
        )
        side.append(
            (
                "polybridge.DeadLetter",
                {
                    "stream_id": "s",
                    "upstream": "predexon",
                    "target_topic": None if i % 2 else "t",
                    "error_type": "parse_error",
                    "error": f"bad {i}",
                    "raw": bytes(range(i % 256)),
                    "received_at": T0_US + i,
                },
            )
        )
        side.append(
            (
                "polybridge.Gap",
                {
                    "stream_id": "s",
                    "upstream": "dropcopy",
                    "channel": "executions",
                    "filters": "{}",
                    "from_time": None if i % 3 == 0 else T0_US,
                    "to_time": T0_US + i,
                    "reason": "retention",
                    "detected_at": T0_US + 2 * i,
                },
            )
        )
    for schema, datum in side:
        topic = topic_of(schema)
        made.append((schema, topic, b"s", Serializer(schema, fmt.prefix(schema, topic))(datum)))
    return made


def roundtrip(
    made: Made,
    bootstrap: str,
    read_topic: Callable[[str], list[Any]],
    decoder: Decoder,
    also: Callable[[str, bytes, Decoded], None] | None = None,
) -> int:
    """Produce `made`, read every topic back, decode and re-encode each value (and hand it
    to `also`); the number of values checked."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5}
    )
    for _, topic, key, value in made:
        producer.produce(topic, value=value, key=key)
    assert producer.flush(30) == 0
    by_topic: dict[str, list[bytes]] = {}
    for _, topic, _, value in made:
        by_topic.setdefault(topic, []).append(value)
    checked = 0
    for topic, values in by_topic.items():
        rows = read_topic(topic)
        read = sorted(row[1] for row in rows)
        assert read == sorted(values), topic
        schema_of = {v: s for s, t, _, v in made if t == topic}
        for value in read:
            decoded = decoder.decode(value)
            assert decoded.schema == schema_of[value]
            head = len(value) - len(_body(value))
            again = Serializer(decoded.schema, value[:head])(decoded.datum)
            assert again == value, f"{topic}: {decoded.schema} did not re-encode byte-exactly"
            if also is not None:
                also(topic, value, decoded)
            checked += 1
    return checked


def _body(value: bytes) -> bytes:
    return value[10:] if value[:2] == b"\xc3\x01" else value[5:]


def _topics(prefix: str) -> Callable[[str], str]:
    return lambda schema: f"{prefix}{schema}"


def test_single_object_format_roundtrips_every_topic(
    kafka_bootstrap: str, read_topic, unique_name
) -> None:
    made = make_records(SingleObjectFormat(), _topics(unique_name("so") + "."))
    assert len({s for s, *_ in made}) == 14
    assert roundtrip(made, kafka_bootstrap, read_topic, Decoder()) == len(made)


def test_registry_format_roundtrips_every_topic(
    kafka_bootstrap: str, read_topic, unique_name, schema_registry_url: str
) -> None:
    settings = SchemaRegistrySettings(url=schema_registry_url)
    made = make_records(RegistryFormat(settings), _topics(unique_name("sr") + "."))
    assert all(v[:1] == b"\x00" for *_, v in made)
    assert len({s for s, *_ in made}) == 14
    # Readers with their own view of the registry: nothing cached from the writer's client.
    deserializer = AvroDeserializer(registry_client(settings))
    read_by_confluent: list[str] = []

    def confluent_reads_the_same(topic: str, value: bytes, decoded: Decoded) -> None:
        datum = deserializer(value, SerializationContext(topic, MessageField.VALUE))
        assert datum == decoded.datum, f"{topic}: AvroDeserializer read another datum"
        read_by_confluent.append(topic)

    decoder = Decoder(registry_client(settings))
    checked = roundtrip(made, kafka_bootstrap, read_topic, decoder, confluent_reads_the_same)
    assert checked == len(made) == len(read_by_confluent)
