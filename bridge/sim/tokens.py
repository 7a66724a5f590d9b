"""The simulator's OAuth side: access tokens and the `POST /oauth/token` endpoint.

Access tokens are HS256 JWTs signed with a per-simulator secret, carrying `scope`
(space-separated), `aud` (the API audience), `iat` and `exp`.

The token endpoint implements the exchange's Private Key JWT client-credentials flow
(RFC 7523, as Auth0 does it): a JSON body with `grant_type=client_credentials`, `client_id`,
`client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`,
`client_assertion` (RS256 JWT with iss = sub = client_id, aud = the token URL, iat, exp at most
5 minutes after iat, unique jti) and `audience`. The assertion is verified against the public
key registered for the client; a jti is accepted once. Errors are OAuth JSON errors:
400 `invalid_request` / `unsupported_grant_type` / `invalid_grant`, 401 `invalid_client`.
"""

from __future__ import annotations

import json
import logging
import secrets
import ssl
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

log = logging.getLogger(__name__)

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
DEFAULT_API_AUDIENCE = "https://api.sim.polymarketexchange.com"
ALL_SCOPES: tuple[str, ...] = (
    "read:dropcopy",
    "read:instruments",
    "read:positions",
    "read:reports",
    "read:orders",
)
# The exchange's documentation: a client assertion may live at most 5 minutes.
MAX_ASSERTION_LIFETIME_S = 300
# Clock skew tolerated on assertion iat/exp, as identity providers usually allow.
_ASSERTION_LEEWAY_S = 5
# Largest request body read; an assertion is ~1 KB, anything much bigger is abuse.
_MAX_BODY_BYTES = 64 * 1024


class AccessTokenError(Exception):
    """An access token was missing, malformed, badly signed or expired."""


@dataclass(frozen=True, slots=True)
class AccessClaims:
    subject: str
    scopes: frozenset[str]
    expires_at: int
    participant: str | None
    """When set, the token may only be used with this `x-participant-id`."""


class AccessTokens:
    """Issues and verifies the simulator's access tokens."""

    def __init__(
        self, secret: bytes, audience: str = DEFAULT_API_AUDIENCE, lifetime_s: int = 180
    ) -> None:
        self._secret = secret
        self.audience = audience
        self.lifetime_s = lifetime_s

    def issue(
        self,
        scopes: Iterable[str] = ALL_SCOPES,
        *,
        subject: str = "sim-test-client",
        lifetime_s: int | None = None,
        participant: str | None = None,
    ) -> str:
        """A signed access token; a negative lifetime gives an already expired one."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": "polybridge-sim",
            "sub": subject,
            "aud": self.audience,
            "iat": now,
            "exp": now + (self.lifetime_s if lifetime_s is None else lifetime_s),
            "scope": " ".join(scopes),
            "jti": secrets.token_hex(8),
        }
        if participant is not None:
            claims["participant"] = participant
        return jwt.encode(claims, self._secret, algorithm="HS256")

    def verify(self, token: str) -> AccessClaims:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],
                audience=self.audience,
                options={"require": ["exp", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AccessTokenError("access token expired") from exc
        except jwt.PyJWTError as exc:
            raise AccessTokenError("access token invalid") from exc
        participant = claims.get("participant")
        return AccessClaims(
            subject=str(claims["sub"]),
            scopes=frozenset(str(claims.get("scope", "")).split()),
            expires_at=int(claims["exp"]),
            participant=str(participant) if participant is not None else None,
        )


@dataclass(frozen=True, slots=True)
class ClientRegistration:
    """A client allowed to use the token endpoint: its RS256 public key and granted scopes."""

    client_id: str
    public_key_pem: bytes
    scopes: tuple[str, ...] = ALL_SCOPES


def generate_client_key() -> tuple[bytes, bytes]:
    """A fresh RSA-2048 key pair as (private PKCS#8 PEM, public SubjectPublicKeyInfo PEM)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, public_pem


class OAuthError(Exception):
    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description


class ClientCredentialsGrant:
    """Validates token requests; pure logic, no HTTP (the endpoint below wraps it)."""

    def __init__(
        self,
        access_tokens: AccessTokens,
        clients: Mapping[str, ClientRegistration],
        token_url: str = "",
    ) -> None:
        self._tokens = access_tokens
        self._clients = dict(clients)
        self.token_url = token_url
        self._seen_jti: dict[str, float] = {}  # jti -> when it may be forgotten
        self._lock = threading.Lock()

    def register(self, client: ClientRegistration) -> None:
        self._clients[client.client_id] = client

    def _accepted_audiences(self) -> list[str]:
        # Auth0 accepts the token URL and the tenant's base URL as assertion audience.
        base = self.token_url.rsplit("/oauth/token", 1)[0]
        return [self.token_url, base + "/"]

    def handle(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Token response for a parsed JSON body, or raise OAuthError."""
        if body.get("grant_type") != "client_credentials":
            raise OAuthError(400, "unsupported_grant_type", "grant_type must be client_credentials")
        client_id = body.get("client_id")
        assertion = body.get("client_assertion")
        if not isinstance(client_id, str) or not isinstance(assertion, str):
            raise OAuthError(400, "invalid_request", "client_id and client_assertion are required")
        if body.get("client_assertion_type") != ASSERTION_TYPE:
            raise OAuthError(400, "invalid_request", "unsupported client_assertion_type")
        if body.get("audience") != self._tokens.audience:
            raise OAuthError(400, "invalid_request", "unknown audience")
        client = self._clients.get(client_id)
        if client is None:
            raise OAuthError(401, "invalid_client", "unknown client")
        claims = self._verify_assertion(client, assertion)
        expires_at = float(claims["exp"]) + _ASSERTION_LEEWAY_S
        with self._lock:
            now = time.time()
            for jti, forget_at in list(self._seen_jti.items()):
                if forget_at < now:
                    del self._seen_jti[jti]
            if claims["jti"] in self._seen_jti:
                raise OAuthError(401, "invalid_client", "client assertion jti already used")
            self._seen_jti[claims["jti"]] = expires_at
        log.info("token issued client_id=%s", client_id)
        return {
            "access_token": self._tokens.issue(client.scopes, subject=client_id),
            "token_type": "Bearer",
            "expires_in": self._tokens.lifetime_s,
            "scope": " ".join(client.scopes),
        }

    def _verify_assertion(self, client: ClientRegistration, assertion: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                assertion,
                client.public_key_pem,
                algorithms=["RS256"],
                audience=self._accepted_audiences(),
                issuer=client.client_id,
                leeway=_ASSERTION_LEEWAY_S,
                options={"require": ["iss", "sub", "aud", "iat", "exp", "jti"]},
            )
        except jwt.InvalidAudienceError as exc:
            raise OAuthError(401, "invalid_client", "client assertion audience mismatch") from exc
        except jwt.ExpiredSignatureError as exc:
            raise OAuthError(401, "invalid_client", "client assertion expired") from exc
        except jwt.PyJWTError as exc:
            raise OAuthError(401, "invalid_client", f"client assertion invalid: {exc}") from exc
        if claims["sub"] != client.client_id:
            raise OAuthError(401, "invalid_client", "client assertion sub must equal client_id")
        if int(claims["exp"]) - int(claims["iat"]) > MAX_ASSERTION_LIFETIME_S:
            raise OAuthError(401, "invalid_client", "client assertion lifetime exceeds 5 minutes")
        if not isinstance(claims["jti"], str) or not claims["jti"]:
            raise OAuthError(401, "invalid_client", "client assertion jti missing")
        return claims


class TokenEndpoint:
    """`POST /oauth/token` served by the stdlib HTTP server in a daemon thread."""

    def __init__(
        self,
        grant: ClientCredentialsGrant,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._grant = grant
        self._server = ThreadingHTTPServer((host, port), _handler_for(grant))
        self._server.daemon_threads = True
        if ssl_context is not None:
            self._server.socket = ssl_context.wrap_socket(self._server.socket, server_side=True)
        scheme = "https" if ssl_context is not None else "http"
        self.url = f"{scheme}://{host}:{self._server.server_address[1]}/oauth/token"
        grant.token_url = self.url
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="sim-token-endpoint", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()


def _handler_for(grant: ClientCredentialsGrant) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            if self.path.split("?", 1)[0] != "/oauth/token":
                self._reply(404, {"error": "not_found", "error_description": "no such path"})
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
                if length > _MAX_BODY_BYTES:
                    raise OAuthError(400, "invalid_request", "request body too large")
                try:
                    body = json.loads(self.rfile.read(length) or b"null")
                except ValueError as exc:
                    raise OAuthError(400, "invalid_request", "body is not JSON") from exc
                if not isinstance(body, dict):
                    raise OAuthError(400, "invalid_request", "body must be a JSON object")
                self._reply(200, grant.handle(body))
            except OAuthError as exc:
                log.info("token refused status=%d error=%s", exc.status, exc.error)
                self._reply(exc.status, {"error": exc.error, "error_description": exc.description})

        def _reply(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("token endpoint: " + format, *args)

    return Handler
