"""`History` over Predexon's REST history (`/v2/polymarket/trades`, `/activity`).

Every History maps REST rows to the SAME Avro records the live stream's mapper writes for
its topic, through that mapper (pass the subscription's own `PredexonMapper`, so topic,
stream id, schema and wire-format prefix are the live ones), with REST identities (below).
The bridge marks backfilled records with a Kafka header; nothing in the value says "REST".
The client paces itself to the plan's rate, which is per API key: give every History of
one key the SAME client. Queries are walked by `bridge.backfill.rest_paging` (its cursors).

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
- Time: `timestamp` is a whole second, and for a fill the block time, which precedes the
  fill's arrival on the stream. So a window is asked for from `lookback_s` (and one
  second) before its start, and only once it ended `rest_lag_s` ago (REST lags the
  chain); what the stream wrote meanwhile is dropped as already in Kafka.
  `start_time`/`end_time` are of unknown inclusivity: we ask for one second more on each
  side and keep the rows whose `timestamp` may lie in the widened window.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

from bridge.backfill.history import Page, Unfillable, Window
from bridge.backfill.rest_paging import paginate, row_dead_letter
from bridge.errors import MappingError
from bridge.mapping.predexon import PredexonMapper
from bridge.records import DeadLetter, Record
from bridge.serde.exact_json import dumps
from bridge.sources.rest.predexon import MAX_LIMIT, PredexonRestClient
from bridge.timeutil import now_us


def _digest(values: list[Any]) -> str:
    return hashlib.sha256(dumps(values).encode()).hexdigest()[:12]


_SECOND_US = 1_000_000

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
        lookback_s: float = 0.0,
        rest_lag_s: float = 0.0,
    ) -> None:
        self.client = client
        self.lookback_us = int(lookback_s * 1_000_000)
        """Rows this much older than a window's start are asked for too: a fill's
        `timestamp` is its block time, earlier than its arrival on the stream."""
        self.rest_lag_us = int(rest_lag_s * 1_000_000)
        """A window is asked for only this long after its end: REST lags the chain."""
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
        settled_in_s = (window.to_us + self.rest_lag_us - now_us()) / 1_000_000
        if settled_in_s > 0:
            await asyncio.sleep(settled_in_s)
        # A row's second may have begun before the window's start; seconds are of unknown
        # inclusivity: ask one more on each side, then keep the rows that may lie inside.
        window = Window(window.from_us - self.lookback_us - (_SECOND_US - 1), window.to_us)
        start_s = -(-window.from_us // 1_000_000) - 1
        end_s = window.to_us // 1_000_000 + 1
        common = {"start_time": start_s, "end_time": end_s, "limit": self.limit, "order": order}
        parts = [q | common for q in queries]
        fetch = self.client.trades if self.channel == "orders" else self.client.activity

        def convert(rows: list[dict[str, Any]]) -> tuple[list[Record], list[DeadLetter]]:
            return self._convert(rows, window)

        async for page in paginate(parts, fetch, cursor, convert):
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
                error = f"predexon REST {self.channel} row: {exc}"
                dead.append(row_dead_letter(row, error, received, mapper.topic))
                continue
            t = record.event_time_us
            if t is not None and not window.from_us <= t <= window.to_us:
                continue
            records.append(record)
        return records, dead
