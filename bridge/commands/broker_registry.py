"""`polybridge broker --registry`: a local Schema Registry beside the local Kafka
(`bridge.embedded_registry`: Apicurio, in memory, global compatibility BACKWARD), for the
demo and for trying registry framing by hand. It prints `schema_registry.url=URL` once it
answers: the value for `[schema_registry] url` and `polybridge tail --schema-registry-url`."""

from __future__ import annotations

import argparse

from bridge.embedded_registry import EmbeddedRegistry

DEFAULT_PORT = 8081
"""Confluent Schema Registry's usual port."""


def add_registry_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--registry",
        action="store_true",
        help="also run a Schema Registry on 127.0.0.1 (Apicurio, in memory, BACKWARD)",
    )
    parser.add_argument(
        "--registry-port",
        type=int,
        default=DEFAULT_PORT,
        help=f"the registry's port on 127.0.0.1 (default {DEFAULT_PORT})",
    )
    parser.add_argument("--registry-log-file", default=None, help="write the registry's log here")


def start_registry(args: argparse.Namespace) -> EmbeddedRegistry | None:
    """The started registry when `--registry` was given (its URL printed), else None."""
    if not args.registry:
        return None
    registry = EmbeddedRegistry(args.registry_port, args.registry_log_file).start()
    print(f"schema_registry.url={registry.url}", flush=True)
    return registry
