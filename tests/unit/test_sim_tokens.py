"""The simulator's token endpoint: Private Key JWT client assertions over real HTTP."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import jwt
import pytest

from bridge.sim.tokens import (
    ASSERTION_TYPE,
    AccessTokenError,
    AccessTokens,
    ClientCredentialsGrant,
    ClientRegistration,
    TokenEndpoint,
    generate_client_key,
)

AUDIENCE = "https://api.test.example"
PRIVATE_PEM, PUBLIC_PEM = generate_client_key()
OTHER_PRIVATE_PEM, _ = generate_client_key()


@pytest.fixture(scope="module")
def endpoint() -> Iterator[tuple[TokenEndpoint, AccessTokens]]:
    tokens = AccessTokens(b"s" * 32, AUDIENCE, lifetime_s=180)
    grant = ClientCredentialsGrant(
        tokens, {"c1": ClientRegistration("c1", PUBLIC_PEM, ("read:dropcopy",))}
    )
    server = TokenEndpoint(grant)
    server.start()
    yield server, tokens
    server.stop()


def assertion(url: str, key: bytes = PRIVATE_PEM, **overrides: Any) -> str:
    now = int(time.time())
    claims = {"iss": "c1", "sub": "c1", "aud": url, "iat": now, "exp": now + 60}
    claims["jti"] = uuid.uuid4().hex
    claims.update(overrides)
    return jwt.encode(claims, key, algorithm="RS256")


def post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def body(client_assertion: str, **overrides: Any) -> dict[str, Any]:
    return {
        "grant_type": "client_credentials",
        "client_id": "c1",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": client_assertion,
        "audience": AUDIENCE,
        **overrides,
    }


def test_good_assertion_gets_a_bearer_token_with_the_clients_scopes(
    endpoint: tuple[TokenEndpoint, AccessTokens],
) -> None:
    server, tokens = endpoint
    status, answer = post(server.url, body(assertion(server.url)))
    assert status == 200
    assert answer["token_type"] == "Bearer" and answer["expires_in"] == 180
    claims = tokens.verify(answer["access_token"])
    assert claims.scopes == {"read:dropcopy"} and claims.subject == "c1"


@pytest.mark.parametrize(
    ("make_body", "status", "error"),
    [
        (lambda url: body(assertion(url, OTHER_PRIVATE_PEM)), 401, "invalid_client"),
        (lambda url: body(assertion("https://elsewhere/oauth/token")), 401, "invalid_client"),
        (
            lambda url: body(assertion(url, exp=int(time.time()) + 600)),
            401,
            "invalid_client",
        ),
        (lambda url: body(assertion(url, exp=int(time.time()) - 60)), 401, "invalid_client"),
        (lambda url: body(assertion(url, sub="c2")), 401, "invalid_client"),
        (lambda url: body(assertion(url), client_id="c9"), 401, "invalid_client"),
        (lambda url: body(assertion(url), grant_type="password"), 400, "unsupported_grant_type"),
        (lambda url: body(assertion(url), audience="https://x"), 400, "invalid_request"),
        (lambda url: body(assertion(url), client_assertion_type="x"), 400, "invalid_request"),
    ],
    ids=[
        "bad-signature",
        "wrong-aud",
        "exp-too-far",
        "expired",
        "sub-not-client",
        "unknown-client",
        "grant-type",
        "audience",
        "assertion-type",
    ],
)
def test_bad_requests_get_oauth_errors(
    endpoint: tuple[TokenEndpoint, AccessTokens], make_body: Any, status: int, error: str
) -> None:
    server, _ = endpoint
    got_status, answer = post(server.url, make_body(server.url))
    assert (got_status, answer["error"]) == (status, error)
    assert "access_token" not in answer


def test_replayed_jti_is_refused(endpoint: tuple[TokenEndpoint, AccessTokens]) -> None:
    server, _ = endpoint
    once = assertion(server.url)
    assert post(server.url, body(once))[0] == 200
    status, answer = post(server.url, body(once))
    assert (status, answer["error"]) == (401, "invalid_client")
    assert "jti" in answer["error_description"]


def test_access_tokens_verify_scope_expiry_and_signature() -> None:
    tokens = AccessTokens(b"k" * 32, AUDIENCE)
    claims = tokens.verify(tokens.issue(["read:positions"], participant="firms/a/users/b"))
    assert claims.scopes == {"read:positions"} and claims.participant == "firms/a/users/b"
    with pytest.raises(AccessTokenError, match="expired"):
        tokens.verify(tokens.issue(lifetime_s=-10))
    with pytest.raises(AccessTokenError, match="invalid"):
        AccessTokens(b"o" * 32, AUDIENCE).verify(tokens.issue())
