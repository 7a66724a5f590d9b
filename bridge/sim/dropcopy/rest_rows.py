"""Rendering the DropCopy simulator's journals as the rows its REST history serves.

Rows are the journal's records rendered with protobuf's JSON mapping of the compiled
contract (camelCase names, int64 strings, enum names, defaults and zero enums omitted):
under `SimConfig.contract="newer"` the added fields (e.g. the execution's
`blockTradeIndicator`) are not rendered. The trades search returns every journaled state of
a trade (NEW, CLEARED, BUSTED: one row each, as the stream sends them); whether the real
search returns only a trade's current state is not documented.

Ledger entries are derived from the position-change journal: `id` is the journal sequence,
the `*Change` fields are differences from the previous state of the same account and symbol
(from zero for the first one seen), `netPosition`/`cost`/`realized` the state after it,
`updateTime` the change time, `updateBusinessDate` its UTC date, `description` "trade" or
"bust"-free wording ("position update").

Each journal is parsed once, incrementally as it grows (`JournalRows`); rows the journal
no longer retains are dropped.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message

from bridge.sim.journal import Journal
from bridge.sim.market import EXECUTIONS, POSITION_CHANGES, TRADE_CAPTURES
from polymarket.v1 import dropcopy_pb2, enums_pb2, orders_pb2, trading_pb2


@dataclass(slots=True)
class ReportRow:
    """One journal record as REST serves it, with what searches filter on."""

    seq: int
    time_us: int
    symbol: str
    firms: tuple[str, ...]
    accounts: tuple[str, ...]
    json: dict[str, Any]
    keys: dict[str, Any]
    """Fields searches filter on (order id, trade id, execution type, ...)."""


def row_position(row: ReportRow) -> tuple[int]:
    """A row's place in its journal (rows are sorted by it; page tokens hold it)."""
    return (row.seq,)


def rfc3339(time_us: int) -> str:
    ts = timestamp_pb2.Timestamp()
    ts.FromMicroseconds(time_us)
    return ts.ToJsonString()


def account_firm(account: str) -> str:
    """`firms/<F>` of `firms/<F>/accounts/<A>`."""
    return "/".join(account.split("/", 2)[:2])


class JournalRows:
    """One stream's journal, parsed once into rows (incrementally, as it grows)."""

    def __init__(self, journal: Journal, convert: Callable[[int, int, bytes], ReportRow]) -> None:
        self._journal = journal
        self._convert = convert
        self._rows: list[ReportRow] = []
        self._last = 0

    def rows(self) -> list[ReportRow]:
        journal = self._journal
        if journal.head > self._last:
            for seq, time_us, payload in journal.records():
                if seq > self._last:
                    self._rows.append(self._convert(seq, time_us, payload))
            self._last = journal.head
        first = journal.first_retained
        if self._rows and self._rows[0].seq < first:
            self._rows = [r for r in self._rows if r.seq >= first]
        return self._rows


def execution_row(seq: int, time_us: int, payload: bytes) -> ReportRow:
    e = trading_pb2.Execution.FromString(payload)
    keys = {
        "orderId": e.order.id,
        "clordId": e.order.clord_id,
        "parentOrderId": e.order.parent_order_id,
        "execId": e.id,
        "type": enums_pb2.ExecutionType.Name(e.type),
        "clientAccountId": e.order.client_account_id,
        "clientParticipantId": e.order.client_participant_id,
    }
    account = e.order.account
    firms = (account_firm(account),)
    return ReportRow(seq, time_us, e.order.symbol, firms, (account,), _to_json(e), keys)


def trade_row(seq: int, time_us: int, payload: bytes) -> ReportRow:
    t = orders_pb2.Trade.FromString(payload)
    accounts = (t.aggressor.order.account, t.passive.order.account)
    keys = {
        "orderIds": {t.aggressor.order.id, t.passive.order.id},
        "execIds": {t.aggressor.id, t.passive.id},
        "tradeId": t.id,
        "state": enums_pb2.TradeState.Name(t.state),
        "tradeLinkId": t.trade_link_id,
    }
    firms = tuple(dict.fromkeys(account_firm(a) for a in accounts))
    return ReportRow(seq, time_us, t.aggressor.order.symbol, firms, accounts, _to_json(t), keys)


class LedgerRows:
    """Position changes as ledger entries; remembers each account and symbol's previous
    state (the `*Change` fields are differences from it)."""

    def __init__(self) -> None:
        self._prev_state: dict[tuple[str, str], tuple[int, int, int]] = {}

    def __call__(self, seq: int, time_us: int, payload: bytes) -> ReportRow:
        c = dropcopy_pb2.PositionChange.FromString(payload)
        p = c.position
        key = (p.account, p.symbol)
        net0, cost0, realized0 = self._prev_state.get(key, (0, 0, 0))
        self._prev_state[key] = (p.net_position, p.cost, p.realized)
        update_us = c.change_time.ToMicroseconds() if c.HasField("change_time") else time_us
        entry = {
            "id": str(seq),
            "account": p.account,
            "symbol": p.symbol,
            "quantityChange": str(p.net_position - net0),
            "costChange": str(p.cost - cost0),
            "realizedChange": str(p.realized - realized0),
            "netPosition": str(p.net_position),
            "cost": str(p.cost),
            "realized": str(p.realized),
            "updateTime": rfc3339(update_us),
            "updateBusinessDate": dt.datetime.fromtimestamp(update_us / 1e6, dt.UTC)
            .date()
            .isoformat(),
            "description": "position update",
        }
        firms = (account_firm(p.account),)
        return ReportRow(seq, update_us, p.symbol, firms, (p.account,), entry, {})


def report_rows(journals: dict[str, Journal]) -> dict[str, JournalRows]:
    """The REST rows of the executions, trade captures and position changes journals."""
    return {
        EXECUTIONS: JournalRows(journals[EXECUTIONS], execution_row),
        TRADE_CAPTURES: JournalRows(journals[TRADE_CAPTURES], trade_row),
        POSITION_CHANGES: JournalRows(journals[POSITION_CHANGES], LedgerRows()),
    }


def _to_json(message: Message) -> dict[str, Any]:
    # The exchange's JSON mapping: camelCase names, int64 strings, enum names, defaults
    # (zero enums included) omitted.
    return json_format.MessageToDict(message)
