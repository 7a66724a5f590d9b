"""What the Predexon benches share: the broker they run on, and the bridge config of one
subscription (`bench.predexon_e2e`, `bench.predexon_reconnect`)."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def broker() -> Iterator[str]:
    """Bootstrap servers: `KAFKA_BOOTSTRAP_SERVERS` if set, else an embedded Apache Kafka
    (`bridge.embedded`) for the duration of the block."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    from bridge.embedded import EmbeddedBroker

    with EmbeddedBroker() as embedded:
        yield embedded.bootstrap_servers


def predexon_bridge_config(
    workdir: Path,
    *,
    bootstrap: str,
    url: str,
    api_key: str,
    channel: str,
    filters: dict[str, Any],
    partitions: int,
) -> Path:
    """Write `workdir/bridge.toml`: one Predexon subscription `bench` on the pro plan, its
    topics prefixed with `<workdir name>.` (a fresh app id, so no state is reused)."""
    key_file = workdir / "key"
    key_file.write_text(api_key)
    toml_filters = ", ".join(f"{k} = {json.dumps(v)}" for k, v in filters.items())
    config = workdir / "bridge.toml"
    config.write_text(
        f'app_id = "bench-{uuid.uuid4().hex[:8]}"\n'
        f'[kafka]\nbootstrap_servers = "{bootstrap}"\npartitions = {partitions}\n'
        f'topic_prefix = "{workdir.name}."\n'
        f'[predexon]\nurl = "{url}"\napi_key_file = "{key_file}"\nplan = "pro"\n'
        f'[[predexon.subscriptions]]\nname = "bench"\nchannel = "{channel}"\n'
        f"filters = {{ {toml_filters} }}\n"
    )
    return config
