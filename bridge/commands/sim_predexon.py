"""`polybridge sim predexon`: serve the simulated Predexon WebSocket API until SIGTERM / SIGINT.

Prints `predexon simulator listening on ws://...` (with a Pro key) once serving; with
`--ground-truth-out`, writes every generated event as JSON lines on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from bridge.errors import ConfigError
from bridge.sim.predexon import PredexonSimulator, SimConfig
from bridge.sim.predexon.events import CRYPTO_TIME_UNITS


class SimPredexonCommand:
    """`polybridge sim predexon`: serve the simulator until SIGTERM / SIGINT."""

    def __init__(self, path: tuple[str, ...]) -> None:
        self.path = path

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8765)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--rate", type=float, default=20.0, help="events/s per channel")
        parser.add_argument(
            "--key",
            action="append",
            metavar="KEY=PLAN",
            help="API key and its plan (free, dev, pro); repeatable. Default: sim-pro-key=pro, "
            "sim-dev-key=dev, sim-free-key=free",
        )
        parser.add_argument("--ping-interval", type=float, default=30.0)
        parser.add_argument("--pong-timeout", type=float, default=60.0)
        parser.add_argument("--idle-timeout", type=float, default=120.0)
        parser.add_argument("--confirm-scale", type=float, default=1.0)
        parser.add_argument("--bare-ratio", type=float, default=0.0)
        parser.add_argument("--duplicate-ratio", type=float, default=0.0)
        parser.add_argument(
            "--crypto-time-unit",
            choices=sorted(CRYPTO_TIME_UNITS),
            default="s",
            help="unit of the crypto channel's price_feed times (Predexon does not publish it)",
        )
        parser.add_argument(
            "--ground-truth-out", metavar="FILE", help="JSON lines, written on exit"
        )

    def run(self, args: argparse.Namespace) -> int:
        config = SimConfig(
            host=args.host,
            port=args.port,
            seed=args.seed,
            rate=args.rate,
            ping_interval_s=args.ping_interval,
            pong_timeout_s=args.pong_timeout,
            idle_timeout_s=args.idle_timeout,
            confirm_scale=args.confirm_scale,
            bare_ratio=args.bare_ratio,
            duplicate_ratio=args.duplicate_ratio,
            crypto_time_unit=args.crypto_time_unit,
        )
        if args.key:
            config.keys = dict(_split_key(k) for k in args.key)
        return asyncio.run(self._serve(config, args.ground_truth_out))

    async def _serve(self, config: SimConfig, truth_out: str | None) -> int:
        sim = PredexonSimulator(config)
        await sim.start()
        key = next((k for k, p in config.keys.items() if p == "pro"), next(iter(config.keys)))
        print(f"predexon simulator listening on {sim.url_for(key)}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await sim.stop()
        if truth_out:
            sim.export_ground_truth(truth_out)
        return 0


def _split_key(text: str) -> tuple[str, str]:
    key, sep, plan = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"--key {text!r}: expected KEY=PLAN (plan: free, dev or pro)")
    return key, plan


def command(path: tuple[str, ...]) -> SimPredexonCommand:
    """Entry point for `polybridge sim predexon`."""
    return SimPredexonCommand(path)
