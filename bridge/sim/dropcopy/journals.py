"""The DropCopy simulator's four stream journals: filled from the seeded market (prefill, live
rate, on demand) and read back as ground truth."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Callable, Collection
from pathlib import Path

from google.protobuf.message import Message

from bridge.sim.contract import Contract
from bridge.sim.dropcopy.rpcs import STREAM_RPCS
from bridge.sim.dropcopy.stats import SimStats
from bridge.sim.journal import Journal, Retention
from bridge.sim.market import STREAMS, MarketGenerator
from bridge.timeutil import now_us as _now_us

log = logging.getLogger(__name__)

# The live generator wakes this often; small enough for smooth rates, large enough to batch.
_GENERATE_TICK_S = 0.01
# Most records generated in one tick, so a high --rate cannot starve the subscribers.
_MAX_RECORDS_PER_TICK = 5_000


class MarketJournals:
    """One `Journal` per stream, appended to by a `MarketGenerator` through the wire contract."""

    def __init__(
        self, market: MarketGenerator, contract: Contract, retention: Retention, stats: SimStats
    ) -> None:
        self.journals = {stream: Journal(stream, retention) for stream in STREAMS}
        self._market = market
        self._contract = contract
        self._stats = stats

    # -- filling ---------------------------------------------------------------------------

    def generate(self, records: int, clock: Callable[[int], int]) -> int:
        """Generate at least `records` records, the nth (counting every record generated so
        far) stamped `clock(n)`, then trim and wake subscribers. Returns how many."""
        produced = 0
        journals = self.journals
        while produced < records:
            for record in self._market.step(clock(self._stats.generated + produced)):
                journals[record.stream].append(
                    record.time_us,
                    record.symbol,
                    record.firms,
                    self._contract.serialize(record.stream, record.message, record.time_us),
                )
                produced += 1
        self._stats.generated += produced
        now = _now_us()
        for journal in journals.values():
            journal.trim(now)
            journal.notify()
        return produced

    async def generate_live(self, rate: float, max_records: int | None) -> None:
        """Generate `rate` records a second (wall-clock event times) until `max_records`."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        base = self._stats.generated
        while max_records is None or self._stats.generated < max_records:
            target = base + int((loop.time() - started) * rate)
            if max_records is not None:
                target = min(target, max_records)
            wanted = min(target - self._stats.generated, _MAX_RECORDS_PER_TICK)
            if wanted > 0:
                self.generate(wanted, lambda _n: _now_us())
            await asyncio.sleep(_GENERATE_TICK_S)
        log.info("dropcopy simulator reached max_records=%d; heartbeats only", max_records)

    # -- ground truth ----------------------------------------------------------------------

    def records(
        self, stream: str, symbols: Collection[str] = (), firms: Collection[str] = ()
    ) -> list[tuple[int, int, bytes]]:
        """(sequence, event time us, serialized record) of every retained record of `stream`
        matching the filters, in journal order. `firms` empty = all firms (unlike the RPC)."""
        firm_filter = frozenset(firms) if firms else None
        return list(self.journals[stream].records(frozenset(symbols), firm_filter))

    def messages(
        self, stream: str, symbols: Collection[str] = (), firms: Collection[str] = ()
    ) -> list[Message]:
        """`records` parsed into the stream's record class."""
        record_class = STREAM_RPCS[stream][2]
        return [
            record_class.FromString(payload)
            for _, _, payload in self.records(stream, symbols, firms)
        ]

    def write_jsonl(self, path: Path) -> int:
        """Write every retained record as JSON lines {stream, seq, time_us, record (base64 of
        the serialized proto)}; returns the number of lines."""
        count = 0
        with path.open("w", encoding="utf-8") as out:
            for stream in STREAMS:
                for seq, time_us, payload in self.journals[stream].records():
                    line = {
                        "stream": stream,
                        "seq": seq,
                        "time_us": time_us,
                        "record": base64.b64encode(payload).decode(),
                    }
                    out.write(json.dumps(line) + "\n")
                    count += 1
        return count
