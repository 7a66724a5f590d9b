"""One page of a REST history answer, as both history clients return it.

`RestPage` is what `ExchangeRestClient` and `PredexonRestClient` hand the backfill: the
rows as sent and the token of the next page. The checks every answer goes through (a JSON
object whose list of rows is a list of objects) and the way a page token joins a query's
parameters are here once, for both clients.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from bridge.sources.rest.http import RestError

V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class RestPage:
    """Rows of one page (JSON objects as sent) and the token of the next (None: the end)."""

    rows: list[dict[str, Any]]
    next_token: str | None


def answer_object(data: Any) -> dict[str, Any]:
    """`data` when the answer is a JSON object; else `RestError` (bad_response)."""
    if not isinstance(data, dict):
        raise RestError("response is not a JSON object", status=200, reason="bad_response")
    return data


def page_rows(data: dict[str, Any], *keys: str) -> list[dict[str, Any]]:
    """The rows under the first of `keys` present (none present: no rows, as protobuf JSON
    omits an empty list); `RestError` when they are not a list of objects."""
    for key in keys:
        rows = data.get(key)
        if rows is not None:
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                raise RestError(
                    f"{key} is not a list of objects", status=200, reason="bad_response"
                )
            return rows
    return []


def with_page_token(params: Mapping[str, V], name: str, token: str | None) -> dict[str, V | str]:
    """`params` with the page token under `name` (none for a first page)."""
    return dict(params) | ({name: token} if token else {})
