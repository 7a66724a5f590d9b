"""A half-open link to the exchange is noticed within the configured keepalive.

Through a loopback proxy that stops forwarding without closing anything, a DropCopy stream
opened on `open_channel` must fail with UNAVAILABLE (which the source resumes) within
`keepalive_time_s + keepalive_timeout_s` plus scheduling slack, not after gRPC core's own
60 s ping timeout.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from bridge.sim import dropcopy as dsim_mod
from bridge.sources.dropcopy.source import open_channel
from polymarket.v1 import dropcopy_pb2, dropcopy_pb2_grpc
from tests.fault.tcp_proxy import TcpProxy

KEEPALIVE_S = 1.0
SLACK_S = 8.0
"""Scheduling slack on a loaded 2-core machine; far below the 60 s it took without the fix."""


@pytest.mark.parametrize("keepalive_time_s", [KEEPALIVE_S, 60.0])
def test_half_open_stream_fails_within_keepalive_timeout(keepalive_time_s: float) -> None:
    """With keepalive_time 60 s the stream still fails quickly while data flows: gRPC's own
    flow-control (BDP) pings are held to the same timeout."""
    config = dsim_mod.SimConfig(seed=3, prefill=50, rate=100, batch=5, heartbeat_s=0.05, auth=False)
    with dsim_mod.SimulatorThread(config) as sim, TcpProxy(sim.port) as proxy:

        async def stream_until_broken() -> tuple[float, grpc.StatusCode]:
            channel = open_channel(
                proxy.address,
                tls=False,
                keepalive_time_s=keepalive_time_s,
                keepalive_timeout_s=KEEPALIVE_S,
            )
            stub = dropcopy_pb2_grpc.DropCopyAPIStub(channel)
            request = dropcopy_pb2.CreateInstrumentStateChangeSubscriptionRequest()
            half_open_at = 0.0
            try:
                responses = 0
                async for _ in stub.CreateInstrumentStateChangeSubscription(request):
                    responses += 1
                    if responses == 20:  # the stream is established and flowing
                        proxy.half_open()
                        half_open_at = time.monotonic()
            except grpc.aio.AioRpcError as exc:
                return time.monotonic() - half_open_at, exc.code()
            finally:
                await channel.close()
            raise AssertionError("the stream ended without an error")

        took, code = asyncio.run(
            asyncio.wait_for(stream_until_broken(), 2 * KEEPALIVE_S + SLACK_S + 20)
        )
    assert code == grpc.StatusCode.UNAVAILABLE
    assert took < 2 * KEEPALIVE_S + SLACK_S, f"half-open link noticed only after {took:.1f}s"
