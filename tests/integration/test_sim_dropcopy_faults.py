"""Each fault knob of the DropCopy simulator, seen by a real gRPC client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from bridge.sim.dropcopy import DropCopySimulator, Faults, SimConfig
from polymarket.v1 import dropcopy_pb2, dropcopy_pb2_grpc

ALL_FIRMS = ["firms/acme-capital", "firms/bluefin-trading", "firms/cobalt-markets"]
REPLAY = dropcopy_pb2.CreateDropCopySubscriptionRequest(
    resume_time=Timestamp(seconds=0), firms=ALL_FIRMS
)


def run(test: Callable[[DropCopySimulator, Any], Coroutine[Any, Any, None]], **config: Any) -> None:
    defaults: dict[str, Any] = {"seed": 5, "prefill": 2000, "heartbeat_s": 0.05, "batch": 40}

    async def main() -> None:
        sim = DropCopySimulator(SimConfig(**{**defaults, **config}))
        await sim.start()
        try:
            async with grpc.aio.insecure_channel(sim.address) as channel:
                await asyncio.wait_for(test(sim, dropcopy_pb2_grpc.DropCopyAPIStub(channel)), 20)
        finally:
            await sim.stop()

    asyncio.run(main())


def md(sim: DropCopySimulator) -> list[tuple[str, str]]:
    return [
        ("authorization", f"Bearer {sim.issue_token()}"),
        ("x-participant-id", "firms/acme-capital/users/alice"),
    ]


async def read_all(call: Any) -> list[Any]:
    """Responses until the first heartbeat (included)."""
    responses = []
    while True:
        response = await call.read()
        responses.append(response)
        if not response.executions:
            call.cancel()
            return responses


def ids(responses: list[Any]) -> list[str]:
    return [e.id for r in responses for e in r.executions]


def test_stream_is_dropped_with_unavailable_after_n_responses() -> None:
    async def test(sim: DropCopySimulator, stub: Any) -> None:
        sim.faults.drop_after_responses = 3
        call = stub.CreateDropCopySubscription(REPLAY, metadata=md(sim))
        received = [await call.read() for _ in range(3)]
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await call.read()
        assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
        assert len(received) == 3

    run(test)


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED])
def test_burst_of_failed_calls_then_success(code: grpc.StatusCode) -> None:
    async def test(sim: DropCopySimulator, stub: Any) -> None:
        sim.faults.fail_next_calls = 2
        sim.faults.fail_code = code
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await stub.CreateDropCopySubscription(REPLAY, metadata=md(sim)).read()
            assert failure.value.code() == code
        assert ids(await read_all(stub.CreateDropCopySubscription(REPLAY, metadata=md(sim))))

    run(test)


def test_resume_tokens_expire_after_the_configured_age() -> None:
    async def test(sim: DropCopySimulator, stub: Any) -> None:
        call = stub.CreateDropCopySubscription(REPLAY, metadata=md(sim))
        token = (await call.read()).resume_token
        call.cancel()
        sim.faults.token_max_age_s = 0.0  # every token already issued is now too old
        sim.faults.token_refused_code = grpc.StatusCode.OUT_OF_RANGE
        request = dropcopy_pb2.CreateDropCopySubscriptionRequest(resume_token=token)
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await stub.CreateDropCopySubscription(request, metadata=md(sim)).read()
        assert failure.value.code() == grpc.StatusCode.OUT_OF_RANGE
        assert "expired" in (failure.value.details() or "")

    run(test)


@pytest.mark.parametrize(
    "faults", [Faults(duplicate_every=2, duplicate_count=3), Faults(duplicate_probability=1.0)]
)
def test_duplicates_resend_records_already_sent(faults: Faults) -> None:
    async def test(sim: DropCopySimulator, stub: Any) -> None:
        received = ids(await read_all(stub.CreateDropCopySubscription(REPLAY, metadata=md(sim))))
        truth = [e.id for e in sim.ground_truth("executions")]
        assert len(received) > len(truth)
        assert list(dict.fromkeys(received)) == truth  # at-least-once, order kept

    run(test, faults=faults)


def test_resumed_call_resends_records_before_the_token() -> None:
    async def test(sim: DropCopySimulator, stub: Any) -> None:
        sim.faults.resume_overlap = 4
        call = stub.CreateDropCopySubscription(REPLAY, metadata=md(sim))
        first = [await call.read() for _ in range(2)]
        call.cancel()
        request = dropcopy_pb2.CreateDropCopySubscriptionRequest(
            resume_token=first[-1].resume_token, firms=ALL_FIRMS
        )
        rest = await read_all(stub.CreateDropCopySubscription(request, metadata=md(sim)))
        assert ids(rest)[:4] == ids(first)[-4:]
        assert ids(first) + ids(rest)[4:] == [e.id for e in sim.ground_truth("executions")]

    run(test)


def test_idle_stream_is_closed_like_the_load_balancer_does() -> None:
    async def test(sim: DropCopySimulator, stub: Any) -> None:
        sim.faults.idle_disconnect_s = 0.3
        call = stub.CreateDropCopySubscription(
            dropcopy_pb2.CreateDropCopySubscriptionRequest(), metadata=md(sim)
        )
        heartbeats = 0
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            while True:
                response = await call.read()
                assert not response.executions
                heartbeats += 1
        assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "idle" in (failure.value.details() or "")
        assert heartbeats >= 2  # heartbeats do not keep an idle stream open

    run(test)


def test_silent_call_stays_open_without_responses_or_heartbeats() -> None:
    async def test(sim: DropCopySimulator, stub: Any) -> None:
        sim.faults.silent_after_responses = 3
        call = stub.CreateDropCopySubscription(REPLAY, metadata=md(sim))
        received = [await call.read() for _ in range(3)]
        pending = asyncio.ensure_future(call.read())
        # 20 heartbeat intervals (heartbeat_s = 0.05) pass without a response...
        done, _ = await asyncio.wait({pending}, timeout=1.0)
        assert not done, "a silent call must send nothing, not even a heartbeat"
        assert not call.done(), "a silent call stays open"
        assert sim.stats.silenced == 1
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        # ...and a new call resumed from the last token is served (then silent again).
        request = dropcopy_pb2.CreateDropCopySubscriptionRequest(
            resume_token=received[-1].resume_token, firms=ALL_FIRMS
        )
        again = stub.CreateDropCopySubscription(request, metadata=md(sim))
        more = [await again.read() for _ in range(3)]
        again.cancel()
        truth = [e.id for e in sim.ground_truth("executions")]
        assert ids(received + more) == truth[: len(ids(received + more))]

    run(test)


def test_maintenance_window_closes_open_calls_refuses_new_ones_then_tokens_resume() -> None:
    async def test(sim: DropCopySimulator, stub: Any) -> None:
        call = stub.CreateDropCopySubscription(REPLAY, metadata=md(sim))
        first = [await call.read() for _ in range(2)]
        now = time.time()
        sim.faults.maintenance = ((now - 1, now + 3600),)
        with pytest.raises(grpc.aio.AioRpcError) as closed:
            while True:
                first.append(await call.read())
        assert closed.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "maintenance" in (closed.value.details() or "")
        sim.faults.maintenance_code = grpc.StatusCode.INTERNAL  # any code is possible
        resume = dropcopy_pb2.CreateDropCopySubscriptionRequest(
            resume_token=first[-1].resume_token, firms=ALL_FIRMS
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CreateDropCopySubscription(resume, metadata=md(sim)).read()
        assert refused.value.code() == grpc.StatusCode.INTERNAL
        assert sim.stats.maintenance_refusals == 2
        sim.faults.maintenance = ((now - 3600, now - 1),)  # the window is over
        rest = await read_all(stub.CreateDropCopySubscription(resume, metadata=md(sim)))
        assert ids(first) + ids(rest) == [e.id for e in sim.ground_truth("executions")]
        assert sim.stats.maintenance_refusals == 2

    run(test)
