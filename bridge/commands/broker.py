"""`polybridge broker [--nodes N] [--port P] [--data-dir DIR] [--log-file PATH]`: a local
Apache Kafka in the foreground until SIGTERM / Ctrl-C (see `bridge.embedded`).

One node by default. `--nodes 3` starts a KRaft cluster of three combined
broker+controller nodes on ports P, P+1, P+2 (replication factor 3 for every topic,
internal ones included, `min.insync.replicas` 2, no unclean leader election), for trying
failover on one machine.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from bridge.commands.broker_registry import add_registry_arguments, start_registry
from bridge.embedded import EmbeddedBroker, EmbeddedCluster
from bridge.embedded_security import add_security_arguments, serve_secured
from bridge.errors import BridgeError


class BrokerCommand:
    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--port",
            type=int,
            default=9092,
            help="listen port on 127.0.0.1 (with --nodes N: the first node's; node i listens "
            "on port + i - 1)",
        )
        parser.add_argument(
            "--nodes",
            type=int,
            default=1,
            choices=range(1, 10),
            metavar="N",
            help="1 (default): one broker; 3: a KRaft cluster of three nodes with replication "
            "factor 3 and min.insync.replicas 2",
        )
        parser.add_argument(
            "--data-dir",
            default=None,
            help="keep the broker's data here across restarts (default: a temporary "
            "directory, deleted on exit); with --nodes N, node i keeps its data in "
            "DIR/node-i",
        )
        parser.add_argument(
            "--log-file",
            default=None,
            help="write the broker's log here; with --nodes N, node i writes "
            "kafka-i.log in this file's directory",
        )
        add_registry_arguments(parser)
        add_security_arguments(parser)

    def run(self, args: argparse.Namespace) -> int:
        stop = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        previous: dict[int, Any] = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, on_signal)
        registry = start_registry(args)  # first: printed before bootstrap.servers
        try:
            if args.secure:  # SASL_SSL, mutual TLS and ACLs: bridge.embedded_security
                return serve_secured(args, stop)
            if args.nodes == 1:
                with EmbeddedBroker(args.port, args.data_dir, args.log_file) as broker:
                    print(f"bootstrap.servers={broker.bootstrap_servers}", flush=True)
                    # Wake up now and then to notice a broker that died on its own.
                    while not stop.wait(0.5):
                        if not broker.running:
                            raise BridgeError("embedded broker exited unexpectedly")
                return 0
            log_dir = Path(args.log_file).parent if args.log_file else None
            ports = [args.port + i for i in range(args.nodes)]
            with EmbeddedCluster(args.nodes, args.data_dir, log_dir, ports) as cluster:
                print(f"bootstrap.servers={cluster.bootstrap_servers}", flush=True)
                while not stop.wait(0.5):
                    down = [i for i in cluster.nodes if i not in cluster.running()]
                    if down:
                        raise BridgeError(
                            f"embedded Kafka node(s) {down} exited unexpectedly; the "
                            f"logs are in {log_dir or cluster.data_dir}"
                        )
            return 0
        finally:
            if registry is not None:
                registry.stop()
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def command(path: tuple[str, ...]) -> BrokerCommand:
    return BrokerCommand()
