"""DropCopySource: one exchange DropCopy subscription as a stream of batches.

One gRPC response becomes one batch; its position carries the response's resume_token, so
a restart from a committed position resumes exactly after the last committed response.
gRPC statuses are classified here (the one boundary where grpc errors become ours), per
the exchange's documentation:

- UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, and anything else transient:
  reconnect with exponential backoff and jitter, resuming after the last yielded response.
- UNAUTHENTICATED: mint a new access token and reconnect; repeated refusals of fresh
  tokens end the stream (wrong credentials).
- PERMISSION_DENIED: missing scope; the stream ends with a clear message.
- INVALID_ARGUMENT / FAILED_PRECONDITION / OUT_OF_RANGE / NOT_FOUND on a call that carried
  a resume_token: the token was refused (expired). Fall back to `resume_time` = the last
  committed event time minus a margin; records replayed twice are dropped by the
  pipeline's repeat filter. If the exchange cannot replay that far back either, subscribe
  live and emit a gap record covering the window, so downstream can reconcile it through
  the exchange's Report API. Instrument states carry no event time, so for them a refused
  token goes straight to a live subscription (whose snapshot restores the current state of
  every instrument) and a gap record for the transitions in between.

Two more rules from the exchange's documentation:

- Silence: a stream that delivers nothing for `silence_timeout_s` (180 s; not even a
  heartbeat, the empty response the exchange sends on idle streams) is dead although the
  connection may be healthy (keepalive pings still answered): the call is cancelled and
  resumed after the last yielded response, counted with reason `silence`. Only the wait
  for the exchange counts: time the pipeline spends taking a batch (backpressure) does not.
- Maintenance windows (`MaintenanceSchedule`): inside one, a refused call (a status in
  `maintenance_codes`, a stream ended or silent) is expected. The first refusal in a
  window is logged once; `maintenance` is True (the gauge, and /readyz says "maintenance"
  instead of failing) until a response arrives or the window is over; attempts are made
  every `maintenance_retry_s` and once more right at the window's end, then the stream
  resumes from its token. Counted with reason `maintenance`. Outside a window every
  status keeps its meaning above.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from bridge.errors import AuthError, UpstreamError
from bridge.maintenance import MaintenanceSchedule, Window
from bridge.mapping.dropcopy import DropCopyMapper
from bridge.records import Batch, Gap, Position, SourceStatus
from bridge.sources.auth import TokenProvider
from bridge.sources.backoff import Backoff
from bridge.streams.kinds import StreamKind
from bridge.timeutil import now_us
from polymarket.v1 import dropcopy_pb2_grpc

log = logging.getLogger(__name__)

TOKEN_REFUSED_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.NOT_FOUND,
    }
)
# A fresh access token refused this many times in a row means the credentials are wrong,
# not that a token expired: stop instead of hammering the exchange.
_MAX_FRESH_TOKEN_REFUSALS = 3
# Responses can hold hundreds of nested records, hence 64 MiB. Keepalive pings are the only
# way to notice a half-open connection: keep sending them however long the client itself
# sends nothing (a server stream: it never does after the request), also without calls.
CHANNEL_OPTIONS: Sequence[tuple[str, int]] = (
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
)
KEEPALIVE_TIME_S = 60.0
KEEPALIVE_TIMEOUT_S = 20.0
"""The keepalive the exchange recommends: ping every 60 s, wait 20 s for the ack."""
_EOF: object = grpc.aio.EOF  # type: ignore[attr-defined]  # missing from grpc-stubs
SILENCE_TIMEOUT_S = 180.0
"""The exchange's documentation: 180 s without any message (not even a heartbeat) = dead."""
MAINTENANCE_CODES = frozenset(grpc.StatusCode) - {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
}
"""Statuses taken for a maintenance refusal inside a window (the exchange does not document
which one it returns): all but those that point at our credentials or request."""


def open_channel(
    endpoint: str,
    *,
    tls: bool,
    ca_file: str = "",
    keepalive_time_s: float = KEEPALIVE_TIME_S,
    keepalive_timeout_s: float = KEEPALIVE_TIMEOUT_S,
) -> grpc.aio.Channel:
    """A channel to the exchange: TLS unless explicitly disabled; no per-call deadlines.
    A connection whose ping is not acknowledged within `keepalive_timeout_s` is dead (a
    half-open route): its streams fail with UNAVAILABLE and are resumed. gRPC core waits
    for any ping's ack (keepalive or its own BDP probes) for `ping_timeout_ms`, 60 s by
    default, whatever the keepalive timeout says: measured through a half-open proxy, that
    default, not keepalive_timeout_ms, decided when the stream failed."""
    options = (
        *CHANNEL_OPTIONS,
        ("grpc.keepalive_time_ms", round(keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", round(keepalive_timeout_s * 1000)),
        ("grpc.http2.ping_timeout_ms", round(keepalive_timeout_s * 1000)),
    )
    if not tls:
        return grpc.aio.insecure_channel(endpoint, options=options)
    roots = Path(ca_file).read_bytes() if ca_file else None
    credentials = grpc.ssl_channel_credentials(root_certificates=roots)
    return grpc.aio.secure_channel(endpoint, credentials, options=options)


class DropCopySource:
    """Batches of one DropCopy stream from a position (see module docstring)."""

    upstream = "dropcopy"

    def __init__(
        self,
        *,
        kind: StreamKind,
        stream_id: str,
        channel: grpc.aio.Channel,
        tokens: TokenProvider,
        mapper: DropCopyMapper,
        participant_id: str = "",
        symbols: Sequence[str] = (),
        firms: Sequence[str] = (),
        first_start_time_us: int | None = None,
        resume_margin_us: int = 5_000_000,
        backoff: Backoff | None = None,
        silence_timeout_s: float = SILENCE_TIMEOUT_S,
        maintenance: MaintenanceSchedule | None = None,
        maintenance_retry_s: float = 30.0,
        maintenance_codes: Collection[grpc.StatusCode] = MAINTENANCE_CODES,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.stream_id = stream_id
        self.kind = kind
        self.reconnects: Counter[str] = Counter()
        self.connected = False
        self.maintenance = False
        """True while the exchange refuses this stream inside a maintenance window."""
        self.maintenance_ended_at: float | None = None
        """Monotonic time the stream last left the maintenance state (for /readyz)."""
        self._maintenance_window: Window | None = None
        self._maintenance_attempts = 0
        self._schedule = maintenance
        self._maintenance_retry_s = maintenance_retry_s
        self._maintenance_codes = frozenset(maintenance_codes)
        self._clock = clock
        self._silence_timeout_s = silence_timeout_s
        self._call = getattr(dropcopy_pb2_grpc.DropCopyAPIStub(channel), kind.rpc)
        self._tokens = tokens
        self._mapper = mapper
        self._participant_id = participant_id
        self._symbols = list(symbols)
        self._firms = list(firms)
        self._first_start_time_us = first_start_time_us
        self._resume_margin_us = resume_margin_us
        self._backoff = backoff or Backoff()
        selection: dict[str, list[str]] = {"symbols": self._symbols}
        if kind.account_scoped:
            selection["firms"] = self._firms
        self._filters_json = json.dumps(selection)

    async def stream(self, start: Position | None) -> AsyncIterator[Batch]:
        position = start or Position()
        resume_time_us = None if position.resume_token else self._fresh_start_time(position)
        gap_from: tuple[int | None, str] | None = None
        fresh_token_refusals = 0
        while True:
            request = self._request(position.resume_token, resume_time_us)
            try:
                metadata = await self._metadata()
                call = self._call(request, metadata=metadata)
                while True:
                    response = await self._next_response(call)
                    if response is None:
                        break
                    self.connected = True
                    self._leave_maintenance("the exchange accepts the stream again")
                    fresh_token_refusals = 0
                    self._backoff.success()
                    received = now_us()
                    records, letters = self._mapper.map_response(response, received)
                    newest = position.event_time_us
                    for record in records:
                        if record.event_time_us is not None and (
                            newest is None or record.event_time_us > newest
                        ):
                            newest = record.event_time_us
                    position = Position(
                        resume_token=bytes(response.resume_token),
                        event_time_us=newest,
                        live_time_us=received,
                    )
                    resume_time_us = None
                    gaps = []
                    if gap_from is not None:
                        gaps.append(
                            Gap(
                                gap_from[0],
                                received,
                                gap_from[1],
                                self.kind.name,
                                self._filters_json,
                            )
                        )
                        gap_from = None
                    yield Batch(records, position, letters, gaps)
                raise UpstreamError("the exchange ended the stream", reason="stream_ended")
            except grpc.aio.AioRpcError as err:
                self.connected = False
                code = err.code()
                if code in self._maintenance_codes and await self._maintenance_pause(
                    f"{code.name}: {err.details()}"
                ):
                    continue
                if code in TOKEN_REFUSED_CODES and request.resume_token:
                    covered = position.event_time_us or position.live_time_us
                    if not self.kind.replays_by_time or covered is None:
                        gap_from = (position.live_time_us or covered, "token_refused_no_replay")
                        resume_time_us = None
                    else:
                        resume_time_us = covered - self._resume_margin_us
                    log.warning(
                        "stream=%s resume token refused (%s); %s",
                        self.stream_id,
                        code.name,
                        "replaying by time" if resume_time_us else "subscribing live",
                    )
                    self.reconnects["token_refused"] += 1
                    position = replace(position, resume_token=None)
                    continue
                if code in TOKEN_REFUSED_CODES and request.HasField("resume_time"):
                    log.warning(
                        "stream=%s the exchange cannot replay from %sus (%s: %s); subscribing "
                        "live and recording a gap",
                        self.stream_id,
                        resume_time_us,
                        code.name,
                        err.details(),
                    )
                    if gap_from is None:
                        # The window starts where coverage ended: the last committed event
                        # time, or on a first start the configured start time.
                        gap_from = (
                            position.event_time_us
                            or position.live_time_us
                            or self._first_start_time_us,
                            "replay_unavailable",
                        )
                    resume_time_us = None
                    self.reconnects["replay_unavailable"] += 1
                    continue
                if code == grpc.StatusCode.UNAUTHENTICATED:
                    fresh_token_refusals += 1
                    self._tokens.invalidate()
                    if fresh_token_refusals >= _MAX_FRESH_TOKEN_REFUSALS:
                        raise AuthError(
                            f"stream {self.stream_id}: the exchange refused {fresh_token_refusals} "
                            f"fresh access tokens (UNAUTHENTICATED: {err.details()}); check the "
                            "dropcopy.auth credentials",
                            reason="unauthenticated",
                        ) from None
                elif code == grpc.StatusCode.PERMISSION_DENIED:
                    raise AuthError(
                        f"stream {self.stream_id}: permission denied ({err.details()}); the "
                        f"credentials need scope {self.kind.scope}"
                        + (" and a valid x-participant-id" if self.kind.account_scoped else ""),
                        reason="permission_denied",
                    ) from None
                elif code == grpc.StatusCode.INVALID_ARGUMENT:
                    raise UpstreamError(
                        f"stream {self.stream_id}: the exchange rejected the subscription "
                        f"request (INVALID_ARGUMENT: {err.details()}); check dropcopy.streams "
                        "symbols, firms and dropcopy.participant_id",
                        reason="invalid_argument",
                        retriable=False,
                    ) from None
                await self._retry_later(code.name.lower(), err.details() or "")
            except UpstreamError as exc:
                self.connected = False
                if not exc.retriable:
                    raise
                if await self._maintenance_pause(str(exc)):
                    continue
                await self._retry_later(exc.reason, str(exc))

    def status(self) -> SourceStatus:
        """The call's state for /metrics and /readyz (`bridge.records.SourceStatus`)."""
        return SourceStatus(
            reconnects=dict(self.reconnects),
            unknown_fields=self.unknown_fields,
            connected=self.connected,
            maintenance=self.maintenance,
            maintenance_until=self.maintenance_until,
            maintenance_ended_at=self.maintenance_ended_at,
        )

    @property
    def unknown_fields(self) -> int:
        """Records mapped so far that carry unknown protobuf fields (fields the exchange added
        after the compiled contract); /metrics shows it as polybridge_unknown_fields_total."""
        return self._mapper.unknown_field_records

    @property
    def maintenance_until(self) -> str | None:
        """End of the maintenance window the stream waits out (ISO, UTC), else None."""
        window = self._maintenance_window
        return window.end.isoformat(timespec="seconds") if self.maintenance and window else None

    async def _next_response(self, call: Any) -> Any:
        """The call's next response, None at its end; UpstreamError(reason="silence") when
        the exchange sends nothing for `silence_timeout_s`. Only this wait is timed."""
        try:
            async with asyncio.timeout(self._silence_timeout_s):
                response = await call.read()
        except TimeoutError:
            call.cancel()
            raise UpstreamError(
                f"no message (not even a heartbeat) for {self._silence_timeout_s:g}s: "
                "the stream is dead",
                reason="silence",
            ) from None
        return None if response is _EOF else response

    async def _maintenance_pause(self, detail: str) -> bool:
        """Inside a maintenance window: wait calmly (see module docstring) and return True;
        outside one: leave the maintenance state and return False."""
        if self._schedule is None:
            return False
        now = self._clock()
        window = self._schedule.window_at(now)
        if window is None:
            self._leave_maintenance(f"the window is over, yet the exchange still fails ({detail})")
            return False
        self._maintenance_attempts += 1
        self.reconnects["maintenance"] += 1
        entered = self._maintenance_window is None
        self._maintenance_window = window
        if entered:
            # One line per window, not one per attempt.
            log.warning(
                "stream=%s the exchange refuses connections during its %s maintenance window "
                "%s .. %s (%s); expected, retrying every %gs until it ends",
                self.stream_id,
                window.kind,
                window.start.isoformat(timespec="seconds"),
                window.end.isoformat(timespec="seconds"),
                detail,
                self._maintenance_retry_s,
            )
        else:
            log.debug("stream=%s still in maintenance (%s)", self.stream_id, detail)
        self.maintenance = True
        remaining = (window.end - now).total_seconds()
        # Attempt again after the interval, or right at the window's end if that is sooner.
        await asyncio.sleep(max(0.0, min(self._maintenance_retry_s, remaining)))
        return True

    def _leave_maintenance(self, how: str) -> None:
        if self._maintenance_window is None:
            return
        log.info(
            "stream=%s maintenance over: %s (%d refused attempt(s) in the window)",
            self.stream_id,
            how,
            self._maintenance_attempts,
        )
        self.maintenance = False
        self.maintenance_ended_at = time.monotonic()
        self._maintenance_window = None
        self._maintenance_attempts = 0

    async def _retry_later(self, reason: str, detail: str) -> None:
        self.reconnects[reason] += 1
        delay = self._backoff.next_delay()
        log.warning(
            "stream=%s upstream %s (%s); reconnecting in %.2fs",
            self.stream_id,
            reason,
            detail,
            delay,
        )
        await asyncio.sleep(delay)

    def _fresh_start_time(self, position: Position) -> int | None:
        covered = position.event_time_us or position.live_time_us
        if covered is not None:
            return covered - self._resume_margin_us
        return self._first_start_time_us

    def _request(self, token: bytes | None, resume_time_us: int | None) -> Any:
        request = self.kind.request_type(symbols=self._symbols)
        if self.kind.account_scoped:
            request.firms.extend(self._firms)
        if token:
            request.resume_token = token
        elif resume_time_us is not None:
            stamp = Timestamp()
            stamp.FromMicroseconds(max(0, resume_time_us))
            request.resume_time.CopyFrom(stamp)
        return request

    async def _metadata(self) -> list[tuple[str, str]]:
        metadata = [("authorization", f"Bearer {await self._tokens.token()}")]
        if self.kind.account_scoped and self._participant_id:
            metadata.append(("x-participant-id", self._participant_id))
        return metadata
