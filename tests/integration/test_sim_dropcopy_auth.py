"""Auth on the DropCopy simulator: bearer tokens, scopes, participants, the OAuth token
endpoint (Private Key JWT) and the bridge's client-side token providers against it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import grpc
import pytest

from bridge.errors import AuthError, UpstreamError
from bridge.sim.dropcopy import DropCopySimulator, SimConfig
from bridge.sim.tokens import generate_client_key
from bridge.sources.auth import PrivateKeyJwtProvider, StaticToken
from polymarket.v1 import dropcopy_pb2, dropcopy_pb2_grpc

PARTICIPANT = ("x-participant-id", "firms/acme-capital/users/alice")
EXECUTIONS = dropcopy_pb2.CreateDropCopySubscriptionRequest()
INSTRUMENTS = dropcopy_pb2.CreateInstrumentStateChangeSubscriptionRequest()


def run(test: Callable[[DropCopySimulator], Coroutine[Any, Any, None]], **config: Any) -> None:
    async def main() -> None:
        sim = DropCopySimulator(SimConfig(**{"prefill": 300, "heartbeat_s": 0.05, **config}))
        await sim.start()
        try:
            await asyncio.wait_for(test(sim), 20)
        finally:
            await sim.stop()

    asyncio.run(main())


async def first_response(
    sim: DropCopySimulator, metadata: list[tuple[str, str]], instruments: bool = False
) -> Any:
    """The first response of a call, or the status code it failed with."""
    credentials = None
    if sim.ca_cert_pem is not None:
        credentials = grpc.ssl_channel_credentials(sim.ca_cert_pem)
    channel = (
        grpc.aio.secure_channel(f"localhost:{sim.port}", credentials)
        if credentials
        else grpc.aio.insecure_channel(sim.address)
    )
    async with channel:
        stub = dropcopy_pb2_grpc.DropCopyAPIStub(channel)
        if instruments:
            call = stub.CreateInstrumentStateChangeSubscription(INSTRUMENTS, metadata=metadata)
        else:
            call = stub.CreateDropCopySubscription(EXECUTIONS, metadata=metadata)
        try:
            return await call.read()
        except grpc.aio.AioRpcError as failure:
            return failure.code()
        finally:
            call.cancel()


@pytest.mark.parametrize(
    ("make_metadata", "code"),
    [
        (lambda sim: [PARTICIPANT], grpc.StatusCode.UNAUTHENTICATED),
        (lambda sim: [("authorization", "Bearer nonsense"), PARTICIPANT], "UNAUTHENTICATED"),
        (
            lambda sim: [
                ("authorization", f"Bearer {sim.issue_token(lifetime_s=-30)}"),
                PARTICIPANT,
            ],
            "UNAUTHENTICATED",
        ),
        (
            lambda sim: [
                ("authorization", f"Bearer {sim.issue_token(['read:positions'])}"),
                PARTICIPANT,
            ],
            "PERMISSION_DENIED",
        ),
        (lambda sim: [("authorization", f"Bearer {sim.issue_token()}")], "INVALID_ARGUMENT"),
        (
            lambda sim: [
                ("authorization", f"Bearer {sim.issue_token()}"),
                ("x-participant-id", "acme/alice"),
            ],
            "INVALID_ARGUMENT",
        ),
        (
            lambda sim: [
                ("authorization", f"Bearer {sim.issue_token(participant='firms/x/users/y')}"),
                PARTICIPANT,
            ],
            "PERMISSION_DENIED",
        ),
    ],
    ids=[
        "no-token",
        "bad-token",
        "expired",
        "missing-scope",
        "no-participant",
        "bad-participant",
        "other-participant",
    ],
)
def test_calls_without_valid_credentials_are_refused(
    make_metadata: Callable[[DropCopySimulator], list[tuple[str, str]]], code: Any
) -> None:
    async def test(sim: DropCopySimulator) -> None:
        got = await first_response(sim, make_metadata(sim))
        assert got == grpc.StatusCode[code] if isinstance(code, str) else got == code

    run(test)


def test_instrument_stream_needs_its_scope_but_no_participant() -> None:
    async def test(sim: DropCopySimulator) -> None:
        good = [("authorization", f"Bearer {sim.issue_token(['read:instruments'])}")]
        response = await first_response(sim, good, instruments=True)
        assert response.instruments
        wrong = [("authorization", f"Bearer {sim.issue_token(['read:dropcopy'])}")]
        assert await first_response(sim, wrong, True) == grpc.StatusCode.PERMISSION_DENIED

    run(test)


def test_token_expiring_during_an_open_stream_does_not_end_it() -> None:
    async def test(sim: DropCopySimulator) -> None:
        token = sim.issue_token(lifetime_s=1)
        expires_at = int(time.time()) + 1
        async with grpc.aio.insecure_channel(sim.address) as channel:
            stub = dropcopy_pb2_grpc.DropCopyAPIStub(channel)
            call = stub.CreateDropCopySubscription(
                dropcopy_pb2.CreateDropCopySubscriptionRequest(firms=["firms/acme-capital"]),
                metadata=[("authorization", f"Bearer {token}"), PARTICIPANT],
            )
            while time.time() <= expires_at + 0.2:  # heartbeats pace this wait
                assert not (await call.read()).executions
            await sim.generate(200)
            while not (await call.read()).executions:
                pass
            call.cancel()
        refused = await first_response(sim, [("authorization", f"Bearer {token}"), PARTICIPANT])
        assert refused == grpc.StatusCode.UNAUTHENTICATED

    run(test, prefill=0)


def test_private_key_jwt_provider_gets_tokens_the_streams_accept(tmp_path: Path) -> None:
    async def test(sim: DropCopySimulator) -> None:
        key_path = sim.create_client("bridge-test")
        provider = PrivateKeyJwtProvider(
            "bridge-test",
            private_key_path=key_path,
            token_url=sim.token_url,
            audience=sim.api_audience,
            ca_file=sim.ca_path,
        )
        token = await provider.token()
        assert await provider.token() == token and provider.mints == 1  # cached
        response = await first_response(sim, [("authorization", f"Bearer {token}"), PARTICIPANT])
        assert not isinstance(response, grpc.StatusCode)
        provider.invalidate()
        assert await provider.token() != token and provider.mints == 2
        assert "BEGIN" not in repr(provider) and "bridge-test" in repr(provider)

    run(test, tls=True, files_dir=tmp_path)


def test_private_key_jwt_provider_renews_before_expiry() -> None:
    async def test(sim: DropCopySimulator) -> None:
        key_path = sim.create_client("short-lived")
        provider = PrivateKeyJwtProvider(
            "short-lived", str(key_path), sim.token_url, sim.api_audience, refresh_margin_s=1.5
        )
        first = await provider.token()
        deadline = time.monotonic() + 5
        # Lifetime 2 s, margin 1.5 s: a new token is minted about 0.5 s later.
        while provider.mints < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            await provider.token()
        assert provider.mints == 2
        assert await provider.token() != first

    run(test, token_lifetime_s=2)


def test_private_key_jwt_provider_errors_carry_no_secrets() -> None:
    async def test(sim: DropCopySimulator) -> None:
        private_pem, _ = generate_client_key()
        unknown = PrivateKeyJwtProvider(
            "nobody", private_pem, sim.token_url, sim.api_audience, refresh_margin_s=0
        )
        with pytest.raises(AuthError) as refused:
            await unknown.token()
        assert "invalid_client" in str(refused.value)
        assert "BEGIN" not in str(refused.value) and "eyJ" not in str(refused.value)
        unreachable = PrivateKeyJwtProvider(
            "nobody", private_pem, "http://127.0.0.1:9/oauth/token", sim.api_audience
        )
        with pytest.raises(UpstreamError) as down:
            await unreachable.token()
        assert down.value.retriable and not isinstance(down.value, AuthError)

    run(test, prefill=0)


def test_static_token_reads_env_or_file_at_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIM_TEST_TOKEN", "  abc \n")
    path = tmp_path / "token"
    path.write_text("first\n")
    from_env = StaticToken(env="SIM_TEST_TOKEN")
    from_file = StaticToken(path=path)

    async def check() -> None:
        assert await from_env.token() == "abc"
        assert await from_file.token() == "first"
        path.write_text("second")
        assert await from_file.token() == "second"
        monkeypatch.setenv("SIM_TEST_TOKEN", "")
        with pytest.raises(AuthError):
            await from_env.token()

    asyncio.run(check())
    assert "abc" not in repr(from_env) and "second" not in repr(from_file)
