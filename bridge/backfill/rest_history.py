"""`History` implementations over the upstreams' REST history APIs.

Every History maps REST rows to the SAME Avro records the live stream's mapper writes for
its topic, through that mapper (pass the stream's own `DropCopyMapper` / `PredexonMapper`,
so topic, stream id, schema and wire-format prefix are the live ones). The bridge marks
backfilled records with a Kafka header; nothing in the value says "REST".

The clients pace themselves to the documented limits, which are per firm (exchange) and per
API key (Predexon): give every History of one firm / key the SAME client.

Cursors are opaque JSON text `{"part": i, "token": t}`: the i-th REST query of the plan (one
per symbol, account, wallet, ...) and the upstream's page token inside it. A page's cursor
is where the NEXT page starts; None after the window's last page.

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

Predexon (`/v2/polymarket/trades`, `/activity`):

- trades (the `orders` channel): subscriptions on `users` (one `wallet` query per user),
  `condition_ids` (`condition_id`) or `market_slugs` (`market_slug`), oldest first
  (`order=asc`); the wildcard `["*"]` is a query without a filter, which Predexon only
  serves newest first (`order=desc`: `asc` is HTTP 400). REST rows are confirmed fills:
  `status: "pending"` subscriptions are `Unfillable`, `all` gets the confirmed fills only.
  Whether `wallet` matches the maker only or maker and taker is not documented (the
  stream's `users` matches either).
- activity: only `users` subscriptions (the endpoint requires `wallet`).
- Row -> event: trades rows become `order_filled` events with `status` "confirmed",
  `fee_usd` -> `fee`, `exchange_version` -> `version`, `outcome_label` -> `token_label`
  and `outcome`; activity rows get `event_type` from `side` (SPLIT -> split, ...,
  CONVERT -> conversion) and `condition_id` "" -> null. Fields only REST has
  (`amount_usd`, `is_yes_side`, `shares` of activity, ...) land in the record's `extra`,
  fields only the stream has (`log_index`, `role`, `block_number`, `tokens`, ...) are null.
- IDENTITY DIFFERS from live records: REST rows have no `log_index` (nor `role`), which
  live ids are made of. Backfilled ids are
  `order_filled:confirmed-rest:<tx_hash>:<order_hash>:<fill digest>` and
  `<event_type>:rest:<tx_hash>:<row digest>`, the digest being the first 12 hex of the
  SHA-256 of the canonical JSON of the row's on-chain content (trades: token_id, side,
  shares, price, user, taker; activity: side, user, condition_id, market_slug, shares,
  index_set), so two fills of one order in one transaction stay two records (unless they
  are identical in all of these, when they cannot be told apart at all), and a re-fetch of
  the same row gives the same id. A backfilled fill never has the id of the live record
  of the same fill: dedupe across the two needs (tx_hash, order_hash).
- Time: `start_time`/`end_time` are whole seconds of unknown inclusivity: we ask for one
  second more on each side and keep the rows whose `timestamp` lies in the window.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format, timestamp_pb2

from bridge.backfill.history import Page, Unfillable, Window
from bridge.errors import MappingError
from bridge.mapping.dropcopy import DropCopyMapper
from bridge.mapping.predexon import PredexonMapper, dumps
from bridge.records import DeadLetter, Record
from bridge.sources.rest.exchange import LEDGER_MAX_PAGE_SIZE, ExchangeRestClient, RestPage
from bridge.sources.rest.http import RestError
from bridge.sources.rest.predexon import MAX_LIMIT, PredexonRestClient
from bridge.sources.rest.proto_json import parse_into
from bridge.timeutil import now_us
from polymarket.v1 import dropcopy_pb2, positions_pb2

LEDGER_START_US = int(dt.datetime(2026, 5, 1, tzinfo=dt.UTC).timestamp() * 1_000_000)
"""The ledger's history starts here (earlier times are clamped by the exchange)."""
OUT_OF_RANGE = 11

Fetch = Callable[[Mapping[str, Any], str | None], Awaitable[RestPage]]


@dataclass(frozen=True, slots=True)
class _Cursor:
    part: int
    token: str | None

    def text(self) -> str:
        return json.dumps({"part": self.part, "token": self.token}, separators=(",", ":"))

    @staticmethod
    def parse(text: str | None) -> _Cursor:
        if text is None:
            return _Cursor(0, None)
        try:
            data = json.loads(text)
            return _Cursor(int(data["part"]), data["token"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"not a REST history cursor: {text!r}") from exc


def _rfc3339(time_us: int) -> str:
    ts = timestamp_pb2.Timestamp()
    ts.FromMicroseconds(time_us)
    return ts.ToJsonString()


def _raw(row: Mapping[str, Any]) -> bytes:
    return dumps(row).encode()


async def _paginate(
    parts: Sequence[Mapping[str, Any]],
    fetch: Fetch,
    cursor: str | None,
    convert: Callable[[list[dict[str, Any]]], tuple[list[Record], list[DeadLetter]]],
) -> AsyncIterator[Page]:
    """Walk query `parts` in order, each page by page, from `cursor`."""
    at = _Cursor.parse(cursor)
    for part in range(at.part, len(parts)):
        token = at.token if part == at.part else None
        while True:
            page = await fetch(parts[part], token)
            records, dead = convert(page.rows)
            if page.next_token is not None:
                after: str | None = _Cursor(part, page.next_token).text()
            elif part + 1 < len(parts):
                after = _Cursor(part + 1, None).text()
            else:
                after = None
            yield Page(records, dead, after)
            if page.next_token is None:
                break
            token = page.next_token


def _out_of_range(exc: RestError) -> bool:
    return exc.status == 400 and exc.upstream_code in (OUT_OF_RANGE, "OUT_OF_RANGE")


# -- exchange ------------------------------------------------------------------------------


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
                    f"window starts {_rfc3339(window.from_us)}, before the configured "
                    f"REST retention ({self.retention_s:.0f} s)"
                )
        if kind == "position_changes" and window.from_us < LEDGER_START_US:
            raise Unfillable(f"the position ledger starts {_rfc3339(LEDGER_START_US)}")

    def _parts(self, window: Window) -> tuple[list[dict[str, Any]], Fetch]:
        kind = self.mapper.kind.name
        symbols: list[str] = self.symbols or [""]
        start, end = _rfc3339(window.from_us), _rfc3339(window.to_us)
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
            async for page in _paginate(parts, fetch, cursor, convert):
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
        return DeadLetter(
            raw=_raw(row),
            error=f"REST {self.mapper.kind.name} row: {exc}",
            error_type="rest_row_error",
            received_at_us=received,
            target_topic=self.mapper.topic,
        )


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


# -- Predexon ------------------------------------------------------------------------------


def _digest(values: list[Any]) -> str:
    return hashlib.sha256(dumps(values).encode()).hexdigest()[:12]


_ACTIVITY_TYPES = {"SPLIT": "split", "MERGE": "merge", "REDEEM": "redeem", "CONVERT": "conversion"}


def trade_event(row: Mapping[str, Any]) -> dict[str, Any]:
    """A REST trades row as the stream's confirmed `order_filled` event (see module doc)."""
    event: dict[str, Any] = {"event_type": "order_filled", "status": "confirmed"}
    for name, value in row.items():
        if name == "fee_usd":
            event["fee"] = value
        elif name == "exchange_version":
            event["version"] = value
        elif name == "outcome_label":
            event["token_label"] = value
            event["outcome"] = value
        else:
            event[name] = value
    return event


def activity_event(row: Mapping[str, Any]) -> dict[str, Any]:
    """A REST activity row as the stream's activity event (see module doc)."""
    side = row.get("side")
    event_type = _ACTIVITY_TYPES.get(side.upper()) if isinstance(side, str) else None
    if event_type is None:
        raise MappingError(f"activity row with unknown side {side!r}")
    event: dict[str, Any] = {"event_type": event_type}
    for name, value in row.items():
        if name == "side":
            continue
        event[name] = None if name == "condition_id" and value == "" else value
    return event


def rest_event_id(event_type: str, data: Mapping[str, Any]) -> str:
    """The identity of a REST row (see the module docstring: it differs from live ids)."""
    tx = data.get("tx_hash")
    if not isinstance(tx, str) or not tx:
        raise MappingError(f"{event_type} REST row without tx_hash")
    if event_type == "order_filled":
        content = [data.get(k) for k in ("token_id", "side", "shares", "price", "user", "taker")]
        return f"order_filled:confirmed-rest:{tx}:{data.get('order_hash')}:{_digest(content)}"
    content = [
        event_type,
        *(data.get(k) for k in ("user", "condition_id", "market_slug", "shares", "index_set")),
    ]
    return f"{event_type}:rest:{tx}:{_digest(content)}"


class _RestRowMapper(PredexonMapper):
    """The live mapper, with REST identities (REST rows have no log_index/role)."""

    def _event_id(
        self,
        event_type: str,
        data: Mapping[str, Any],
        value: Mapping[str, Any],
        subscription_id: str | None,
    ) -> str:
        return rest_event_id(event_type, data)


class PredexonHistory:
    """REST history of one Predexon subscription (`orders` or `activity` channel).

    `mapper` is the subscription's live mapper; `filters` its filters (one selector key,
    plus `status` on `orders`). Unfillable subscriptions raise `Unfillable` from `pages()`.
    """

    def __init__(
        self,
        client: PredexonRestClient,
        mapper: PredexonMapper,
        filters: Mapping[str, Any],
        *,
        limit: int = MAX_LIMIT,
    ) -> None:
        self.client = client
        self.channel = mapper.channel.name
        self.filters = dict(filters)
        self.limit = min(limit, MAX_LIMIT)
        self._mapper = _RestRowMapper(
            self.channel,
            mapper.stream_id,
            mapper.topic,
            mapper.serializer.prefix,
            mapper.filters_json,
            max_frame_bytes=mapper.max_frame_bytes,
        )

    def _queries(self) -> tuple[list[dict[str, Any]], str]:
        """(one parameter set per REST query, order), or raise Unfillable."""
        channel, filters = self.channel, self.filters
        if channel not in ("orders", "activity"):
            raise Unfillable(f"Predexon has no REST history for the {channel} channel")
        if channel == "orders" and filters.get("status", "confirmed") == "pending":
            raise Unfillable("REST trades are confirmed fills: pending fills cannot be backfilled")
        selectors = [k for k in filters if k != "status"]
        if len(selectors) != 1 or not isinstance(filters[selectors[0]], list):
            raise Unfillable(f"filters {filters} have no single selector list")
        key, values = selectors[0], filters[selectors[0]]
        if values == ["*"]:
            if channel == "activity":
                raise Unfillable("REST activity requires a wallet: a wildcard cannot be filled")
            return [{}], "desc"  # Predexon refuses order=asc without a market/wallet filter
        param = {"users": "wallet", "condition_ids": "condition_id", "market_slugs": "market_slug"}
        if channel == "activity" and key != "users":
            raise Unfillable(
                f"REST activity requires a wallet: a {key} subscription cannot be filled"
            )
        if key not in param:
            raise Unfillable(f"the REST filters cannot express a {key} subscription")
        return [{param[key]: value} for value in values], "asc"

    async def pages(self, window: Window, cursor: str | None) -> AsyncIterator[Page]:
        queries, order = self._queries()
        # Whole seconds of unknown inclusivity: ask one more on each side, filter exactly.
        start_s = -(-window.from_us // 1_000_000) - 1
        end_s = window.to_us // 1_000_000 + 1
        common = {"start_time": start_s, "end_time": end_s, "limit": self.limit, "order": order}
        parts = [q | common for q in queries]
        fetch = self.client.trades if self.channel == "orders" else self.client.activity

        def convert(rows: list[dict[str, Any]]) -> tuple[list[Record], list[DeadLetter]]:
            return self._convert(rows, window)

        async for page in _paginate(parts, fetch, cursor, convert):
            yield page

    def _convert(
        self, rows: list[dict[str, Any]], window: Window
    ) -> tuple[list[Record], list[DeadLetter]]:
        records: list[Record] = []
        dead: list[DeadLetter] = []
        received = now_us()
        mapper = self._mapper
        to_event = trade_event if self.channel == "orders" else activity_event
        for row in rows:
            try:
                record = mapper.map_event(to_event(row), received, None)
            except MappingError as exc:
                dead.append(
                    DeadLetter(
                        raw=_raw(row),
                        error=f"predexon REST {self.channel} row: {exc}",
                        error_type="rest_row_error",
                        received_at_us=received,
                        target_topic=mapper.topic,
                    )
                )
                continue
            t = record.event_time_us
            if t is not None and not window.from_us <= t <= window.to_us:
                continue
            records.append(record)
        return records, dead
