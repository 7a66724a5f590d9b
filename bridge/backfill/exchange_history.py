"""`History` over the exchange's REST history (Report API searches, position ledger).

Every History maps REST rows to the SAME Avro records the live stream's mapper writes for
its topic, through that mapper (pass the stream's own `DropCopyMapper`, so topic, stream
id, schema and wire-format prefix are the live ones). The bridge marks backfilled records
with a Kafka header; nothing in the value says "REST". The client paces itself to the
documented limits, which are per firm: give every History of one firm the SAME client.
Queries are walked by `bridge.backfill.rest_paging` (its cursors).

Exchange (Report API, position ledger):

- executions: `POST /v1/report/executions/search`, one query per subscribed symbol (the
  search takes one `symbol`; none = all). Rows are parsed by `proto_json.parse_into`
  (protobuf's JSON mapping: camelCase or snake_case, int64 strings, enum names, omitted
  zero enums = 0; an unknown enum name makes the row a dead letter) into `Execution` and
  mapped by `DropCopyMapper`: event id `Execution.id`, key, event time and
  value exactly as live. JSON fields the compiled contract does not know (e.g.
  `blockTradeIndicator`, which has no published field number) are dropped: a live record
  keeps them in `unknown_fields`, a backfilled one cannot.
- trade captures: `POST /v1/report/trades/search` (rows under `trade`); event id
  `"{id}|{state}"` as live. Whether the search returns every state a trade went through
  (NEW, then CLEARED, ...) or only its current one is not documented: intermediate states
  the stream would have sent may not be recoverable.
- position changes: `GET /v1/positions/ledger`, one query per configured account (the
  ledger requires `account`) and symbol. An entry becomes a `PositionChange` with position
  = {account, symbol, net_position = netPosition, cost, realized, update_time =
  updateTime} and change_time = updateTime; event id `"{account}|{symbol}|{change_time
  us}"` as live. The ledger lacks `qty_bought`, `qty_sold`, `bod_position` and `expired`:
  the Avro schema has no null for them, so they are written as 0 / false.
- instrument states: no history endpoint: `Unfillable`.
- REST searches have no `firms` filter: they return the caller's firm (of
  `x-participant-id`). A stream subscribed to other firms cannot be filled: `Unfillable`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from google.protobuf import json_format

from bridge.backfill.history import Page, Unfillable, Window
from bridge.backfill.rest_paging import Fetch, paginate, rfc3339, row_dead_letter
from bridge.mapping.dropcopy import DropCopyMapper
from bridge.records import DeadLetter, Record
from bridge.sources.rest.exchange import LEDGER_MAX_PAGE_SIZE, ExchangeRestClient
from bridge.sources.rest.http import RestError
from bridge.sources.rest.proto_json import parse_into
from bridge.timeutil import now_us
from polymarket.v1 import dropcopy_pb2, positions_pb2

LEDGER_START_US = int(dt.datetime(2026, 5, 1, tzinfo=dt.UTC).timestamp() * 1_000_000)
"""The ledger's history starts here (earlier times are clamped by the exchange)."""
OUT_OF_RANGE = 11


def _out_of_range(exc: RestError) -> bool:
    return exc.status == 400 and exc.upstream_code in (OUT_OF_RANGE, "OUT_OF_RANGE")


class ExchangeHistory:
    """REST history of one DropCopy stream (executions, trade captures, position changes).

    `mapper` is the stream's live mapper; `symbols` and `firms` its subscription;
    `participant_id` the `x-participant-id` the client sends (its firm is the only one REST
    serves); `accounts` the firm's accounts (required for position changes: the ledger is
    per account). `retention_s`: windows starting longer ago than this are `Unfillable`
    (the exchange publishes no retention; None: ask anyway).
    """

    def __init__(
        self,
        client: ExchangeRestClient,
        mapper: DropCopyMapper,
        *,
        participant_id: str,
        symbols: Sequence[str] = (),
        firms: Sequence[str] = (),
        accounts: Sequence[str] = (),
        page_size: int = 1000,
        retention_s: float | None = None,
        clock: Callable[[], int] = now_us,
    ) -> None:
        self.client = client
        self.mapper = mapper
        self.participant_id = participant_id
        self.symbols = list(symbols)
        self.firms = list(firms)
        self.accounts = list(accounts)
        self.page_size = page_size
        self.retention_s = retention_s
        self._clock = clock

    def _check(self, window: Window) -> None:
        kind = self.mapper.kind.name
        if kind == "instrument_states":
            raise Unfillable("the exchange has no REST history of instrument state changes")
        own = "/".join(self.participant_id.split("/", 2)[:2])
        if any(firm != own for firm in self.firms):
            raise Unfillable(
                f"REST searches have no firms filter and serve only {own} "
                f"(the x-participant-id's firm); the stream subscribes {self.firms}"
            )
        if kind == "position_changes" and not self.accounts:
            raise Unfillable("the position ledger is per account and no accounts are configured")
        if self.retention_s is not None:
            horizon = self._clock() - int(self.retention_s * 1_000_000)
            if window.from_us < horizon:
                raise Unfillable(
                    f"window starts {rfc3339(window.from_us)}, before the configured "
                    f"REST retention ({self.retention_s:.0f} s)"
                )
        if kind == "position_changes" and window.from_us < LEDGER_START_US:
            raise Unfillable(f"the position ledger starts {rfc3339(LEDGER_START_US)}")

    def _parts(self, window: Window) -> tuple[list[dict[str, Any]], Fetch]:
        kind = self.mapper.kind.name
        symbols: list[str] = self.symbols or [""]
        start, end = rfc3339(window.from_us), rfc3339(window.to_us)
        if kind == "position_changes":
            size = min(self.page_size, LEDGER_MAX_PAGE_SIZE)
            parts = [
                {"account": account, "startTime": start, "endTime": end, "pageSize": size}
                | ({"symbol": symbol} if symbol else {})
                for account in self.accounts
                for symbol in symbols
            ]
            return parts, self.client.ledger
        parts = [
            {"startTime": start, "endTime": end, "pageSize": self.page_size}
            | ({"symbol": symbol} if symbol else {})
            for symbol in symbols
        ]
        if kind == "executions":
            return parts, self.client.search_executions
        return parts, self.client.search_trades

    async def pages(self, window: Window, cursor: str | None) -> AsyncIterator[Page]:
        self._check(window)
        parts, fetch = self._parts(window)
        convert = self._ledger_rows if self.mapper.kind.name == "position_changes" else self._rows
        try:
            async for page in paginate(parts, fetch, cursor, convert):
                yield page
        except RestError as exc:
            if _out_of_range(exc):
                raise Unfillable(f"the exchange refused the window: {exc}") from exc
            raise

    def _rows(self, rows: list[dict[str, Any]]) -> tuple[list[Record], list[DeadLetter]]:
        """Execution / Trade JSON rows -> the live mapper's records."""
        kind = self.mapper.kind
        response = kind.response_type()
        items = getattr(response, kind.list_field)
        dead: list[DeadLetter] = []
        received = now_us()
        for row in rows:
            try:
                parse_into(row, items.add())
            except (TypeError, ValueError) as exc:
                del items[-1]
                dead.append(self._dead(row, exc, received))
        records, failed = self.mapper.map_response(response, received)
        return records, dead + failed

    def _ledger_rows(self, rows: list[dict[str, Any]]) -> tuple[list[Record], list[DeadLetter]]:
        response = dropcopy_pb2.CreatePositionChangeSubscriptionResponse()
        dead: list[DeadLetter] = []
        received = now_us()
        for row in rows:
            try:
                change = position_change(row)
            except (json_format.ParseError, TypeError, ValueError, KeyError) as exc:
                dead.append(self._dead(row, exc, received))
                continue
            response.position_changes.append(change)
        records, failed = self.mapper.map_response(response, received)
        return records, dead + failed

    def _dead(self, row: Mapping[str, Any], exc: Exception, received: int) -> DeadLetter:
        error = f"REST {self.mapper.kind.name} row: {exc}"
        return row_dead_letter(row, error, received, self.mapper.topic)


def _int64(row: Mapping[str, Any], *names: str) -> int:
    for name in names:
        value = row.get(name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int | str):
                raise ValueError(f"{name} is not an int64")
            return int(value)
    return 0


def position_change(entry: Mapping[str, Any]) -> dropcopy_pb2.PositionChange:
    """A ledger entry (camelCase or snake_case) as the `PositionChange` the stream sends:
    position {account, symbol, net_position, cost, realized, update_time}, change_time =
    update_time; qty_bought, qty_sold, bod_position and expired are not in the ledger."""
    account = entry.get("account")
    symbol = entry.get("symbol")
    if not isinstance(account, str) or not isinstance(symbol, str):
        raise ValueError("ledger entry without account/symbol")
    change = dropcopy_pb2.PositionChange(
        position=positions_pb2.Position(
            account=account,
            symbol=symbol,
            net_position=_int64(entry, "netPosition", "net_position"),
            cost=_int64(entry, "cost"),
            realized=_int64(entry, "realized"),
        )
    )
    when = entry.get("updateTime", entry.get("update_time"))
    if when:
        if not isinstance(when, str):
            raise ValueError("updateTime is not an RFC 3339 string")
        change.position.update_time.FromJsonString(when)
        change.change_time.CopyFrom(change.position.update_time)
    return change
