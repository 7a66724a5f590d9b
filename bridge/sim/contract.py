"""The wire contract the DropCopy simulator serves: the compiled one, or a newer one.

`SimConfig.contract` picks it:

- `"current"`: exactly `proto/polymarket/v1` (what `polymarket.v1` was generated from).
- `"newer"`: the exchange after it added fields without publishing their numbers. The
  simulator's numbers are its own choice (nobody outside the exchange knows the real ones):

  - `Execution.block_trade_indicator = 17` (bool): true on about one execution in four
    (`block_trade`), so executions and both executions of a trade capture carry it;
  - `Instrument.event_attributes = 40` (message `EventAttributes`: `sport = 1`, `league = 2`,
    `event_id = 3`, `provider = 4` a `SportsDataProvider`), derived from the symbol;
  - `Instrument.create_time = 41`, `Instrument.update_time = 42` (Timestamp): when the
    symbol was first seen, and the record's event time.

  Position changes are unchanged. The records the simulator journals (and so sends, and
  reports as ground truth) are serialized by the newer message types: a client compiled
  from `proto/` sees the additions as unknown fields.

Either way the simulator serves gRPC server reflection (`grpc.reflection.v1alpha`, the
protocol grpcio-reflection implements) describing the contract it serves, so a client can
find the drift (`polybridge check`).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, duration_pb2, timestamp_pb2
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from bridge.sim.market import EXECUTIONS, INSTRUMENT_STATES, TRADE_CAPTURES
from polymarket.v1 import (
    dropcopy_pb2,
    enums_pb2,
    orders_pb2,
    positions_pb2,
    refdata_pb2,
    trading_pb2,
    types_pb2,
)

CONTRACTS = ("current", "newer")
SERVICE = "polymarket.v1.DropCopyAPI"

BLOCK_TRADE_INDICATOR = 17
EVENT_ATTRIBUTES = 40
CREATE_TIME = 41
UPDATE_TIME = 42

# In dependency order: a file after every file it imports.
_FILES: tuple[ModuleType, ...] = (
    timestamp_pb2,
    duration_pb2,
    enums_pb2,
    types_pb2,
    trading_pb2,
    orders_pb2,
    positions_pb2,
    refdata_pb2,
    dropcopy_pb2,
)

_F = descriptor_pb2.FieldDescriptorProto


def compiled_files() -> list[descriptor_pb2.FileDescriptorProto]:
    """The compiled contract's files (with the well-known files it imports), as protos."""
    files = []
    for module in _FILES:
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        files.append(proto)
    return files


def _message(file: descriptor_pb2.FileDescriptorProto, name: str) -> descriptor_pb2.DescriptorProto:
    (found,) = [m for m in file.message_type if m.name == name]
    return found


def _add_field(
    message: descriptor_pb2.DescriptorProto,
    name: str,
    number: int,
    type_: int,
    type_name: str = "",
) -> None:
    field = message.field.add(name=name, number=number, type=type_, label=_F.LABEL_OPTIONAL)
    field.json_name = "".join(
        part if i == 0 else part.capitalize() for i, part in enumerate(name.split("_"))
    )
    if type_name:
        field.type_name = type_name


def newer_files() -> list[descriptor_pb2.FileDescriptorProto]:
    """The newer contract: the compiled files plus the fields described in the module doc."""
    files = compiled_files()
    by_name = {f.name: f for f in files}
    trading = by_name["polymarket/v1/trading.proto"]
    _add_field(
        _message(trading, "Execution"),
        "block_trade_indicator",
        BLOCK_TRADE_INDICATOR,
        _F.TYPE_BOOL,
    )
    refdata = by_name["polymarket/v1/refdata.proto"]
    if "google/protobuf/timestamp.proto" not in refdata.dependency:
        refdata.dependency.append("google/protobuf/timestamp.proto")
    attributes = refdata.message_type.add(name="EventAttributes")
    for number, name in enumerate(("sport", "league", "event_id"), start=1):
        _add_field(attributes, name, number, _F.TYPE_STRING)
    _add_field(attributes, "provider", 4, _F.TYPE_ENUM, ".polymarket.v1.SportsDataProvider")
    instrument = _message(refdata, "Instrument")
    _add_field(
        instrument,
        "event_attributes",
        EVENT_ATTRIBUTES,
        _F.TYPE_MESSAGE,
        ".polymarket.v1.EventAttributes",
    )
    for name, number in (("create_time", CREATE_TIME), ("update_time", UPDATE_TIME)):
        _add_field(instrument, name, number, _F.TYPE_MESSAGE, ".google.protobuf.Timestamp")
    return files


def pool_of(files: Iterable[descriptor_pb2.FileDescriptorProto]) -> descriptor_pool.DescriptorPool:
    """A descriptor pool holding `files` (each after the files it imports)."""
    pool = descriptor_pool.DescriptorPool()
    for file in files:
        pool.AddSerializedFile(file.SerializeToString())
    return pool


def block_trade(execution_id: str) -> bool:
    """The newer contract's `block_trade_indicator` of an execution: true for about one in
    four, fixed per id (so a re-sent execution carries the same value)."""
    return zlib.crc32(execution_id.encode()) % 4 == 0


class Contract:
    """One contract: its descriptor pool (served by reflection) and how a generated record
    is serialized on the wire under it."""

    def __init__(self, name: str) -> None:
        if name not in CONTRACTS:
            raise ValueError(f"unknown contract {name!r}; expected one of {CONTRACTS}")
        self.name = name
        self.files = newer_files() if name == "newer" else compiled_files()
        self.pool = pool_of(self.files)
        self._created: dict[str, int] = {}
        self._extend: dict[str, Callable[[Message, int], bytes]] = {}
        if name == "newer":
            self._execution = self._class("polymarket.v1.Execution")
            self._trade = self._class("polymarket.v1.Trade")
            self._instrument = self._class("polymarket.v1.Instrument")
            self._extend = {
                EXECUTIONS: self._newer_execution,
                TRADE_CAPTURES: self._newer_trade,
                INSTRUMENT_STATES: self._newer_instrument,
            }

    def _class(self, full_name: str) -> type[Message]:
        cls: type[Message] = GetMessageClass(self.pool.FindMessageTypeByName(full_name))
        return cls

    def serialize(self, stream: str, message: Message, time_us: int) -> bytes:
        """The wire bytes of a record the market generated (a compiled-contract message)."""
        extend = self._extend.get(stream)
        if extend is None:
            return message.SerializeToString()
        return extend(message, time_us)

    def _newer_execution(self, message: Message, time_us: int) -> bytes:
        execution: Any = self._execution.FromString(message.SerializeToString())
        execution.block_trade_indicator = block_trade(execution.id)
        return bytes(execution.SerializeToString())

    def _newer_trade(self, message: Message, time_us: int) -> bytes:
        trade: Any = self._trade.FromString(message.SerializeToString())
        for side in (trade.aggressor, trade.passive):
            if side.id:
                side.block_trade_indicator = block_trade(side.id)
        return bytes(trade.SerializeToString())

    def _newer_instrument(self, message: Message, time_us: int) -> bytes:
        instrument: Any = self._instrument.FromString(message.SerializeToString())
        parts = instrument.symbol.split("-")
        attributes = instrument.event_attributes
        attributes.sport = "football" if "nfl" in parts else "event"
        attributes.league = parts[1] if len(parts) > 1 else ""
        attributes.event_id = "-".join(parts[:-1])
        attributes.provider = refdata_pb2.SPORTS_DATA_PROVIDER_SPORTRADAR
        created = self._created.setdefault(instrument.symbol, time_us)
        instrument.create_time.FromMicroseconds(created)
        instrument.update_time.FromMicroseconds(time_us)
        return bytes(instrument.SerializeToString())

    def enable_reflection(self, server: grpc.aio.Server) -> None:
        """Serve gRPC server reflection on `server`, describing this contract."""
        from grpc_reflection.v1alpha import reflection

        reflection.enable_server_reflection(
            (SERVICE, reflection.SERVICE_NAME), server, pool=self.pool
        )


__all__ = [
    "BLOCK_TRADE_INDICATOR",
    "CONTRACTS",
    "CREATE_TIME",
    "EVENT_ATTRIBUTES",
    "UPDATE_TIME",
    "Contract",
    "block_trade",
    "compiled_files",
    "newer_files",
    "pool_of",
]
