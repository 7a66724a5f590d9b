"""What one step of the simulated market produces: records tagged with their stream, symbol,
owning firms and event time, stamped by the step's clock and given fresh ids."""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass

from google.protobuf.message import Message

from polymarket.v1 import types_pb2

EXECUTIONS = "executions"
TRADE_CAPTURES = "trade_captures"
INSTRUMENT_STATES = "instrument_states"
POSITION_CHANGES = "position_changes"
STREAMS: tuple[str, ...] = (EXECUTIONS, TRADE_CAPTURES, INSTRUMENT_STATES, POSITION_CHANGES)


@dataclass(frozen=True, slots=True)
class MarketRecord:
    """One record for one stream: the message plus what the journal indexes it by."""

    stream: str
    symbol: str
    firms: tuple[str, ...]
    """Firms the record belongs to (accounts' firms); empty for instrument records."""
    time_us: int
    """Event time in microseconds since the epoch (see `bridge.sim.journal`)."""
    message: Message


def account_firm(account: str) -> str:
    """`firms/<F>` of `firms/<F>/accounts/<A>`."""
    return "/".join(account.split("/", 2)[:2])


class Tape:
    """The current step's records and clock, shared by every part of the market.

    `rng` is the market's one random source: ids draw from it too, so the order of draws
    (and hence every record) depends only on the seed and the clock readings.
    """

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.records: list[MarketRecord] = []
        self.time_us = 0
        """Event time of the current step."""
        self._counter = 0
        self._date_cache: tuple[int, types_pb2.Date] = (-1, types_pb2.Date())

    def begin(self, now_us: int) -> None:
        """Start a step at `now_us`, clamped so event times strictly increase."""
        self.time_us = max(now_us, self.time_us + 1)
        self.records = []

    def next_id(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}-{self.rng.getrandbits(40):010x}{self._counter:08d}"

    def emit(self, stream: str, symbol: str, firms: tuple[str, ...], message: Message) -> None:
        self.records.append(MarketRecord(stream, symbol, firms, self.time_us, message))

    def today(self) -> types_pb2.Date:
        """The step's UTC date (cached: most steps fall on the same day)."""
        day = self.time_us // 86_400_000_000
        if self._date_cache[0] != day:
            d = dt.date(1970, 1, 1) + dt.timedelta(days=day)
            self._date_cache = (day, types_pb2.Date(year=d.year, month=d.month, day=d.day))
        return self._date_cache[1]
