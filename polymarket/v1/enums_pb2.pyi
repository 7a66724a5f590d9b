from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor

class Side(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SIDE_UNDEFINED: _ClassVar[Side]
    SIDE_BUY: _ClassVar[Side]
    SIDE_SELL: _ClassVar[Side]

class OrderType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ORDER_TYPE_UNDEFINED: _ClassVar[OrderType]
    ORDER_TYPE_MARKET_TO_LIMIT: _ClassVar[OrderType]
    ORDER_TYPE_LIMIT: _ClassVar[OrderType]
    ORDER_TYPE_STOP: _ClassVar[OrderType]
    ORDER_TYPE_STOP_LIMIT: _ClassVar[OrderType]

class TimeInForce(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TIME_IN_FORCE_UNDEFINED: _ClassVar[TimeInForce]
    TIME_IN_FORCE_DAY: _ClassVar[TimeInForce]
    TIME_IN_FORCE_GOOD_TILL_CANCEL: _ClassVar[TimeInForce]
    TIME_IN_FORCE_IMMEDIATE_OR_CANCEL: _ClassVar[TimeInForce]
    TIME_IN_FORCE_GOOD_TILL_TIME: _ClassVar[TimeInForce]
    TIME_IN_FORCE_FILL_OR_KILL: _ClassVar[TimeInForce]

class CrossType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CROSS_TYPE_UNDEFINED: _ClassVar[CrossType]
    CROSS_TYPE_ALL_OR_NONE: _ClassVar[CrossType]

class OrderState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ORDER_STATE_NEW: _ClassVar[OrderState]
    ORDER_STATE_PARTIALLY_FILLED: _ClassVar[OrderState]
    ORDER_STATE_FILLED: _ClassVar[OrderState]
    ORDER_STATE_CANCELED: _ClassVar[OrderState]
    ORDER_STATE_REPLACED: _ClassVar[OrderState]
    ORDER_STATE_REJECTED: _ClassVar[OrderState]
    ORDER_STATE_EXPIRED: _ClassVar[OrderState]
    ORDER_STATE_PENDING_NEW: _ClassVar[OrderState]
    ORDER_STATE_PENDING_REPLACE: _ClassVar[OrderState]
    ORDER_STATE_PENDING_CANCEL: _ClassVar[OrderState]
    ORDER_STATE_PENDING_RISK: _ClassVar[OrderState]

class ExecutionType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXECUTION_TYPE_NEW: _ClassVar[ExecutionType]
    EXECUTION_TYPE_PARTIAL_FILL: _ClassVar[ExecutionType]
    EXECUTION_TYPE_FILL: _ClassVar[ExecutionType]
    EXECUTION_TYPE_CANCELED: _ClassVar[ExecutionType]
    EXECUTION_TYPE_REPLACE: _ClassVar[ExecutionType]
    EXECUTION_TYPE_REJECTED: _ClassVar[ExecutionType]
    EXECUTION_TYPE_EXPIRED: _ClassVar[ExecutionType]
    EXECUTION_TYPE_DONE_FOR_DAY: _ClassVar[ExecutionType]

class OrdRejectReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ORD_REJECT_REASON_EXCHANGE_OPTION: _ClassVar[OrdRejectReason]
    ORD_REJECT_REASON_UNKNOWN_SYMBOL: _ClassVar[OrdRejectReason]
    ORD_REJECT_REASON_EXCHANGE_CLOSED: _ClassVar[OrdRejectReason]
    ORD_REJECT_REASON_INCORRECT_QUANTITY: _ClassVar[OrdRejectReason]
    ORD_REJECT_REASON_INVALID_PRICE_INCREMENT: _ClassVar[OrdRejectReason]
    ORD_REJECT_REASON_INCORRECT_ORDER_TYPE: _ClassVar[OrdRejectReason]
    ORD_REJECT_REASON_PRICE_OUT_OF_BOUNDS: _ClassVar[OrdRejectReason]
    ORD_REJECT_REASON_NO_LIQUIDITY: _ClassVar[OrdRejectReason]

class CxlRejReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CXL_REJ_REASON_EXCHANGE_OPTION: _ClassVar[CxlRejReason]
    CXL_REJ_REASON_UNKNOWN_ORDER: _ClassVar[CxlRejReason]
    CXL_REJ_REASON_EXCHANGE_CLOSED: _ClassVar[CxlRejReason]
    CXL_REJ_REASON_INCORRECT_QUANTITY: _ClassVar[CxlRejReason]
    CXL_REJ_REASON_INVALID_PRICE_INCREMENT: _ClassVar[CxlRejReason]
    CXL_REJ_REASON_PRICE_OUT_OF_BOUNDS: _ClassVar[CxlRejReason]

class UnsolicitedCxlReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UNSOLICITED_CXL_REASON_UNDEFINED: _ClassVar[UnsolicitedCxlReason]
    UNSOLICITED_CXL_REASON_CONNECTION_LOSS: _ClassVar[UnsolicitedCxlReason]
    UNSOLICITED_CXL_REASON_LOGOUT: _ClassVar[UnsolicitedCxlReason]
    UNSOLICITED_CXL_REASON_EXCHANGE_OPTION: _ClassVar[UnsolicitedCxlReason]
    UNSOLICITED_CXL_REASON_OTHER: _ClassVar[UnsolicitedCxlReason]

class ConditionTriggerMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONDITION_TRIGGER_METHOD_UNDEFINED: _ClassVar[ConditionTriggerMethod]
    CONDITION_TRIGGER_METHOD_LAST_PRICE: _ClassVar[ConditionTriggerMethod]
    CONDITION_TRIGGER_METHOD_SETTLEMENT_PRICE: _ClassVar[ConditionTriggerMethod]

class SelfMatchPreventionInstruction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SELF_MATCH_PREVENTION_INSTRUCTION_UNDEFINED: _ClassVar[SelfMatchPreventionInstruction]
    SELF_MATCH_PREVENTION_INSTRUCTION_REJECT_AGGRESSOR: _ClassVar[SelfMatchPreventionInstruction]
    SELF_MATCH_PREVENTION_INSTRUCTION_CANCEL_RESTING: _ClassVar[SelfMatchPreventionInstruction]
    SELF_MATCH_PREVENTION_INSTRUCTION_REMOVE_BOTH: _ClassVar[SelfMatchPreventionInstruction]

class OrderCapacity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ORDER_CAPACITY_UNDEFINED: _ClassVar[OrderCapacity]
    ORDER_CAPACITY_AGENCY: _ClassVar[OrderCapacity]
    ORDER_CAPACITY_PRINCIPAL: _ClassVar[OrderCapacity]
    ORDER_CAPACITY_PROPRIETARY: _ClassVar[OrderCapacity]
    ORDER_CAPACITY_INDIVIDUAL: _ClassVar[OrderCapacity]
    ORDER_CAPACITY_RISKLESS_PRINCIPAL: _ClassVar[OrderCapacity]
    ORDER_CAPACITY_AGENT_FOR_OTHER_MEMBER: _ClassVar[OrderCapacity]

class ManualOrderIndicator(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MANUAL_ORDER_INDICATOR_UNDEFINED: _ClassVar[ManualOrderIndicator]
    MANUAL_ORDER_INDICATOR_MANUAL: _ClassVar[ManualOrderIndicator]
    MANUAL_ORDER_INDICATOR_AUTOMATED: _ClassVar[ManualOrderIndicator]

class OrderStateFilter(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ORDER_STATE_FILTER_UNDEFINED: _ClassVar[OrderStateFilter]
    ORDER_STATE_FILTER_OPEN: _ClassVar[OrderStateFilter]
    ORDER_STATE_FILTER_CLOSED: _ClassVar[OrderStateFilter]
    ORDER_STATE_FILTER_NEW: _ClassVar[OrderStateFilter]
    ORDER_STATE_FILTER_PARTIALLY_FILLED: _ClassVar[OrderStateFilter]
    ORDER_STATE_FILTER_FILLED: _ClassVar[OrderStateFilter]
    ORDER_STATE_FILTER_CANCELED: _ClassVar[OrderStateFilter]
    ORDER_STATE_FILTER_REPLACED: _ClassVar[OrderStateFilter]
    ORDER_STATE_FILTER_REJECTED: _ClassVar[OrderStateFilter]
    ORDER_STATE_FILTER_EXPIRED: _ClassVar[OrderStateFilter]
    ORDER_STATE_FILTER_PENDING_RISK: _ClassVar[OrderStateFilter]

class TradeType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRADE_TYPE_UNDEFINED: _ClassVar[TradeType]
    TRADE_TYPE_REGULAR: _ClassVar[TradeType]
    TRADE_TYPE_REQUEST_FOR_QUOTE: _ClassVar[TradeType]
    TRADE_TYPE_BLOCK: _ClassVar[TradeType]
    TRADE_TYPE_CROSS: _ClassVar[TradeType]

class TradeState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRADE_STATE_UNDEFINED: _ClassVar[TradeState]
    TRADE_STATE_NEW: _ClassVar[TradeState]
    TRADE_STATE_CLEARED: _ClassVar[TradeState]
    TRADE_STATE_BUSTED: _ClassVar[TradeState]
    TRADE_STATE_INFLIGHT: _ClassVar[TradeState]
    TRADE_STATE_PENDING_RISK: _ClassVar[TradeState]
    TRADE_STATE_PENDING_CLEARED: _ClassVar[TradeState]
    TRADE_STATE_REJECTED: _ClassVar[TradeState]
    TRADE_STATE_CLEARING_ACKNOWLEDGED: _ClassVar[TradeState]
    TRADE_STATE_RETRY_REQUEST: _ClassVar[TradeState]
SIDE_UNDEFINED: Side
SIDE_BUY: Side
SIDE_SELL: Side
ORDER_TYPE_UNDEFINED: OrderType
ORDER_TYPE_MARKET_TO_LIMIT: OrderType
ORDER_TYPE_LIMIT: OrderType
ORDER_TYPE_STOP: OrderType
ORDER_TYPE_STOP_LIMIT: OrderType
TIME_IN_FORCE_UNDEFINED: TimeInForce
TIME_IN_FORCE_DAY: TimeInForce
TIME_IN_FORCE_GOOD_TILL_CANCEL: TimeInForce
TIME_IN_FORCE_IMMEDIATE_OR_CANCEL: TimeInForce
TIME_IN_FORCE_GOOD_TILL_TIME: TimeInForce
TIME_IN_FORCE_FILL_OR_KILL: TimeInForce
CROSS_TYPE_UNDEFINED: CrossType
CROSS_TYPE_ALL_OR_NONE: CrossType
ORDER_STATE_NEW: OrderState
ORDER_STATE_PARTIALLY_FILLED: OrderState
ORDER_STATE_FILLED: OrderState
ORDER_STATE_CANCELED: OrderState
ORDER_STATE_REPLACED: OrderState
ORDER_STATE_REJECTED: OrderState
ORDER_STATE_EXPIRED: OrderState
ORDER_STATE_PENDING_NEW: OrderState
ORDER_STATE_PENDING_REPLACE: OrderState
ORDER_STATE_PENDING_CANCEL: OrderState
ORDER_STATE_PENDING_RISK: OrderState
EXECUTION_TYPE_NEW: ExecutionType
EXECUTION_TYPE_PARTIAL_FILL: ExecutionType
EXECUTION_TYPE_FILL: ExecutionType
EXECUTION_TYPE_CANCELED: ExecutionType
EXECUTION_TYPE_REPLACE: ExecutionType
EXECUTION_TYPE_REJECTED: ExecutionType
EXECUTION_TYPE_EXPIRED: ExecutionType
EXECUTION_TYPE_DONE_FOR_DAY: ExecutionType
ORD_REJECT_REASON_EXCHANGE_OPTION: OrdRejectReason
ORD_REJECT_REASON_UNKNOWN_SYMBOL: OrdRejectReason
ORD_REJECT_REASON_EXCHANGE_CLOSED: OrdRejectReason
ORD_REJECT_REASON_INCORRECT_QUANTITY: OrdRejectReason
ORD_REJECT_REASON_INVALID_PRICE_INCREMENT: OrdRejectReason
ORD_REJECT_REASON_INCORRECT_ORDER_TYPE: OrdRejectReason
ORD_REJECT_REASON_PRICE_OUT_OF_BOUNDS: OrdRejectReason
ORD_REJECT_REASON_NO_LIQUIDITY: OrdRejectReason
CXL_REJ_REASON_EXCHANGE_OPTION: CxlRejReason
CXL_REJ_REASON_UNKNOWN_ORDER: CxlRejReason
CXL_REJ_REASON_EXCHANGE_CLOSED: CxlRejReason
CXL_REJ_REASON_INCORRECT_QUANTITY: CxlRejReason
CXL_REJ_REASON_INVALID_PRICE_INCREMENT: CxlRejReason
CXL_REJ_REASON_PRICE_OUT_OF_BOUNDS: CxlRejReason
UNSOLICITED_CXL_REASON_UNDEFINED: UnsolicitedCxlReason
UNSOLICITED_CXL_REASON_CONNECTION_LOSS: UnsolicitedCxlReason
UNSOLICITED_CXL_REASON_LOGOUT: UnsolicitedCxlReason
UNSOLICITED_CXL_REASON_EXCHANGE_OPTION: UnsolicitedCxlReason
UNSOLICITED_CXL_REASON_OTHER: UnsolicitedCxlReason
CONDITION_TRIGGER_METHOD_UNDEFINED: ConditionTriggerMethod
CONDITION_TRIGGER_METHOD_LAST_PRICE: ConditionTriggerMethod
CONDITION_TRIGGER_METHOD_SETTLEMENT_PRICE: ConditionTriggerMethod
SELF_MATCH_PREVENTION_INSTRUCTION_UNDEFINED: SelfMatchPreventionInstruction
SELF_MATCH_PREVENTION_INSTRUCTION_REJECT_AGGRESSOR: SelfMatchPreventionInstruction
SELF_MATCH_PREVENTION_INSTRUCTION_CANCEL_RESTING: SelfMatchPreventionInstruction
SELF_MATCH_PREVENTION_INSTRUCTION_REMOVE_BOTH: SelfMatchPreventionInstruction
ORDER_CAPACITY_UNDEFINED: OrderCapacity
ORDER_CAPACITY_AGENCY: OrderCapacity
ORDER_CAPACITY_PRINCIPAL: OrderCapacity
ORDER_CAPACITY_PROPRIETARY: OrderCapacity
ORDER_CAPACITY_INDIVIDUAL: OrderCapacity
ORDER_CAPACITY_RISKLESS_PRINCIPAL: OrderCapacity
ORDER_CAPACITY_AGENT_FOR_OTHER_MEMBER: OrderCapacity
MANUAL_ORDER_INDICATOR_UNDEFINED: ManualOrderIndicator
MANUAL_ORDER_INDICATOR_MANUAL: ManualOrderIndicator
MANUAL_ORDER_INDICATOR_AUTOMATED: ManualOrderIndicator
ORDER_STATE_FILTER_UNDEFINED: OrderStateFilter
ORDER_STATE_FILTER_OPEN: OrderStateFilter
ORDER_STATE_FILTER_CLOSED: OrderStateFilter
ORDER_STATE_FILTER_NEW: OrderStateFilter
ORDER_STATE_FILTER_PARTIALLY_FILLED: OrderStateFilter
ORDER_STATE_FILTER_FILLED: OrderStateFilter
ORDER_STATE_FILTER_CANCELED: OrderStateFilter
ORDER_STATE_FILTER_REPLACED: OrderStateFilter
ORDER_STATE_FILTER_REJECTED: OrderStateFilter
ORDER_STATE_FILTER_EXPIRED: OrderStateFilter
ORDER_STATE_FILTER_PENDING_RISK: OrderStateFilter
TRADE_TYPE_UNDEFINED: TradeType
TRADE_TYPE_REGULAR: TradeType
TRADE_TYPE_REQUEST_FOR_QUOTE: TradeType
TRADE_TYPE_BLOCK: TradeType
TRADE_TYPE_CROSS: TradeType
TRADE_STATE_UNDEFINED: TradeState
TRADE_STATE_NEW: TradeState
TRADE_STATE_CLEARED: TradeState
TRADE_STATE_BUSTED: TradeState
TRADE_STATE_INFLIGHT: TradeState
TRADE_STATE_PENDING_RISK: TradeState
TRADE_STATE_PENDING_CLEARED: TradeState
TRADE_STATE_REJECTED: TradeState
TRADE_STATE_CLEARING_ACKNOWLEDGED: TradeState
TRADE_STATE_RETRY_REQUEST: TradeState
