"""The simulated `polymarket.v1.DropCopyAPI` servicer: one gRPC handler per stream, each call
admitted (maintenance, injected failures, authorization), then served from its journal."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from bridge.sim.dropcopy.auth import authorize
from bridge.sim.dropcopy.config import SimConfig
from bridge.sim.dropcopy.faults import Faults
from bridge.sim.dropcopy.resume import start_position
from bridge.sim.dropcopy.rpcs import SERVICE, STREAM_RPCS, Refusal
from bridge.sim.dropcopy.stats import SimStats
from bridge.sim.dropcopy.stream import responses
from bridge.sim.journal import Journal, TokenCodec
from bridge.sim.tokens import AccessTokens

log = logging.getLogger(__name__)

_Context = grpc.aio.ServicerContext[Any, bytes]


class DropCopyService:
    """gRPC handlers over the journals; `faults()` is read on every call (knobs change live)."""

    def __init__(
        self,
        config: SimConfig,
        journals: dict[str, Journal],
        codec: TokenCodec,
        access: AccessTokens,
        faults: Callable[[], Faults],
        stats: SimStats,
    ) -> None:
        self._config = config
        self._journals = journals
        self._codec = codec
        self._access = access if config.auth else None
        self._faults = faults
        self._stats = stats
        self._call_counter = 0

    def handlers(self) -> grpc.GenericRpcHandler[Any, Any]:
        methods: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
        for stream, (method, request_class, *_rest) in STREAM_RPCS.items():
            methods[method] = grpc.unary_stream_rpc_method_handler(
                self._behaviour(stream),
                request_deserializer=request_class.FromString,
                response_serializer=None,  # responses are pre-serialized bytes
            )
        return grpc.method_handlers_generic_handler(SERVICE, methods)

    def _behaviour(self, stream: str) -> Callable[[Any, _Context], AsyncIterator[bytes]]:
        async def behaviour(request: Any, context: _Context) -> AsyncIterator[bytes]:
            self._stats.calls[stream] += 1
            try:
                async for response in self._subscription(stream, request, context):
                    self._stats.responses[stream] += 1
                    yield response
            except Refusal as refusal:
                log.info("refused stream=%s code=%s: %s", stream, refusal.code.name, refusal)
                await context.abort(refusal.code, refusal.details)

        return behaviour

    async def _subscription(
        self, stream: str, request: Any, context: _Context
    ) -> AsyncIterator[bytes]:
        faults = self._faults()
        if faults.maintenance and faults.in_maintenance():
            self._stats.maintenance_refusals += 1
            raise Refusal(faults.maintenance_code, "the exchange is in scheduled maintenance")
        if faults.fail_next_calls > 0:
            faults.fail_next_calls -= 1
            raise Refusal(faults.fail_code, "simulated failure (fault injection)")
        firms = authorize(stream, request, context, self._access)
        span = [time.monotonic(), float("inf")]
        self._stats.call_spans[stream].append(span)
        try:
            async for response in self._serve(stream, request, firms):
                yield response
        finally:
            span[1] = time.monotonic()

    async def _serve(
        self, stream: str, request: Any, firms: frozenset[str] | None
    ) -> AsyncIterator[bytes]:
        faults = self._faults()
        journal = self._journals[stream]
        start = start_position(stream, request, journal, self._codec, faults)
        self._call_counter += 1
        # Per call, yet reproducible: which responses repeat records depends on seed and call.
        duplicates_rng = random.Random(self._config.seed * 1_000_003 + self._call_counter)
        async for response in responses(
            stream,
            request,
            firms,
            start,
            journal=journal,
            codec=self._codec,
            config=self._config,
            faults=faults,
            stats=self._stats,
            duplicates_rng=duplicates_rng,
        ):
            yield response
