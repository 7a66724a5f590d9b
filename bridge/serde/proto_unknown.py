"""The protobuf wire bytes of a message's unknown fields, as received.

Fields the exchange added after the compiled `.proto` are unknown field numbers to
protobuf. `unknown_field_bytes` re-encodes a message's own unknown fields (not those of its
nested messages) in the order received: exactly what was on the wire for any canonical
protobuf writer, and parseable by the newer `.proto`'s message type on their own or
appended to the known fields' bytes. The generated encoders (`transcode`) keep them per
message path so that no upstream field is lost.
"""

from __future__ import annotations

import struct
from typing import Any

from google.protobuf.unknown_fields import UnknownFieldSet

from bridge.serde.avro_binary import uvarint

_PACK_FIXED64 = struct.Struct("<Q").pack
_PACK_FIXED32 = struct.Struct("<I").pack


def unknown_set_bytes(fields: Any) -> bytes:
    """The wire bytes of an `UnknownFieldSet` (see `unknown_field_bytes`)."""
    out = bytearray()
    for f in fields:
        number, wire, data = f.field_number, f.wire_type, f.data
        # A protobuf varint is Avro's unsigned varint (Avro only adds the zig-zag step).
        out += uvarint((number << 3) | wire)
        if wire == 0:  # varint (an unsigned 64-bit value, as on the wire)
            out += uvarint(data)
        elif wire == 1:
            out += _PACK_FIXED64(data)
        elif wire == 2:
            out += uvarint(len(data))
            out += data
        elif wire == 3:  # group: its fields, then the end-group tag
            out += unknown_set_bytes(data)
            out += uvarint((number << 3) | 4)
        else:  # 5: fixed32
            out += _PACK_FIXED32(data)
    return bytes(out)


def unknown_field_bytes(message: Any) -> bytes:
    """The protobuf wire bytes of `message`'s own unknown fields (not those of its nested
    messages), in the order they were received; empty when it has none."""
    return unknown_set_bytes(UnknownFieldSet(message))
