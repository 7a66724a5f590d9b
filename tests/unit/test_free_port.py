"""`free_port()`, which every test server, local broker and the demo listen on."""

from __future__ import annotations

import socket
from pathlib import Path

from bridge.embedded import free_port


def test_free_ports_are_below_the_ephemeral_range_and_bindable() -> None:
    # Outgoing connections take their source ports from the ephemeral range; a port from
    # there can be gone before the test's server binds it (a CI failure at 15ebbe6).
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = {free_port() for _ in range(50)}
    assert all(1024 <= port < low for port in ports), sorted(ports)
    assert len(ports) > 40  # drawn at random, not a fixed sequence
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
