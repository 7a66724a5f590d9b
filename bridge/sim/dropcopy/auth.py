"""Authorizing a DropCopy call when it opens: bearer token, scope, participant and firms."""

from __future__ import annotations

import re
from typing import Any

import grpc

from bridge.sim.dropcopy.rpcs import STREAM_RPCS, Refusal
from bridge.sim.tokens import AccessClaims, AccessTokenError, AccessTokens

_PARTICIPANT = re.compile(r"(firms/[^/]+)/users/[^/]+")


def authorize(
    stream: str,
    request: Any,
    context: grpc.aio.ServicerContext[Any, bytes],
    access: AccessTokens | None,
) -> frozenset[str] | None:
    """The firm filter for this call (None = no firm filter), or raise `Refusal`.

    `access` None = the simulator runs without auth: no token is asked for, and a call
    without `x-participant-id` is served every firm's records.
    """
    _, _, _, scope, account_scoped = STREAM_RPCS[stream]
    metadata: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        metadata[key] = value if isinstance(value, str) else value.decode()
    claims: AccessClaims | None = None
    if access is not None:
        header = metadata.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Refusal(grpc.StatusCode.UNAUTHENTICATED, "missing bearer access token")
        try:
            claims = access.verify(token.strip())
        except AccessTokenError as exc:
            raise Refusal(grpc.StatusCode.UNAUTHENTICATED, str(exc)) from exc
        if scope not in claims.scopes:
            raise Refusal(grpc.StatusCode.PERMISSION_DENIED, f"missing scope {scope}")
    if not account_scoped:
        return None
    participant = metadata.get("x-participant-id", "")
    match = _PARTICIPANT.fullmatch(participant)
    if participant and match is None:
        raise Refusal(
            grpc.StatusCode.INVALID_ARGUMENT,
            "x-participant-id must look like firms/<firm>/users/<user>",
        )
    if claims is not None and match is None:
        raise Refusal(
            grpc.StatusCode.INVALID_ARGUMENT,
            "x-participant-id metadata (firms/<firm>/users/<user>) is required",
        )
    if claims is not None and claims.participant not in (None, participant):
        raise Refusal(
            grpc.StatusCode.PERMISSION_DENIED, "access token is not valid for this participant"
        )
    requested = list(request.firms)
    for firm in requested:
        if not firm.startswith("firms/") or "/" in firm[len("firms/") :]:
            raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, f"bad firm name {firm!r}")
    if requested:
        return frozenset(requested)
    return frozenset({match.group(1)}) if match else None
