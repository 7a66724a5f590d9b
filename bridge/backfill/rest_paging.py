"""Walking a plan of REST queries page by page, with a cursor a crash resumes from.

Shared by the `History` implementations over the upstreams' REST history APIs
(`bridge.backfill.exchange_history`, `bridge.backfill.predexon_history`). A plan is a list
of query parts (one per symbol, account, wallet, ...); cursors are opaque JSON text
`{"part": i, "token": t}`: the i-th part and the upstream's page token inside it. A page's
cursor is where the NEXT page starts; None after the window's last page.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import timestamp_pb2

from bridge.backfill.history import Page
from bridge.records import DeadLetter, Record
from bridge.serde.exact_json import dumps
from bridge.sources.rest.page import RestPage

Fetch = Callable[[Mapping[str, Any], str | None], Awaitable[RestPage]]
"""One page of one query part from a page token (None: its first page)."""
Convert = Callable[[list[dict[str, Any]]], tuple[list[Record], list[DeadLetter]]]
"""REST rows -> (the live mapper's records, rows that did not map)."""


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


async def paginate(
    parts: Sequence[Mapping[str, Any]], fetch: Fetch, cursor: str | None, convert: Convert
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


def rfc3339(time_us: int) -> str:
    ts = timestamp_pb2.Timestamp()
    ts.FromMicroseconds(time_us)
    return ts.ToJsonString()


def row_dead_letter(
    row: Mapping[str, Any], error: str, received_at_us: int, target_topic: str
) -> DeadLetter:
    """The dead letter of a REST row that did not map (the row as JSON, exact numbers)."""
    return DeadLetter(
        raw=dumps(row).encode(),
        error=error,
        error_type="rest_row_error",
        received_at_us=received_at_us,
        target_topic=target_topic,
    )
