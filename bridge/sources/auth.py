"""Access tokens for the exchange's gRPC API (`authorization: Bearer <token>`).

Two providers behind one protocol:
- `StaticToken`: a token from an environment variable or a file, read at every use (so a
  rotated file is picked up), for development;
- `PrivateKeyJwtProvider`: the exchange's OAuth client-credentials grant with a Private Key
  JWT client assertion (RFC 7523): mints an RS256 assertion (iss = sub = client_id,
  aud = token URL, 60 s lifetime, unique jti), POSTs it to the token URL, caches the access
  token and mints a new one `refresh_margin_s` before it expires.

Call `invalidate()` after the exchange answers UNAUTHENTICATED so the next `token()` mints a
fresh one. Tokens, keys and assertions never appear in logs, errors or reprs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Protocol

from bridge.errors import AuthError, ConfigError, UpstreamError

log = logging.getLogger(__name__)

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# Lifetime of our client assertions: the exchange allows at most 5 minutes; one minute
# leaves room for clock skew while keeping a leaked assertion nearly useless.
_ASSERTION_LIFETIME_S = 60
# Token endpoint calls are small; a slow identity provider should fail the attempt (and be
# retried by the caller's backoff) rather than hang a stream's reconnect.
_HTTP_TIMEOUT_S = 15.0
# Longest piece of an error body quoted in an error message (bodies hold no secrets, but
# may be HTML error pages).
_MAX_ERROR_TEXT = 200


class TokenProvider(Protocol):
    """Source of access tokens for `authorization: Bearer` metadata."""

    async def token(self) -> str:
        """A currently valid access token."""
        ...

    def invalidate(self) -> None:
        """Forget any cached token: the server refused it."""
        ...


class StaticToken:
    """An access token from an environment variable (`env`) or a file (`path`), stripped."""

    def __init__(self, env: str | None = None, path: str | Path | None = None) -> None:
        if (env is None) == (path is None):
            raise ConfigError("static token: set exactly one of an env var name or a file path")
        self._env = env
        self._path = Path(path) if path is not None else None

    def __repr__(self) -> str:
        source = f"env={self._env}" if self._env else f"path={self._path}"
        return f"StaticToken({source})"

    async def token(self) -> str:
        if self._env is not None:
            value = os.environ.get(self._env, "").strip()
            if not value:
                raise AuthError(
                    f"environment variable {self._env} holds no access token",
                    reason="token_missing",
                )
            return value
        assert self._path is not None
        try:
            value = (await asyncio.to_thread(self._path.read_text, encoding="utf-8")).strip()
        except OSError as exc:
            raise AuthError(
                f"cannot read access token file {self._path}: {exc.strerror}",
                reason="token_missing",
            ) from exc
        if not value:
            raise AuthError(f"access token file {self._path} is empty", reason="token_missing")
        return value

    def invalidate(self) -> None:
        """Nothing cached: the next `token()` reads the source again."""


class PrivateKeyJwtProvider:
    """OAuth client-credentials with a Private Key JWT assertion; caches and renews tokens."""

    def __init__(
        self,
        client_id: str,
        private_key_pem: bytes | str | None = None,
        token_url: str = "",
        audience: str = "",
        refresh_margin_s: float = 30.0,
        *,
        private_key_path: str | Path | None = None,
        ca_file: str | Path | None = None,
    ) -> None:
        """`private_key_pem` is the PEM itself or a path to it; `private_key_path` is a path
        (read once, here). `ca_file` verifies an HTTPS token URL (system roots when None)."""
        if not client_id or not token_url or not audience:
            raise ConfigError("private_key_jwt: client_id, token_url and audience are required")
        self._client_id = client_id
        self._key = self._load_key(private_key_pem, private_key_path)
        self._token_url = token_url
        self._audience = audience
        self._refresh_margin_s = refresh_margin_s
        self._ssl: ssl.SSLContext | None = None
        if token_url.startswith("https://"):
            self._ssl = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        self._cached: tuple[str, float] | None = None  # (access token, monotonic expiry)
        self._lock = asyncio.Lock()
        self.mints = 0
        """Access tokens obtained so far (for metrics and tests)."""

    def __repr__(self) -> str:
        return f"PrivateKeyJwtProvider(client_id={self._client_id}, token_url={self._token_url})"

    @staticmethod
    def _load_key(pem: bytes | str | None, path: str | Path | None) -> bytes:
        if pem is not None and path is None:
            text = pem.encode() if isinstance(pem, str) else pem
            if b"-----BEGIN" in text:
                return text
            path = Path(text.decode())
        if path is None:
            raise ConfigError("private_key_jwt: a private key (PEM or file path) is required")
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"private_key_jwt: cannot read private key file {path}: {exc.strerror}"
            ) from exc

    async def token(self) -> str:
        async with self._lock:
            cached = self._cached
            if cached is not None and time.monotonic() < cached[1] - self._refresh_margin_s:
                return cached[0]
            access_token, expires_in = await asyncio.to_thread(self._mint)
            self._cached = (access_token, time.monotonic() + expires_in)
            self.mints += 1
            log.info(
                "access token obtained client_id=%s expires_in=%ss", self._client_id, expires_in
            )
            return access_token

    def invalidate(self) -> None:
        self._cached = None

    def _assertion(self) -> str:
        # Imported here, not at the top: PyJWT and cryptography are about a third of the
        # bridge's imports, and only private_key_jwt needs them (docs/benchmarks.md).
        import jwt

        now = int(time.time())
        claims = {
            "iss": self._client_id,
            "sub": self._client_id,
            "aud": self._token_url,
            "iat": now,
            "exp": now + _ASSERTION_LIFETIME_S,
            "jti": uuid.uuid4().hex,
        }
        try:
            return jwt.encode(claims, self._key, algorithm="RS256")
        except (ValueError, TypeError, jwt.PyJWTError) as exc:
            raise AuthError(
                "private_key_jwt: the private key cannot sign RS256 assertions",
                reason="bad_private_key",
            ) from exc

    def _mint(self) -> tuple[str, float]:
        body = json.dumps(
            {
                "grant_type": "client_credentials",
                "client_id": self._client_id,
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": self._assertion(),
                "audience": self._audience,
            }
        ).encode()
        request = urllib.request.Request(
            self._token_url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=_HTTP_TIMEOUT_S, context=self._ssl) as r:
                payload = json.loads(r.read())
        except urllib.error.HTTPError as exc:
            raise self._refusal(exc) from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise UpstreamError(
                f"token endpoint {self._token_url} unreachable: {reason}",
                reason="token_endpoint_unavailable",
            ) from exc
        except ValueError as exc:
            raise UpstreamError(
                f"token endpoint {self._token_url} answered with invalid JSON",
                reason="token_endpoint_bad_response",
            ) from exc
        return self._parse(payload)

    def _parse(self, payload: Any) -> tuple[str, float]:
        if not isinstance(payload, dict):
            payload = {}
        access_token = payload.get("access_token")
        expires_in = payload.get("expires_in")
        token_type = str(payload.get("token_type", "Bearer"))
        if (
            not isinstance(access_token, str)
            or not access_token
            or not isinstance(expires_in, int | float)
            or token_type.lower() != "bearer"
        ):
            raise UpstreamError(
                f"token endpoint {self._token_url} answered without a bearer access_token "
                "and expires_in",
                reason="token_endpoint_bad_response",
            )
        return access_token, float(expires_in)

    def _refusal(self, exc: urllib.error.HTTPError) -> UpstreamError:
        try:
            detail = json.loads(exc.read())
            text = f"{detail.get('error', '?')}: {detail.get('error_description', '')}"
        except (ValueError, AttributeError, OSError):
            text = exc.reason if isinstance(exc.reason, str) else "no detail"
        text = text[:_MAX_ERROR_TEXT]
        message = (
            f"token endpoint {self._token_url} refused client {self._client_id} "
            f"(HTTP {exc.code}: {text})"
        )
        if exc.code in (400, 401, 403):
            return AuthError(message, reason="token_refused")
        return UpstreamError(message, reason="token_endpoint_unavailable")
