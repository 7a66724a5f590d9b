"""REST backfill throughput: rows/s from the simulators' REST history into mapped records.

Run: `.venv/bin/python -m bench.rest_backfill [--seconds S] [--rows N]`

Each case walks one `History` (`bridge.backfill.exchange_history`,
`bridge.backfill.predexon_history`) over a window of the simulator's history and counts
the Avro records produced per second of wall time (REST call, JSON parse, mapping to the
live mapper's records; no Kafka):

- exchange executions, trade captures and position changes (ledger), page size 1000,
  (a) with the simulator's and the client's limits off, and (b) at the documented limits
  (searches 12 requests/min per endpoint, the ledger 0.5/s burst 5; the client paces
  itself to them), run for `--seconds` (the first 12 search pages go at once, then one
  page every 5 s: the steady state is 1000 x 12 / 60 = 200 rows/s per search endpoint);
- Predexon trades (wildcard, newest first, and per wallet) and activity (per wallet),
  limit 500, (a) unlimited and (b) at the Dev plan's 20 requests/s and the Pro plan's 100.

The simulators run in this process, on the same event loop as the client, so the numbers
include the simulator's own work (on 2 cores: a ceiling, not the upstream's speed).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bridge.backfill.exchange_history import ExchangeHistory
from bridge.backfill.history import Window
from bridge.backfill.predexon_history import PredexonHistory
from bridge.mapping.dropcopy import DropCopyMapper
from bridge.mapping.predexon import PredexonMapper
from bridge.sim import predexon as px
from bridge.sim.dropcopy import DropCopySimulator, SimConfig
from bridge.sim.dropcopy.rest import RestConfig
from bridge.sim.predexon.rest import PredexonRestConfig
from bridge.sources.rest.exchange import ExchangeRestClient
from bridge.sources.rest.http import RestClient
from bridge.sources.rest.predexon import PLAN_RATES, PredexonRestClient, predexon_parse
from bridge.streams.kinds import KINDS

FIRM = "firms/acme-capital"
PARTICIPANT = f"{FIRM}/users/alice"
ACCOUNTS = [f"{FIRM}/accounts/ACM-1", f"{FIRM}/accounts/ACM-2"]


@dataclass
class Result:
    case: str
    rows: int
    seconds: float
    requests: int
    rate_limited: int

    def line(self) -> str:
        rate = self.rows / self.seconds if self.seconds else 0.0
        return (
            f"{self.case:<58} {self.rows:>8} rows {self.seconds:>7.1f} s {rate:>10,.0f} rows/s"
            f"  requests={self.requests} 429s={self.rate_limited}"
        )


async def walk(history: Any, window: Window, seconds: float) -> tuple[int, float]:
    rows = 0
    start = time.perf_counter()
    async for page in history.pages(window, None):
        rows += len(page.records)
        if time.perf_counter() - start >= seconds:
            break
    return rows, time.perf_counter() - start


async def exchange_cases(prefill: int, seconds: float, documented: bool) -> list[Result]:
    rest = RestConfig() if documented else RestConfig(search_limit=None, ledger_limit=None)
    sim = DropCopySimulator(SimConfig(seed=21, prefill=prefill, rest=rest))
    await sim.start()
    assert sim.rest is not None
    sim.rest.warm()
    token = sim.issue_token(["read:reports", "read:positions"])

    async def headers() -> Mapping[str, str]:
        return {"Authorization": f"Bearer {token}", "x-participant-id": PARTICIPANT}

    results = []
    label = "documented limits" if documented else "limits off"
    try:

        async def one(kind: str) -> Result:
            http = RestClient(sim.rest.url if sim.rest else "", headers)
            pacing: dict[str, Any] = {} if documented else {"search_pacing": None}
            if not documented:
                pacing["ledger_pacing"] = None
            client = ExchangeRestClient(http, **pacing)
            mapper = DropCopyMapper(KINDS[kind], "bench", "topic", b"")
            times = [t for _, t, _ in sim.ground_truth_records(kind, firms=[FIRM])]
            history = ExchangeHistory(
                client, mapper, participant_id=PARTICIPANT, accounts=ACCOUNTS, page_size=1000
            )
            rows, elapsed = await walk(history, Window(times[0], times[-1]), seconds)
            await http.aclose()
            return Result(
                f"exchange {kind} ({label})",
                rows,
                elapsed,
                http.stats.requests,
                http.stats.rate_limited,
            )

        kinds = ("executions", "trade_captures", "position_changes")
        results = list(await asyncio.gather(*(one(kind) for kind in kinds)))
    finally:
        await sim.stop()
    return results


def prefill_predexon(sim: px.PredexonSimulator, events: int) -> None:
    """Generate `events` order and activity events now, spread over the last hour."""
    now = time.time() - 3600
    for i in range(events):
        at = now + i * 3600 / events
        for channel in ("orders", "activity"):
            for _delay, data in sim.factory.make(channel, at):
                sim._truth.append({"channel": channel, "generated_at": at, "data": data})


async def predexon_cases(events: int, seconds: float) -> list[Result]:
    config = px.SimConfig(seed=7, rate=0.0, rest=PredexonRestConfig(rate_limits=True))
    config.keys = {"bench-free": "free", "bench-dev": "dev", "bench-pro": "pro", "off": "pro"}
    sim = px.PredexonSimulator(config)
    await sim.start()
    assert sim.rest is not None
    prefill_predexon(sim, events)
    sim.rest.warm()
    stamps = [
        e["data"]["timestamp"] for e in sim.ground_truth("orders") if e["data"].get("timestamp")
    ]
    window = Window(min(stamps) * 1_000_000, max(stamps) * 1_000_000)
    users = sim.factory.universe.users
    results = []
    try:
        for plan in ("off", "dev", "pro"):
            sim.config.rest.rate_limits = plan != "off"
            key = "off" if plan == "off" else f"bench-{plan}"

            async def headers(key: str = key) -> Mapping[str, str]:
                return {"x-api-key": key}

            for channel, filters in (
                ("orders", {"market_slugs": ["*"]}),
                ("orders", {"users": users[:2]}),
                ("activity", {"users": users[:2]}),
            ):
                http = RestClient(sim.rest.url, headers, parse=predexon_parse)
                rate = None if plan == "off" else PLAN_RATES[plan]
                client = PredexonRestClient(http, requests_per_s=rate)
                mapper = PredexonMapper(channel, "bench", "topic", b"", "{}")
                history = PredexonHistory(client, mapper, filters, limit=500)
                rows, elapsed = await walk(history, window, seconds)
                await http.aclose()
                what = "trades *" if "market_slugs" in filters else f"{channel} 2 wallets"
                label = "limits off" if plan == "off" else f"{plan} plan {rate}/s"
                results.append(
                    Result(
                        f"predexon {what} ({label})",
                        rows,
                        elapsed,
                        http.stats.requests,
                        http.stats.rate_limited,
                    )
                )
    finally:
        await sim.stop()
    return results


async def main(args: argparse.Namespace) -> None:
    print(f"REST backfill, rows mapped per second (exchange prefill {args.rows} records)")
    for result in await exchange_cases(args.rows, args.seconds, documented=False):
        print(result.line(), flush=True)
    for result in await predexon_cases(args.events, args.seconds):
        print(result.line(), flush=True)
    if not args.skip_documented:
        for result in await exchange_cases(args.rows, args.limited_seconds, documented=True):
            print(result.line(), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=150_000, help="exchange records prefilled")
    parser.add_argument("--events", type=int, default=6_000, help="Predexon generator steps")
    parser.add_argument("--seconds", type=float, default=20.0, help="cap per unlimited case")
    parser.add_argument(
        "--limited-seconds", type=float, default=75.0, help="duration of documented-limit runs"
    )
    parser.add_argument("--skip-documented", action="store_true")
    asyncio.run(main(parser.parse_args()))
