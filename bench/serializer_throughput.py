"""Serializer throughput in both wire formats against raw `fastavro.schemaless_writer`.

    .venv/bin/python -m bench.serializer_throughput [--records 20000] [--repeat 3]

Same records, same run, one core. For each schema: `fastavro.schemaless_writer` into a
BytesIO (no framing: the floor of the generic path), the bridge's `Serializer` with the
single-object prefix, and with the Confluent prefix from a `RegistryFormat` (mock registry;
ids are resolved once at startup, so the per-record work is identical). For executions
also the DropCopy mapper (generated transcoder, key + event id + value) in both formats.
Best of `--repeat` runs, records/s.
"""

from __future__ import annotations

import argparse
import io
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import fastavro

from bench.common import machine_facts, markdown_table
from bridge.config import SchemaRegistrySettings
from bridge.mapping.dropcopy import DropCopyMapper
from bridge.mapping.predexon import PredexonMapper
from bridge.serde.avro import Serializer, SingleObjectFormat, WireFormat, load_schema
from bridge.serde.decode import Decoder
from bridge.serde.exact_json import loads
from bridge.serde.registry import RegistryFormat
from bridge.sim.market import MarketGenerator
from bridge.sim.predexon.events import EventFactory
from bridge.streams.kinds import KINDS

T0_US = 1_767_000_000_000_000


def executions(n: int) -> list[Any]:
    gen = MarketGenerator(seed=1)
    found: list[Any] = []
    step = 0
    while len(found) < n:
        found += [r.message for r in gen.step(T0_US + step * 1000) if r.stream == "executions"]
        step += 1
    return found[:n]


def datums(n: int) -> dict[str, list[Any]]:
    """Decoded datums per schema, made by the bridge's own mappers."""
    decoder = Decoder()
    kind = KINDS["executions"]
    mapper = DropCopyMapper(
        kind, "dropcopy.executions", "t", SingleObjectFormat().prefix(kind.schema, "t")
    )
    response = kind.response_type()
    getattr(response, kind.list_field).extend(executions(n))
    records, _ = mapper.map_response(response, T0_US)
    out = {kind.schema: [decoder.decode(r.value).datum for r in records]}
    trades = PredexonMapper(
        "orders",
        "predexon.orders",
        "t",
        SingleObjectFormat().prefix("predexon.polymarket.TradeEvent", "t"),
        "{}",
    )
    factory = EventFactory(seed=1)
    found: list[Any] = []
    second = 0
    while len(found) < n:
        for _, event in factory.make("orders", 1_767_000_000.0 + second):
            r = trades.map_event(loads(json.dumps(event, default=float)), T0_US, "s")
            found.append(decoder.decode(r.value).datum)
        second += 1
    out["predexon.polymarket.TradeEvent"] = found[:n]
    out["polybridge.Gap"] = [
        {
            "stream_id": "dropcopy.executions",
            "upstream": "dropcopy",
            "channel": "executions",
            "filters": "{}",
            "from_time": T0_US,
            "to_time": T0_US + i,
            "reason": "retention",
            "detected_at": T0_US,
        }
        for i in range(n)
    ]
    return out


def rate(fn: Callable[[], object], count: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return count / best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    registry = RegistryFormat(SchemaRegistrySettings(url=f"mock://{uuid.uuid4().hex}"))
    formats: dict[str, WireFormat] = {"single-object": SingleObjectFormat(), "registry": registry}
    rows = []
    for schema_name, items in datums(args.records).items():
        schema = load_schema(schema_name)

        def raw(items: list[Any] = items, schema: Any = schema) -> None:
            for d in items:
                out = io.BytesIO()
                fastavro.schemaless_writer(out, schema, d)
                out.getvalue()

        row: list[object] = [schema_name, f"{rate(raw, len(items), args.repeat):,.0f}"]
        for fmt in formats.values():
            serializer = Serializer(schema_name, fmt.prefix(schema_name, f"bench.{schema_name}"))
            per_s = rate(lambda s=serializer, i=items: [s(d) for d in i], len(items), args.repeat)
            row.append(f"{per_s:,.0f}")
        rows.append(row)
    kind = KINDS["executions"]
    response = kind.response_type()
    getattr(response, kind.list_field).extend(executions(args.records))
    row = ["executions via DropCopy mapper (transcoder)", "-"]
    for fmt in formats.values():
        mapper = DropCopyMapper(
            kind, "dropcopy.executions", "bench.x", fmt.prefix(kind.schema, "bench.x")
        )
        per_s = rate(lambda m=mapper: m.map_response(response, T0_US), args.records, args.repeat)
        row.append(f"{per_s:,.0f}")
    rows.append(row)
    print(machine_facts())
    print(f"{args.records} records per schema, best of {args.repeat}, records/s:\n")
    print(
        markdown_table(
            [
                "schema",
                "raw fastavro.schemaless_writer",
                "Serializer single-object",
                "Serializer registry",
            ],
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
