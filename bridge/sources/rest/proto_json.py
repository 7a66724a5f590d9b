"""Protobuf JSON (the exchange's REST rows) -> protobuf messages, fast, strict, lossless.

protobuf's `json_format.ParseDict` is pure Python and costs about a millisecond per
execution row, which made it the bottleneck of an unthrottled backfill. `parse_into` does
the same conversion for the shapes the exchange's JSON mapping produces, from a per-message
plan of the descriptor built once: names in lowerCamelCase or snake_case, int64 as strings
or numbers, enums by name (or number), Timestamps as RFC 3339, nested messages, repeated
fields and maps with string keys. `null` means "not set".

Field names the compiled contract does not know are skipped (e.g. `blockTradeIndicator`, a
newer field without a published number). Anything else it does not expect (an unknown enum
NAME, a wrong type, a bad timestamp) raises `ValueError`; the caller turns the row into a
dead letter. protobuf's own `ignore_unknown_fields` is not used because it also drops
unknown enum names, silently turning e.g. a new execution type into EXECUTION_TYPE_NEW.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

_F = FieldDescriptor
_INTS = {
    _F.TYPE_INT64,
    _F.TYPE_SINT64,
    _F.TYPE_SFIXED64,
    _F.TYPE_UINT64,
    _F.TYPE_FIXED64,
    _F.TYPE_INT32,
    _F.TYPE_SINT32,
    _F.TYPE_SFIXED32,
    _F.TYPE_UINT32,
    _F.TYPE_FIXED32,
}
_FLOATS = {_F.TYPE_DOUBLE, _F.TYPE_FLOAT}

Convert = Callable[[Any], Any]
# name (json or proto) -> (field name, kind, converter or sub-plan)
_Plan = dict[str, tuple[str, str, Any]]
_PLANS: dict[str, _Plan] = {}


def _int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected an integer, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ValueError(f"expected an integer, got {value!r}")


def _float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        return float(value)  # "NaN", "Infinity" and numeric strings, as protobuf allows
    raise ValueError(f"expected a number, got {value!r}")


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError(f"expected a boolean, got {value!r}")


def _str(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise ValueError(f"expected a string, got {value!r}")


def _bytes(value: Any) -> bytes:
    text = _str(value)
    return base64.urlsafe_b64decode(
        text.replace("+", "-").replace("/", "_") + "=" * (-len(text) % 4)
    )


def _enum(field: FieldDescriptor) -> Convert:
    enum_type = field.enum_type
    assert enum_type is not None
    by_name = {v.name: v.number for v in enum_type.values}

    def convert(value: Any) -> int:
        if isinstance(value, str):
            number = by_name.get(value)
            if number is None:
                raise ValueError(f"{field.full_name}: unknown enum value {value!r}")
            return number
        return _int(value)  # a number: kept even when unknown (open enums)

    return convert


def _scalar(field: FieldDescriptor) -> Convert:
    if field.type == _F.TYPE_ENUM:
        return _enum(field)
    if field.type in _INTS:
        return _int
    if field.type in _FLOATS:
        return _float
    if field.type == _F.TYPE_BOOL:
        return _bool
    if field.type == _F.TYPE_BYTES:
        return _bytes
    return _str


def _plan(descriptor: Descriptor) -> _Plan:
    plan = _PLANS.get(descriptor.full_name)
    if plan is not None:
        return plan
    plan = {}
    _PLANS[descriptor.full_name] = plan  # before recursing: recursive messages
    for field in descriptor.fields:
        message = field.message_type
        entry: tuple[str, str, Any]
        if message is not None and message.GetOptions().map_entry:
            key_f, value_f = message.fields_by_name["key"], message.fields_by_name["value"]
            value_conv = None if value_f.message_type is not None else _scalar(value_f)
            entry = (field.name, "map", (_scalar(key_f), value_conv))
        elif message is not None and message.full_name == "google.protobuf.Timestamp":
            entry = (field.name, "time_list" if _repeated(field) else "time", None)
        elif message is not None and message.file.package == "google.protobuf":
            entry = (field.name, "wkt", None)  # other well-known types: protobuf's parser
        elif message is not None:
            kind = "message_list" if _repeated(field) else "message"
            entry = (field.name, kind, message)
        else:
            entry = (field.name, "list" if _repeated(field) else "scalar", _scalar(field))
        plan[field.json_name] = entry
        plan[field.name] = entry
    return plan


def _repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def parse_into(row: Mapping[str, Any], message: Message) -> None:
    """Fill `message` from the JSON object `row` (see the module docstring)."""
    if not isinstance(row, Mapping):
        raise ValueError(f"{message.DESCRIPTOR.full_name}: expected an object")
    descriptor: Any = message.DESCRIPTOR
    plan = _plan(descriptor)
    for key, value in row.items():
        entry = plan.get(key)
        if entry is None or value is None:
            continue  # unknown to the compiled contract, or null: not set
        name, kind, how = entry
        if kind == "scalar":
            setattr(message, name, how(value))
        elif kind == "message":
            parse_into(value, getattr(message, name))
        elif kind == "time":
            getattr(message, name).FromJsonString(_str(value))
        elif kind == "list":
            getattr(message, name).extend(how(v) for v in _list(value))
        elif kind == "message_list":
            target = getattr(message, name)
            for item in _list(value):
                parse_into(item, target.add())
        elif kind == "time_list":
            target = getattr(message, name)
            for item in _list(value):
                target.add().FromJsonString(_str(item))
        elif kind == "map":
            key_conv, value_conv = how
            if not isinstance(value, Mapping):
                raise ValueError(f"{name}: expected an object")
            target = getattr(message, name)
            for k, v in value.items():
                if value_conv is None:
                    parse_into(v, target[key_conv(k)])
                else:
                    target[key_conv(k)] = value_conv(v)
        else:  # other well-known types (Duration, ...): protobuf's parser
            from google.protobuf import json_format

            json_format.ParseDict(value, getattr(message, name))


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"expected a list, got {type(value).__name__}")
    return value
