"""From the settings to the upstreams: the DropCopy gRPC channel, the exchange access
tokens, the Predexon API key (used by `run`, `check` and `backfill`)."""

from __future__ import annotations

import os
from pathlib import Path

import grpc

from bridge.config import DropCopyAuthSettings, DropCopySettings, PredexonSettings
from bridge.errors import ConfigError
from bridge.sources.auth import PrivateKeyJwtProvider, StaticToken, TokenProvider
from bridge.sources.dropcopy.source import open_channel


def dropcopy_channel(dropcopy: DropCopySettings) -> grpc.aio.Channel:
    """The one gRPC channel every DropCopy stream of the configuration shares."""
    return open_channel(
        dropcopy.endpoint,
        tls=dropcopy.tls,
        ca_file=dropcopy.ca_file,
        keepalive_time_s=dropcopy.keepalive_time_s,
        keepalive_timeout_s=dropcopy.keepalive_timeout_s,
    )


def token_provider(auth: DropCopyAuthSettings) -> TokenProvider:
    """The exchange access tokens the configuration asks for."""
    if auth.mode == "static":
        return StaticToken(
            env=None if auth.token_file else auth.token_env, path=auth.token_file or None
        )
    return PrivateKeyJwtProvider(
        client_id=auth.client_id,
        private_key_path=auth.private_key_file,
        token_url=auth.token_url,
        audience=auth.audience,
        refresh_margin_s=auth.refresh_margin_s,
        ca_file=auth.ca_file or None,
    )


def predexon_key(settings: PredexonSettings) -> str:
    """The API key from the configured file or environment variable (never logged)."""
    if settings.api_key_file:
        try:
            key = Path(settings.api_key_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"predexon.api_key_file {settings.api_key_file}: cannot read it ({exc.strerror})"
            ) from None
    else:
        key = os.environ.get(settings.api_key_env, "").strip()
    if not key:
        where = settings.api_key_file or f"environment variable {settings.api_key_env}"
        raise ConfigError(
            f"predexon: no API key in {where} (set predexon.api_key_env or api_key_file)"
        )
    return key
