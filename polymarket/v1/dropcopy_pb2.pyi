import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from polymarket.v1 import orders_pb2 as _orders_pb2
from polymarket.v1 import positions_pb2 as _positions_pb2
from polymarket.v1 import refdata_pb2 as _refdata_pb2
from polymarket.v1 import trading_pb2 as _trading_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateDropCopySubscriptionRequest(_message.Message):
    __slots__ = ("resume_token", "resume_time", "symbols", "firms")
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    RESUME_TIME_FIELD_NUMBER: _ClassVar[int]
    SYMBOLS_FIELD_NUMBER: _ClassVar[int]
    FIRMS_FIELD_NUMBER: _ClassVar[int]
    resume_token: bytes
    resume_time: _timestamp_pb2.Timestamp
    symbols: _containers.RepeatedScalarFieldContainer[str]
    firms: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, resume_token: _Optional[bytes] = ..., resume_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., symbols: _Optional[_Iterable[str]] = ..., firms: _Optional[_Iterable[str]] = ...) -> None: ...

class CreateDropCopySubscriptionResponse(_message.Message):
    __slots__ = ("resume_token", "executions")
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXECUTIONS_FIELD_NUMBER: _ClassVar[int]
    resume_token: bytes
    executions: _containers.RepeatedCompositeFieldContainer[_trading_pb2.Execution]
    def __init__(self, resume_token: _Optional[bytes] = ..., executions: _Optional[_Iterable[_Union[_trading_pb2.Execution, _Mapping]]] = ...) -> None: ...

class CreateTradeCaptureReportSubscriptionRequest(_message.Message):
    __slots__ = ("resume_token", "resume_time", "symbols", "firms")
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    RESUME_TIME_FIELD_NUMBER: _ClassVar[int]
    SYMBOLS_FIELD_NUMBER: _ClassVar[int]
    FIRMS_FIELD_NUMBER: _ClassVar[int]
    resume_token: bytes
    resume_time: _timestamp_pb2.Timestamp
    symbols: _containers.RepeatedScalarFieldContainer[str]
    firms: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, resume_token: _Optional[bytes] = ..., resume_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., symbols: _Optional[_Iterable[str]] = ..., firms: _Optional[_Iterable[str]] = ...) -> None: ...

class CreateTradeCaptureReportSubscriptionResponse(_message.Message):
    __slots__ = ("resume_token", "trade_capture_reports")
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TRADE_CAPTURE_REPORTS_FIELD_NUMBER: _ClassVar[int]
    resume_token: bytes
    trade_capture_reports: _containers.RepeatedCompositeFieldContainer[_orders_pb2.Trade]
    def __init__(self, resume_token: _Optional[bytes] = ..., trade_capture_reports: _Optional[_Iterable[_Union[_orders_pb2.Trade, _Mapping]]] = ...) -> None: ...

class CreateInstrumentStateChangeSubscriptionRequest(_message.Message):
    __slots__ = ("resume_token", "resume_time", "symbols", "slow_consumer_skip_to_head")
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    RESUME_TIME_FIELD_NUMBER: _ClassVar[int]
    SYMBOLS_FIELD_NUMBER: _ClassVar[int]
    SLOW_CONSUMER_SKIP_TO_HEAD_FIELD_NUMBER: _ClassVar[int]
    resume_token: bytes
    resume_time: _timestamp_pb2.Timestamp
    symbols: _containers.RepeatedScalarFieldContainer[str]
    slow_consumer_skip_to_head: bool
    def __init__(self, resume_token: _Optional[bytes] = ..., resume_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., symbols: _Optional[_Iterable[str]] = ..., slow_consumer_skip_to_head: _Optional[bool] = ...) -> None: ...

class CreateInstrumentStateChangeSubscriptionResponse(_message.Message):
    __slots__ = ("resume_token", "instruments")
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    INSTRUMENTS_FIELD_NUMBER: _ClassVar[int]
    resume_token: bytes
    instruments: _containers.RepeatedCompositeFieldContainer[_refdata_pb2.Instrument]
    def __init__(self, resume_token: _Optional[bytes] = ..., instruments: _Optional[_Iterable[_Union[_refdata_pb2.Instrument, _Mapping]]] = ...) -> None: ...

class CreatePositionChangeSubscriptionRequest(_message.Message):
    __slots__ = ("resume_token", "resume_time", "symbols", "firms")
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    RESUME_TIME_FIELD_NUMBER: _ClassVar[int]
    SYMBOLS_FIELD_NUMBER: _ClassVar[int]
    FIRMS_FIELD_NUMBER: _ClassVar[int]
    resume_token: bytes
    resume_time: _timestamp_pb2.Timestamp
    symbols: _containers.RepeatedScalarFieldContainer[str]
    firms: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, resume_token: _Optional[bytes] = ..., resume_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., symbols: _Optional[_Iterable[str]] = ..., firms: _Optional[_Iterable[str]] = ...) -> None: ...

class CreatePositionChangeSubscriptionResponse(_message.Message):
    __slots__ = ("resume_token", "position_changes")
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    POSITION_CHANGES_FIELD_NUMBER: _ClassVar[int]
    resume_token: bytes
    position_changes: _containers.RepeatedCompositeFieldContainer[PositionChange]
    def __init__(self, resume_token: _Optional[bytes] = ..., position_changes: _Optional[_Iterable[_Union[PositionChange, _Mapping]]] = ...) -> None: ...

class PositionChange(_message.Message):
    __slots__ = ("position", "change_time")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    CHANGE_TIME_FIELD_NUMBER: _ClassVar[int]
    position: _positions_pb2.Position
    change_time: _timestamp_pb2.Timestamp
    def __init__(self, position: _Optional[_Union[_positions_pb2.Position, _Mapping]] = ..., change_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
