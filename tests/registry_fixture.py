"""The Schema Registry for tests: `SCHEMA_REGISTRY_URL` if set (its global compatibility
level must be BACKWARD), else a local Apicurio Registry started by the project
(`bridge.embedded_registry`), one per test session (per xdist worker)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def schema_registry(log_dir: str) -> Iterator[str]:
    """The registry's Confluent-compatible URL, for as long as the context lasts."""
    external = os.environ.get("SCHEMA_REGISTRY_URL")
    if external:
        yield external
        return
    from bridge.embedded_registry import EmbeddedRegistry

    with EmbeddedRegistry(log_path=os.path.join(log_dir, "registry.log")) as registry:
        yield registry.url
