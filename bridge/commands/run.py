"""`polybridge run --config FILE`: run the bridge until SIGTERM / Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio

from bridge.app import Bridge, run_until_signalled
from bridge.config import load_settings


class RunCommand:
    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--config", help="TOML configuration file (environment overrides apply)"
        )

    def run(self, args: argparse.Namespace) -> int:
        settings = load_settings(args.config)
        return asyncio.run(
            run_until_signalled(Bridge(settings), reload=lambda: load_settings(args.config))
        )


def command(path: tuple[str, ...]) -> RunCommand:
    return RunCommand()
