"""Avro value schemas of the Predexon channel topics, generated from the channel table.

The `.avsc` files in `avro/` are this output (a unit test compares them): the header every
record carries, then the channel's fields (all optional), then `extra`.
"""

from __future__ import annotations

from typing import Any

from bridge.mapping.predexon_fields import KINDS
from bridge.streams.channels import Channel


def avro_schema(channel: Channel) -> dict[str, Any]:
    """The Avro value schema of a channel's topic, as written to `avro/`."""
    namespace, _, name = channel.schema.rpartition(".")
    ts = {"type": "long", "logicalType": "timestamp-micros"}
    fields: list[dict[str, Any]] = [
        {"name": "event_id", "type": "string", "doc": "natural identity, for dedupe"},
        {"name": "event_type", "type": "string"},
        {
            "name": "event_time",
            "type": ["null", ts],
            "default": None,
            "doc": "upstream `timestamp` in microseconds; null when the event has none",
        },
        {"name": "receive_time", "type": ts, "doc": "when the bridge received the frame"},
        {"name": "stream_id", "type": "string"},
        {"name": "subscription_id", "type": ["null", "string"], "default": None},
        {"name": "filters", "type": "string", "doc": "the subscription's filters as JSON"},
    ]
    for field_name, kind in channel.fields:
        doc = "exact decimal text as sent" if kind == "decimal" else None
        if kind == "json":
            doc = "JSON text as sent"
        entry: dict[str, Any] = {
            "name": field_name,
            "type": ["null", KINDS[kind][1]],
            "default": None,
        }
        if doc:
            entry["doc"] = doc
        fields.append(entry)
    fields.append(
        {
            "name": "extra",
            "type": ["null", "string"],
            "default": None,
            "doc": "upstream fields this schema does not know yet, as a JSON object",
        }
    )
    return {
        "type": "record",
        "name": name,
        "namespace": namespace,
        "doc": f"Predexon {channel.platform}/{channel.type} channel event. "
        f"Key: {' else '.join(channel.key_fields)}.",
        "fields": fields,
    }
