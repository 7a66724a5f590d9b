"""The DropCopy simulator's stream semantics, seen by real gRPC clients on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from bridge.sim.dropcopy import DropCopySimulator, SimConfig
from polymarket.v1 import dropcopy_pb2, dropcopy_pb2_grpc

ALL_FIRMS = ["firms/acme-capital", "firms/bluefin-trading", "firms/cobalt-markets"]
PARTICIPANT = "firms/acme-capital/users/alice"
EPOCH = Timestamp(seconds=0)


def run(test: Callable[[DropCopySimulator], Coroutine[Any, Any, None]], **config: Any) -> None:
    """Start a simulator with `config`, run `test(sim)` against it, stop it."""
    defaults: dict[str, Any] = {"seed": 3, "prefill": 3000, "heartbeat_s": 0.05, "batch": 50}

    async def main() -> None:
        sim = DropCopySimulator(SimConfig(**{**defaults, **config}))
        await sim.start()
        try:
            await asyncio.wait_for(test(sim), 20)
        finally:
            await sim.stop()

    asyncio.run(main())


def metadata(sim: DropCopySimulator, participant: str = PARTICIPANT) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {sim.issue_token()}"), ("x-participant-id", participant)]


def stub(channel: grpc.aio.Channel) -> dropcopy_pb2_grpc.DropCopyAPIStub:
    return dropcopy_pb2_grpc.DropCopyAPIStub(channel)


async def read_until_heartbeat(call: Any, field: str, max_responses: int = 10_000) -> list[Any]:
    """Responses up to and including the first one with no records."""
    responses = []
    while True:
        response = await call.read()
        assert response is not grpc.aio.EOF
        responses.append(response)
        if not getattr(response, field) or len(responses) >= max_responses:
            return responses


def truth_after(sim: DropCopySimulator, stream: str, head: int) -> list[Any]:
    """Ground-truth messages of `stream` with sequence number > head."""
    everything = sim.ground_truth(stream)
    seqs = [seq for seq, _, _ in sim.ground_truth_records(stream)]
    return [message for seq, message in zip(seqs, everything, strict=True) if seq > head]


def records(responses: list[Any], field: str) -> list[Any]:
    return [record for response in responses for record in getattr(response, field)]


def test_resume_by_token_continues_exactly_after_the_response() -> None:
    async def test(sim: DropCopySimulator) -> None:
        truth = [e.id for e in sim.ground_truth("executions")]
        async with grpc.aio.insecure_channel(sim.address) as channel:
            request = dropcopy_pb2.CreateDropCopySubscriptionRequest(
                resume_time=EPOCH, firms=ALL_FIRMS
            )
            call = stub(channel).CreateDropCopySubscription(request, metadata=metadata(sim))
            first = await read_until_heartbeat(call, "executions", max_responses=3)
            call.cancel()
            assert all(0 < len(r.executions) <= 50 for r in first)
            request = dropcopy_pb2.CreateDropCopySubscriptionRequest(
                resume_token=first[-1].resume_token, firms=ALL_FIRMS
            )
            call = stub(channel).CreateDropCopySubscription(request, metadata=metadata(sim))
            rest = await read_until_heartbeat(call, "executions")
            call.cancel()
        received = [e.id for e in records(first + rest, "executions")]
        assert received == truth
        assert rest[-1].resume_token  # the heartbeat carries the token too

    run(test)


def test_resume_by_time_returns_every_record_from_that_time() -> None:
    async def test(sim: DropCopySimulator) -> None:
        held = sim.ground_truth_records("position_changes")
        middle_us = held[len(held) // 2][1]
        expected = [payload for _, time_us, payload in held if time_us >= middle_us]
        resume_time = Timestamp()
        resume_time.FromMicroseconds(middle_us)
        async with grpc.aio.insecure_channel(sim.address) as channel:
            request = dropcopy_pb2.CreatePositionChangeSubscriptionRequest(
                resume_time=resume_time, firms=ALL_FIRMS
            )
            call = stub(channel).CreatePositionChangeSubscription(request, metadata=metadata(sim))
            responses = await read_until_heartbeat(call, "position_changes")
            call.cancel()
        got = [r.SerializeToString() for r in records(responses, "position_changes")]
        assert got == expected

    run(test)


def test_without_resume_fields_only_new_records_arrive() -> None:
    async def test(sim: DropCopySimulator) -> None:
        head = sim.head("executions")
        async with grpc.aio.insecure_channel(sim.address) as channel:
            request = dropcopy_pb2.CreateDropCopySubscriptionRequest(firms=ALL_FIRMS)
            call = stub(channel).CreateDropCopySubscription(request, metadata=metadata(sim))
            first = await call.read()
            assert not first.executions  # live only: nothing from the prefill
            await sim.generate(300)
            responses = await read_until_heartbeat(call, "executions")
            call.cancel()
        expected = truth_after(sim, "executions", head)
        assert expected
        assert records(responses, "executions") == expected

    run(test)


def test_symbol_and_firm_filters_select_matching_records() -> None:
    async def test(sim: DropCopySimulator) -> None:
        symbol = sim.ground_truth("trade_captures")[0].aggressor.order.symbol
        firm = "firms/bluefin-trading"
        async with grpc.aio.insecure_channel(sim.address) as channel:
            request = dropcopy_pb2.CreateTradeCaptureReportSubscriptionRequest(
                resume_time=EPOCH, symbols=[symbol], firms=[firm]
            )
            call = stub(channel).CreateTradeCaptureReportSubscription(
                request, metadata=metadata(sim)
            )
            trades = records(
                await read_until_heartbeat(call, "trade_capture_reports"), "trade_capture_reports"
            )
            call.cancel()
        expected = sim.ground_truth("trade_captures", symbols=[symbol], firms=[firm])
        assert trades == expected and trades
        for trade in trades:
            accounts = (trade.aggressor.order.account, trade.passive.order.account)
            assert trade.aggressor.order.symbol == symbol
            assert any(a.startswith(firm + "/") for a in accounts)

    run(test)


def test_empty_firms_means_the_participants_firm() -> None:
    async def test(sim: DropCopySimulator) -> None:
        async with grpc.aio.insecure_channel(sim.address) as channel:
            request = dropcopy_pb2.CreateDropCopySubscriptionRequest(resume_time=EPOCH)
            call = stub(channel).CreateDropCopySubscription(
                request, metadata=metadata(sim, "firms/cobalt-markets/users/zed")
            )
            executions = records(await read_until_heartbeat(call, "executions"), "executions")
            call.cancel()
        assert executions == sim.ground_truth("executions", firms=["firms/cobalt-markets"])
        assert {e.order.account.split("/accounts/")[0] for e in executions} == {
            "firms/cobalt-markets"
        }

    run(test)


def test_heartbeat_tokens_advance_and_resume_after_the_quiet_period() -> None:
    async def test(sim: DropCopySimulator) -> None:
        head = sim.head("executions")
        async with grpc.aio.insecure_channel(sim.address) as channel:
            request = dropcopy_pb2.CreateDropCopySubscriptionRequest(firms=ALL_FIRMS)
            call = stub(channel).CreateDropCopySubscription(request, metadata=metadata(sim))
            beats = [await call.read() for _ in range(3)]
            call.cancel()
            assert all(not b.executions and b.resume_token for b in beats)
            await sim.generate(200)
            request = dropcopy_pb2.CreateDropCopySubscriptionRequest(
                resume_token=beats[-1].resume_token, firms=ALL_FIRMS
            )
            call = stub(channel).CreateDropCopySubscription(request, metadata=metadata(sim))
            responses = await read_until_heartbeat(call, "executions")
            call.cancel()
        expected = truth_after(sim, "executions", head)
        assert records(responses, "executions") == expected

    run(test, prefill=500)


def instruments_request(
    **fields: Any,
) -> dropcopy_pb2.CreateInstrumentStateChangeSubscriptionRequest:
    return dropcopy_pb2.CreateInstrumentStateChangeSubscriptionRequest(**fields)


def test_instrument_stream_sends_current_snapshot_then_changes() -> None:
    async def test(sim: DropCopySimulator) -> None:
        latest: dict[str, Any] = {}
        for instrument in sim.ground_truth("instrument_states"):
            latest[instrument.symbol] = instrument
        token = [("authorization", f"Bearer {sim.issue_token(['read:instruments'])}")]
        head = sim.head("instrument_states")
        async with grpc.aio.insecure_channel(sim.address) as channel:
            call = stub(channel).CreateInstrumentStateChangeSubscription(
                instruments_request(), metadata=token
            )
            snapshot = await read_until_heartbeat(call, "instruments")
            assert records(snapshot, "instruments") == [latest[s] for s in sorted(latest)]
            while sim.head("instrument_states") == head:
                await sim.generate(100)
            changes = await read_until_heartbeat(call, "instruments")
            call.cancel()
        assert records(changes, "instruments") == truth_after(sim, "instrument_states", head)

    run(test, batch=5)


def test_resumed_instrument_stream_snapshot_is_the_state_at_the_token() -> None:
    async def test(sim: DropCopySimulator) -> None:
        token = [("authorization", f"Bearer {sim.issue_token(['read:instruments'])}")]
        async with grpc.aio.insecure_channel(sim.address) as channel:
            call = stub(channel).CreateInstrumentStateChangeSubscription(
                instruments_request(symbols=[]), metadata=token
            )
            first = await read_until_heartbeat(call, "instruments")
            call.cancel()
            state_then = records(first, "instruments")
            head = sim.head("instrument_states")
            while sim.head("instrument_states") < head + 10:
                await sim.generate(200)
            call = stub(channel).CreateInstrumentStateChangeSubscription(
                instruments_request(resume_token=first[-1].resume_token), metadata=token
            )
            received = records(await read_until_heartbeat(call, "instruments"), "instruments")
            call.cancel()
        # The snapshot (one page here) is the state at the token, then come the changes.
        snapshot, changes = received[: len(state_then)], received[len(state_then) :]
        assert snapshot == state_then
        assert changes == truth_after(sim, "instrument_states", head)

    run(test, batch=100)


def test_both_resume_fields_is_invalid_argument() -> None:
    async def test(sim: DropCopySimulator) -> None:
        async with grpc.aio.insecure_channel(sim.address) as channel:
            request = dropcopy_pb2.CreateDropCopySubscriptionRequest(
                resume_time=EPOCH, resume_token=b"x"
            )
            call = stub(channel).CreateDropCopySubscription(request, metadata=metadata(sim))
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await call.read()
            assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    run(test, prefill=0)


async def expect_status(call_once: Callable[[], Awaitable[Any]]) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await call_once()
    code: grpc.StatusCode = failure.value.code()
    return code


@pytest.mark.parametrize("refused_code", ["FAILED_PRECONDITION", "NOT_FOUND"])
def test_tokens_and_times_beyond_retention_are_refused(refused_code: str) -> None:
    async def test(sim: DropCopySimulator) -> None:
        sim.faults.token_refused_code = grpc.StatusCode[refused_code]
        async with grpc.aio.insecure_channel(sim.address) as channel:
            request = dropcopy_pb2.CreateDropCopySubscriptionRequest(
                resume_time=EPOCH, firms=ALL_FIRMS
            )
            call = stub(channel).CreateDropCopySubscription(request, metadata=metadata(sim))
            old = await call.read()
            call.cancel()
            await sim.generate(4000)  # more than retention + trim slack
            assert sim.ground_truth_records("executions")[0][0] > 100
            stale = dropcopy_pb2.CreateDropCopySubscriptionRequest(resume_token=old.resume_token)
            code = await expect_status(
                lambda: (
                    stub(channel).CreateDropCopySubscription(stale, metadata=metadata(sim)).read()
                )
            )
            assert code == grpc.StatusCode[refused_code]
            call = stub(channel).CreateDropCopySubscription(request, metadata=metadata(sim))
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await call.read()
            assert failure.value.code() == grpc.StatusCode.OUT_OF_RANGE
            assert "retention" in (failure.value.details() or "")

    run(test, prefill=50, retention_records=100)


def test_foreign_or_tampered_token_is_invalid_argument() -> None:
    async def test(sim: DropCopySimulator) -> None:
        async with grpc.aio.insecure_channel(sim.address) as channel:
            request = dropcopy_pb2.CreatePositionChangeSubscriptionRequest(resume_time=EPOCH)
            call = stub(channel).CreatePositionChangeSubscription(request, metadata=metadata(sim))
            token = (await call.read()).resume_token
            call.cancel()
            foreign = dropcopy_pb2.CreateDropCopySubscriptionRequest(resume_token=token)
            code = await expect_status(
                lambda: (
                    stub(channel).CreateDropCopySubscription(foreign, metadata=metadata(sim)).read()
                )
            )
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            tampered = dropcopy_pb2.CreatePositionChangeSubscriptionRequest(
                resume_token=token[:-1] + bytes([token[-1] ^ 1])
            )
            code = await expect_status(
                lambda: (
                    stub(channel)
                    .CreatePositionChangeSubscription(tampered, metadata=metadata(sim))
                    .read()
                )
            )
            assert code == grpc.StatusCode.INVALID_ARGUMENT

    run(test, prefill=500)


RATE = 2000.0
RATE_WINDOW_S = 2.0
"""How long the generation rate is measured: the generator catches up to wall-clock time
every 10 ms tick, so only a late last tick (a loaded machine) makes the count fall short."""


def test_live_generation_at_rate_reaches_subscribers() -> None:
    """Records are generated at the configured rate (measured over `RATE_WINDOW_S`), and a
    subscriber receives them live."""

    async def test(sim: DropCopySimulator) -> None:
        loop = asyncio.get_running_loop()
        async with grpc.aio.insecure_channel(sim.address) as channel:
            request = dropcopy_pb2.CreateDropCopySubscriptionRequest(firms=ALL_FIRMS)
            call = stub(channel).CreateDropCopySubscription(request, metadata=metadata(sim))
            received = 0
            while received < 50:
                received += len((await call.read()).executions)
            call.cancel()
        generated, started = sim.stats.generated, loop.time()
        await asyncio.sleep(RATE_WINDOW_S)  # the measurement's window, not a synchronisation
        rate = (sim.stats.generated - generated) / (loop.time() - started)
        assert 0.8 * RATE <= rate <= 1.1 * RATE, rate

    run(test, prefill=0, rate=RATE)


def test_max_records_stops_generation_then_only_heartbeats() -> None:
    async def test(sim: DropCopySimulator) -> None:
        while sim.stats.generated < 300:
            await asyncio.sleep(0.01)
        head = sim.head("executions")
        async with grpc.aio.insecure_channel(sim.address) as channel:
            request = dropcopy_pb2.CreateDropCopySubscriptionRequest(firms=ALL_FIRMS)
            call = stub(channel).CreateDropCopySubscription(request, metadata=metadata(sim))
            beats = [await call.read() for _ in range(4)]
            call.cancel()
        assert all(not b.executions for b in beats)
        assert sim.head("executions") == head
        assert 300 <= sim.stats.generated < 320

    run(test, prefill=0, rate=5000.0, max_records=300)
