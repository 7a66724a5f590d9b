"""Where a DropCopy call starts reading its journal: after a resume token, at a resume time, or
at the head (live only)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import grpc

from bridge.sim.dropcopy.faults import Faults
from bridge.sim.dropcopy.rpcs import Refusal
from bridge.sim.journal import InvalidToken, Journal, TokenCodec
from bridge.timeutil import now_us as _now_us


def _iso(time_us: int) -> str:
    return dt.datetime.fromtimestamp(time_us / 1e6, dt.UTC).isoformat(timespec="microseconds")


def start_position(
    stream: str, request: Any, journal: Journal, codec: TokenCodec, faults: Faults
) -> tuple[int, bool]:
    """(position to serve after, resumed by token), or raise `Refusal`."""
    has_time = request.HasField("resume_time")
    if request.resume_token and has_time:
        raise Refusal(
            grpc.StatusCode.INVALID_ARGUMENT,
            "resume_token and resume_time are mutually exclusive",
        )
    if request.resume_token:
        try:
            token = codec.decode(request.resume_token)
        except InvalidToken as exc:
            raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc
        if token.stream != stream:
            raise Refusal(
                grpc.StatusCode.INVALID_ARGUMENT, "resume_token belongs to another stream"
            )
        refused = faults.token_refused_code
        max_age = faults.token_max_age_s
        if max_age is not None and _now_us() - token.issued_us > max_age * 1_000_000:
            raise Refusal(refused, "resume_token expired")
        if not journal.covers(token.position):
            raise Refusal(refused, "resume_token is beyond the journal's retention")
        return token.position, True
    if has_time:
        wanted = request.resume_time.ToMicroseconds()
        position = journal.position_for_time(wanted)
        if position is None:
            oldest = journal.time_at(journal.first_retained)
            raise Refusal(
                grpc.StatusCode.OUT_OF_RANGE,
                f"resume_time {_iso(wanted)} is older than the journal's retention"
                + (f" (oldest retained event {_iso(oldest)})" if oldest else ""),
            )
        return position, False
    return journal.head, False
