"""Field kinds of the Predexon channels: how one upstream JSON value becomes one Avro value.

Each kind named in the channel table (`bridge.streams.channels`) is a converter plus the Avro
type of the field's non-null branch (`KINDS`). The converters check the JSON type and
raise `MappingError` (the event becomes a dead letter) rather than coerce.

Lossless on purpose:

- Decimal fields (prices, sizes, fees, amounts) are written as their exact text in a
  `string` field, taken from the `RawNumber` the parser kept (`bridge.serde.exact_json.loads`).
  Avro's `decimal` logical type needs a fixed scale per field, which Predexon does not
  promise (prices have 2-4 decimals, normalized sizes 6, Chainlink prices 8+), and the text
  as sent is what a REST backfill will show, so consumers can compare byte for byte.
  Orderbook prices and sizes arrive as JSON strings and are kept the same way.
- Hex strings (hashes, `log_index`, `block_number`) are plain `string` fields, kept as sent.
- Keys of nested objects (tokens, price levels) this version does not know are kept in
  their `extra` (a JSON object text).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from bridge.errors import MappingError
from bridge.serde.exact_json import RawNumber, dumps, json_excerpt, json_type_name


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise MappingError(f"expected a string, got {json_type_name(v)}")
    return v


def _dec(v: Any) -> str:
    # Numbers on trades/activity, strings on the orderbook: both kept as exact text.
    if isinstance(v, RawNumber):
        return v.text
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    if isinstance(v, str) and _DECIMAL_TEXT.fullmatch(v):
        return v
    raise MappingError(f"expected a decimal number, got {json_type_name(v)} {json_excerpt(v)}")


def _int(v: Any) -> int:
    if isinstance(v, int) and not isinstance(v, bool):
        if not -(2**63) <= v < 2**63:
            raise MappingError(f"integer {v} does not fit in 64 bits")
        return v
    raise MappingError(f"expected an integer, got {json_type_name(v)} {json_excerpt(v)}")


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    raise MappingError(f"expected a boolean, got {json_type_name(v)}")


def _json(v: Any) -> str:
    return dumps(v)


def _object_list(item: Callable[[Any], dict[str, Any]]) -> Callable[[Any], list[dict[str, Any]]]:
    def convert(v: Any) -> list[dict[str, Any]]:
        if not isinstance(v, list):
            raise MappingError(f"expected a list, got {json_type_name(v)}")
        return [item(x) for x in v]

    return convert


def _token(v: Any) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise MappingError(f"expected a token object, got {json_type_name(v)}")
    out = {
        "token_id": _opt(v.get("token_id"), _str),
        "label": _opt(v.get("label"), _str),
        "won": _opt(v.get("won"), _bool),
    }
    rest = {k: x for k, x in v.items() if k not in out}
    out["extra"] = dumps(rest) if rest else None
    return out


def _level(v: Any) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise MappingError(f"expected a price level object, got {json_type_name(v)}")
    out = {"price": _opt(v.get("price"), _dec), "size": _opt(v.get("size"), _dec)}
    rest = {k: x for k, x in v.items() if k not in out}
    out["extra"] = dumps(rest) if rest else None
    return out


def _opt(v: Any, convert: Callable[[Any], Any]) -> Any:
    return None if v is None else convert(v)


_DECIMAL_TEXT = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")

KINDS: dict[str, tuple[Callable[[Any], Any], Any]] = {
    # kind: (converter, Avro type of the non-null branch)
    "string": (_str, "string"),
    "decimal": (_dec, "string"),
    "int": (_int, "long"),
    "bool": (_bool, "boolean"),
    "json": (_json, "string"),
    "tokens": (_object_list(_token), {"type": "array", "items": "predexon.polymarket.Token"}),
    "levels": (_object_list(_level), {"type": "array", "items": "predexon.polymarket.PriceLevel"}),
}
