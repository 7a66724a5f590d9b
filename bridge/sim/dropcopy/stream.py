"""The responses of one open DropCopy call: snapshot, records, heartbeats, and the faults that
interrupt them (drops, silence, duplicates, idle close, maintenance)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import grpc

from bridge.sim.dropcopy.config import SimConfig
from bridge.sim.dropcopy.faults import Faults
from bridge.sim.dropcopy.rpcs import Refusal
from bridge.sim.dropcopy.stats import SimStats
from bridge.sim.journal import Journal, TokenCodec, frame_token
from bridge.sim.market import INSTRUMENT_STATES
from bridge.timeutil import now_us as _now_us

# Cap a response's size well under gRPC's default 4 MiB receive limit, whatever --batch says.
_MAX_RESPONSE_BYTES = 3 * 1024 * 1024


async def responses(
    stream: str,
    request: Any,
    firms: frozenset[str] | None,
    start: tuple[int, bool],
    *,
    journal: Journal,
    codec: TokenCodec,
    config: SimConfig,
    faults: Faults,
    stats: SimStats,
    duplicates_rng: random.Random,
) -> AsyncIterator[bytes]:
    """Serialized responses for a call starting at `start` (position, resumed by token); each
    is a framed resume token followed by the records, already serialized."""
    position, resumed = start
    symbols = frozenset(request.symbols)
    loop = asyncio.get_running_loop()
    sent = 0
    data_sent = 0
    previous: list[bytes] = []
    last_send = last_data = loop.time()

    def response(records: list[bytes]) -> bytes:
        token = frame_token(codec.encode(stream, position, _now_us()))
        return token + b"".join(records)

    async def after_send() -> None:
        nonlocal sent, last_send
        sent += 1
        last_send = loop.time()
        limit = faults.drop_after_responses
        if limit is not None and sent >= limit:
            raise Refusal(grpc.StatusCode.UNAVAILABLE, "simulated stream drop")
        silent = faults.silent_after_responses
        if silent is not None and sent >= silent:
            # Open but silent until the client gives up on the call (cancels it).
            stats.silenced += 1
            await asyncio.Event().wait()

    if stream == INSTRUMENT_STATES:
        snapshot = journal.latest_per_symbol(position, symbols)
        for first in range(0, len(snapshot), config.batch):
            yield response(snapshot[first : first + config.batch])
            await after_send()
    if resumed and faults.resume_overlap > 0:
        overlap = journal.previous_matching(position, symbols, firms, faults.resume_overlap)
        if overlap:
            yield response(overlap)
            await after_send()

    while True:
        if faults.maintenance and faults.in_maintenance():
            stats.maintenance_refusals += 1
            raise Refusal(faults.maintenance_code, "closed for scheduled maintenance")
        records, examined = journal.read(
            position, symbols, firms, config.batch, _MAX_RESPONSE_BYTES
        )
        position = examined
        if records:
            data_sent += 1
            out = records
            every = faults.duplicate_every
            chance = faults.duplicate_probability
            if previous and (
                (every is not None and data_sent % every == 0)
                or (chance > 0 and duplicates_rng.random() < chance)
            ):
                # At-least-once: repeat the tail of what this call sent last time.
                out = previous[-faults.duplicate_count :] + records
            previous = records
            yield response(out)
            last_data = loop.time()
            await after_send()
            continue
        changed = journal.changed()
        now = loop.time()
        deadline = last_send + config.heartbeat_s
        idle = faults.idle_disconnect_s
        if idle is not None:
            if now - last_data >= idle:
                raise Refusal(
                    grpc.StatusCode.UNAVAILABLE, "idle connection closed by load balancer"
                )
            deadline = min(deadline, last_data + idle)
        if deadline > now:
            try:
                async with asyncio.timeout(deadline - now):
                    await changed.wait()
                continue
            except TimeoutError:
                pass
        if loop.time() >= last_send + config.heartbeat_s:
            yield response([])
            await after_send()
