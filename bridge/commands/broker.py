"""`polybridge broker [--port P] [--data-dir DIR] [--log-file PATH]`: a local Apache Kafka
in the foreground until SIGTERM / Ctrl-C (see `bridge.embedded`)."""

from __future__ import annotations

import argparse
import signal
import threading
from types import FrameType
from typing import Any

from bridge.embedded import EmbeddedBroker
from bridge.errors import BridgeError


class BrokerCommand:
    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--port", type=int, default=9092, help="listen port on 127.0.0.1")
        parser.add_argument(
            "--data-dir",
            default=None,
            help="keep the broker's data here across restarts (default: a temporary "
            "directory, deleted on exit)",
        )
        parser.add_argument("--log-file", default=None, help="write the broker's log here")

    def run(self, args: argparse.Namespace) -> int:
        stop = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        previous: dict[int, Any] = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, on_signal)
        try:
            with EmbeddedBroker(args.port, args.data_dir, args.log_file) as broker:
                print(f"bootstrap.servers={broker.bootstrap_servers}", flush=True)
                # Wake up now and then to notice a broker that died on its own.
                while not stop.wait(0.5):
                    if not broker.running:
                        raise BridgeError("embedded broker exited unexpectedly")
            return 0
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def command(path: tuple[str, ...]) -> BrokerCommand:
    return BrokerCommand()
