"""A faithful simulator of the exchange's `polymarket.v1.DropCopyAPI` (gRPC, four streams).

Python API (tests, benchmarks, the demo)::

    sim = DropCopySimulator(SimConfig(seed=7, prefill=2_000, heartbeat_s=0.05))
    await sim.start()
    channel = grpc.aio.insecure_channel(sim.address)
    token = sim.issue_token(["read:dropcopy"])           # or use sim.token_url (OAuth)
    ...
    sim.faults.drop_after_responses = 3                   # runtime fault knobs
    truth = sim.ground_truth("executions", firms=["firms/acme-capital"])
    await sim.stop()

`SimulatorThread(config)` runs the same simulator on its own event loop in a background
thread, for synchronous tests (e.g. beside a bridge subprocess).

Wire behaviour (as the exchange documents it):
- `resume_token` -> every journal record after it, then live; `resume_time` -> every record with
  event time >= it, then live; neither -> live only; both -> INVALID_ARGUMENT.
- Every response carries a resume token = the position after the last journal record
  examined for this subscriber (records filtered out count as examined), so a response with
  no records (the heartbeat, sent after `heartbeat_s` of idleness) advances it too.
- `symbols` empty = all; `firms` empty = the firm of `x-participant-id` (`firms/<F>/users/<U>`).
  Any listed firm is served (the simulator has no firm entitlements).
- The instrument stream first sends a paged snapshot (latest record per symbol) as of the
  starting position, then the changes after it. `slow_consumer_skip_to_head` is accepted and
  ignored: the simulator never skips records.
- Refusals: bad / foreign token -> INVALID_ARGUMENT; token expired (`faults.token_max_age_s`) or
  older than retention -> `faults.token_refused_code` (default FAILED_PRECONDITION);
  resume_time older than retention -> OUT_OF_RANGE.
- Auth: `authorization: Bearer <token>` (missing / bad / expired -> UNAUTHENTICATED), scope per
  stream (missing -> PERMISSION_DENIED), `x-participant-id` required on account-scoped streams
  (missing or malformed -> INVALID_ARGUMENT; a token bound to another participant ->
  PERMISSION_DENIED). Checked once, when the stream opens.
- Server reflection (`grpc.reflection.v1alpha`, no auth) describes the contract served:
  `SimConfig.contract` "current" (as compiled) or "newer" (fields the exchange added since,
  also sent on the wire; see `bridge.sim.contract`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import datetime as dt
import json
import logging
import random
import re
import secrets
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from bridge.sim.contract import CONTRACTS, Contract
from bridge.sim.exchange_rest import ExchangeRest, RestConfig
from bridge.sim.journal import (
    InvalidToken,
    Journal,
    Retention,
    TokenCodec,
    frame_token,
)
from bridge.sim.market import (
    DEFAULT_FIRMS,
    EXECUTIONS,
    INSTRUMENT_STATES,
    POSITION_CHANGES,
    STREAMS,
    TRADE_CAPTURES,
    MarketGenerator,
)
from bridge.sim.tls import TlsFiles, generate_tls
from bridge.sim.tokens import (
    ALL_SCOPES,
    DEFAULT_API_AUDIENCE,
    AccessClaims,
    AccessTokenError,
    AccessTokens,
    ClientCredentialsGrant,
    ClientRegistration,
    TokenEndpoint,
    generate_client_key,
)
from bridge.timeutil import now_us as _now_us
from polymarket.v1 import dropcopy_pb2, orders_pb2, refdata_pb2, trading_pb2

log = logging.getLogger(__name__)

SERVICE = "polymarket.v1.DropCopyAPI"

# stream -> (RPC method name, request class, record class, scope, account-scoped)
STREAM_RPCS: dict[str, tuple[str, type[Message], type[Message], str, bool]] = {
    EXECUTIONS: (
        "CreateDropCopySubscription",
        dropcopy_pb2.CreateDropCopySubscriptionRequest,
        trading_pb2.Execution,
        "read:dropcopy",
        True,
    ),
    TRADE_CAPTURES: (
        "CreateTradeCaptureReportSubscription",
        dropcopy_pb2.CreateTradeCaptureReportSubscriptionRequest,
        orders_pb2.Trade,
        "read:dropcopy",
        True,
    ),
    INSTRUMENT_STATES: (
        "CreateInstrumentStateChangeSubscription",
        dropcopy_pb2.CreateInstrumentStateChangeSubscriptionRequest,
        refdata_pb2.Instrument,
        "read:instruments",
        False,
    ),
    POSITION_CHANGES: (
        "CreatePositionChangeSubscription",
        dropcopy_pb2.CreatePositionChangeSubscriptionRequest,
        dropcopy_pb2.PositionChange,
        "read:positions",
        True,
    ),
}

TOKEN_REFUSED_CODES = {
    "INVALID_ARGUMENT": grpc.StatusCode.INVALID_ARGUMENT,
    "FAILED_PRECONDITION": grpc.StatusCode.FAILED_PRECONDITION,
    "OUT_OF_RANGE": grpc.StatusCode.OUT_OF_RANGE,
    "NOT_FOUND": grpc.StatusCode.NOT_FOUND,
}
_PARTICIPANT = re.compile(r"(firms/[^/]+)/users/[^/]+")
# Cap a response's size well under gRPC's default 4 MiB receive limit, whatever --batch says.
_MAX_RESPONSE_BYTES = 3 * 1024 * 1024
# The live generator wakes this often; small enough for smooth rates, large enough to batch.
_GENERATE_TICK_S = 0.01
# Most records generated in one tick, so a high --rate cannot starve the subscribers.
_MAX_RECORDS_PER_TICK = 5_000
# Simulated time between prefilled records when no start time is given (1 ms: a busy venue).
_PREFILL_INTERVAL_US = 1_000


@dataclass
class Faults:
    """Fault knobs, read on every call / response: mutate `sim.faults` at runtime."""

    drop_after_responses: int | None = None
    """Abort each call with UNAVAILABLE after it has sent this many responses."""
    fail_next_calls: int = 0
    """The next K call attempts (any stream) fail immediately with `fail_code`."""
    fail_code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    """UNAVAILABLE or RESOURCE_EXHAUSTED (any code works)."""
    token_max_age_s: float | None = None
    """Resume tokens issued longer ago than this are refused with `token_refused_code`."""
    token_refused_code: grpc.StatusCode = grpc.StatusCode.FAILED_PRECONDITION
    """Status for a refused (expired or beyond retention) resume token."""
    duplicate_probability: float = 0.0
    """Each data response re-sends, with this probability, the last `duplicate_count`
    records of the previous response (at-least-once delivery)."""
    duplicate_every: int | None = None
    """Every Nth data response re-sends the previous response's last records."""
    duplicate_count: int = 3
    resume_overlap: int = 0
    """A call resumed by token first re-sends this many matching records before the token."""
    idle_disconnect_s: float | None = None
    """Close with UNAVAILABLE after this long without a data record (the exchange's load
    balancer does so after 10 minutes); heartbeats do not count as data."""
    silent_after_responses: int | None = None
    """Each call goes silent after sending this many responses: no records, no heartbeats,
    yet the call stays open (and keepalive pings are answered) until the client cancels it.
    A call that went silent stays silent; new calls send this many responses again."""
    maintenance: tuple[tuple[float, float], ...] = ()
    """Maintenance windows `(start, end)` in Unix seconds (simulator time, [start, end)):
    inside one, new calls are refused with `maintenance_code` and open calls are closed
    with it (within `heartbeat_s`); afterwards resume tokens are honoured as usual."""
    maintenance_code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    """Status of maintenance refusals (the exchange does not document it)."""

    def in_maintenance(self, now_s: float | None = None) -> bool:
        """True inside one of the `maintenance` windows (at `now_s`, default now)."""
        moment = time.time() if now_s is None else now_s
        return any(start <= moment < end for start, end in self.maintenance)


@dataclass(frozen=True)
class SimConfig:
    """Everything the simulator is started with. Defaults suit tests: no live generation."""

    host: str = "127.0.0.1"
    port: int = 0
    seed: int = 0
    rate: float = 0.0
    """Records per second (all streams together) generated live; 0 = none."""
    prefill: int = 0
    """Records generated before serving, with simulated event times ending about now."""
    max_records: int | None = None
    """Stop generating after this many records in total; then only heartbeats flow."""
    start_time_us: int | None = None
    """Event time of the first prefilled record; None = now - prefill * 1 ms."""
    batch: int = 100
    heartbeat_s: float = 1.0
    tls: bool = False
    files_dir: Path | None = None
    """Where TLS files and generated client keys go; None = a temp dir removed on stop."""
    auth: bool = True
    api_audience: str = DEFAULT_API_AUDIENCE
    token_lifetime_s: int = 180
    token_port: int = 0
    clients: tuple[ClientRegistration, ...] = ()
    retention_records: int | None = None
    retention_age_s: float | None = None
    firms: tuple[str, ...] = DEFAULT_FIRMS
    faults: Faults = field(default_factory=Faults)
    """Initial fault settings (copied into `sim.faults`)."""
    secret: bytes | None = None
    """Signs resume and access tokens; None = random per instance."""
    rest: RestConfig = field(default_factory=RestConfig)
    """The REST history (Report API searches, position ledger): `bridge.sim.exchange_rest`."""
    contract: str = "current"
    """Wire contract served (`bridge.sim.contract`): "current" = `proto/` as compiled;
    "newer" = with the fields the exchange added since, sent on the wire and described by
    server reflection."""


@dataclass
class SimStats:
    """Counters tests can wait on."""

    calls: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STREAMS, 0))
    responses: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STREAMS, 0))
    generated: int = 0
    silenced: int = 0
    """Calls that went silent (`Faults.silent_after_responses`)."""
    maintenance_refusals: int = 0
    """Calls refused or closed because of a maintenance window (`Faults.maintenance`)."""
    call_spans: dict[str, list[list[float]]] = field(
        default_factory=lambda: {stream: [] for stream in STREAMS}
    )
    """Per stream, [opened, closed] (monotonic seconds; closed = inf while open) of every
    call that got past authorization: how many clients held the stream at once."""

    def longest_overlap(self, stream: str) -> float:
        """The longest stretch during which two or more calls of `stream` were open."""
        spans = sorted((start, end) for start, end in self.call_spans[stream])
        longest, horizon = 0.0, float("-inf")
        for start, end in spans:
            if start < horizon:  # overlaps an earlier call still open
                longest = max(longest, min(end, horizon) - start)
            horizon = max(horizon, end)
        return longest


class _Refusal(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def _iso(time_us: int) -> str:
    return dt.datetime.fromtimestamp(time_us / 1e6, dt.UTC).isoformat(timespec="microseconds")


class DropCopySimulator:
    """The exchange's DropCopy API on loopback, with a token endpoint and fault knobs."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config = config or SimConfig()
        self.faults = dataclasses.replace(config.faults)
        self.stats = SimStats()
        secret = config.secret or secrets.token_bytes(32)
        self._codec = TokenCodec(secret)
        self._access = AccessTokens(secret, config.api_audience, config.token_lifetime_s)
        self._grant = ClientCredentialsGrant(
            self._access, {client.client_id: client for client in config.clients}
        )
        retention = Retention(config.retention_records, config.retention_age_s)
        self._journals = {stream: Journal(stream, retention) for stream in STREAMS}
        self._market = MarketGenerator(config.seed, config.firms)
        self.contract = Contract(config.contract)
        self._server: grpc.aio.Server | None = None
        self._endpoint: TokenEndpoint | None = None
        self.rest: ExchangeRest | None = None
        """REST history endpoints (`rest.url`, `rest.faults`); set by `start()`."""
        self._generator: asyncio.Task[None] | None = None
        self._port = 0
        self._tls: TlsFiles | None = None
        self._temp_dir: Path | None = None
        self._call_counter = 0

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Prefill, then serve gRPC (and the token endpoint) and start live generation."""
        config = self.config
        if config.prefill:
            start = config.start_time_us
            if start is None:
                start = _now_us() - config.prefill * _PREFILL_INTERVAL_US
            self._generate(config.prefill, lambda n: start + n * _PREFILL_INTERVAL_US)
        server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 0),
                # Accept the exchange's recommended client keepalive (60 s, without calls)
                # and the 1 s ones fault tests use to notice a half-open link quickly.
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_recv_ping_interval_without_data_ms", 1_000),
            ]
        )
        server.add_generic_rpc_handlers((self._handlers(),))
        self.contract.enable_reflection(server)
        bind = f"{config.host}:{config.port}"
        ssl_context = None
        if config.tls:
            self._tls = generate_tls(self.files_dir / "tls")
            credentials = grpc.ssl_server_credentials([(self._tls.key_pem, self._tls.cert_pem)])
            self._port = server.add_secure_port(bind, credentials)
            ssl_context = self._tls.server_ssl_context()
        else:
            self._port = server.add_insecure_port(bind)
        await server.start()
        self._server = server
        self._endpoint = TokenEndpoint(self._grant, config.host, config.token_port, ssl_context)
        self._endpoint.start()
        if config.rest.enabled:
            self.rest = ExchangeRest(
                self._journals,
                self._access,
                auth=config.auth,
                host=config.host,
                config=config.rest,
                now_us=_now_us,
            )
            await self.rest.start()
        if config.rate > 0:
            self._generator = asyncio.create_task(self._generate_live(), name="sim-generator")
        log.info(
            "dropcopy simulator serving address=%s tls=%s token_url=%s records=%d",
            self.address,
            config.tls,
            self.token_url,
            self.stats.generated,
        )

    async def stop(self, grace_s: float = 0.2) -> None:
        """Stop generating and serving; open streams end with UNAVAILABLE / CANCELLED."""
        if self._generator is not None:
            self._generator.cancel()
            await asyncio.gather(self._generator, return_exceptions=True)
            self._generator = None
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None
        if self.rest is not None:
            await self.rest.stop()
            self.rest = None
        if self._endpoint is not None:
            await asyncio.to_thread(self._endpoint.stop)
            self._endpoint = None
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None

    # -- properties ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def address(self) -> str:
        """`host:port` to dial (TLS clients may use `localhost:port` as well)."""
        return f"{self.config.host}:{self._port}"

    @property
    def token_url(self) -> str:
        """`http(s)://host:port/oauth/token` of the Private Key JWT token endpoint."""
        return self._grant.token_url

    @property
    def api_audience(self) -> str:
        return self.config.api_audience

    @property
    def tls_files(self) -> TlsFiles | None:
        return self._tls

    @property
    def ca_cert_pem(self) -> bytes | None:
        """PEM of the CA that signed the server certificate (TLS only)."""
        return self._tls.ca_cert_pem if self._tls else None

    @property
    def ca_path(self) -> Path | None:
        return self._tls.ca_path if self._tls else None

    @property
    def files_dir(self) -> Path:
        """Directory for generated files (TLS material, client keys)."""
        if self.config.files_dir is not None:
            self.config.files_dir.mkdir(parents=True, exist_ok=True)
            return self.config.files_dir
        if self._temp_dir is None:
            self._temp_dir = Path(tempfile.mkdtemp(prefix="polybridge-sim-"))
        return self._temp_dir

    @property
    def firms(self) -> tuple[str, ...]:
        return self.config.firms

    # -- tokens ----------------------------------------------------------------------------

    def issue_token(
        self,
        scopes: Iterable[str] = ALL_SCOPES,
        *,
        participant: str | None = None,
        lifetime_s: int | None = None,
        subject: str = "sim-test-client",
    ) -> str:
        """An access token for `authorization: Bearer`; `participant` binds it to one
        `x-participant-id`; a negative lifetime gives an expired token. Thread-safe."""
        return self._access.issue(
            scopes, subject=subject, lifetime_s=lifetime_s, participant=participant
        )

    def register_client(
        self, client_id: str, public_key_pem: bytes, scopes: Iterable[str] = ALL_SCOPES
    ) -> None:
        """Allow `client_id` to mint tokens at `token_url` with assertions signed by the
        private key of `public_key_pem`."""
        self._grant.register(ClientRegistration(client_id, public_key_pem, tuple(scopes)))

    def create_client(self, client_id: str = "sim-client") -> Path:
        """Register a client with a fresh RSA key; returns the private key's PEM path."""
        private_pem, public_pem = generate_client_key()
        path = self.files_dir / f"{client_id}.key.pem"
        path.touch(mode=0o600)
        path.write_bytes(private_pem)
        self.register_client(client_id, public_pem)
        return path

    # -- journal access --------------------------------------------------------------------

    def head(self, stream: str) -> int:
        """Sequence number of the newest record of `stream` (0 when none)."""
        return self._journals[stream].head

    def ground_truth_records(
        self, stream: str, symbols: Collection[str] = (), firms: Collection[str] = ()
    ) -> list[tuple[int, int, bytes]]:
        """(sequence, event time us, serialized record) of every retained record of `stream`
        matching the filters, in journal order. `firms` empty = all firms (unlike the RPC)."""
        firm_filter = frozenset(firms) if firms else None
        return list(self._journals[stream].records(frozenset(symbols), firm_filter))

    def ground_truth(
        self, stream: str, symbols: Collection[str] = (), firms: Collection[str] = ()
    ) -> list[Message]:
        """The complete ordered record sequence the journal holds for `stream` and selection
        (Execution, Trade, Instrument or PositionChange messages). Instrument snapshots sent
        on connect are not journal records and are not included."""
        record_class = STREAM_RPCS[stream][2]
        return [
            record_class.FromString(payload)
            for _, _, payload in self.ground_truth_records(stream, symbols, firms)
        ]

    def write_ground_truth(self, path: Path) -> int:
        """Write every retained record as JSON lines {stream, seq, time_us, symbol-free,
        record (base64 of the serialized proto)}; returns the number of lines."""
        count = 0
        with path.open("w", encoding="utf-8") as out:
            for stream in STREAMS:
                for seq, time_us, payload in self._journals[stream].records():
                    line = {
                        "stream": stream,
                        "seq": seq,
                        "time_us": time_us,
                        "record": base64.b64encode(payload).decode(),
                    }
                    out.write(json.dumps(line) + "\n")
                    count += 1
        return count

    async def generate(self, records: int) -> int:
        """Generate at least `records` more records now (wall-clock event times) and wake
        subscribers; ignores `max_records`. Returns how many were generated."""
        return self._generate(records, lambda _n: _now_us())

    def _generate(self, records: int, clock: Callable[[int], int]) -> int:
        produced = 0
        journals = self._journals
        while produced < records:
            for record in self._market.step(clock(self.stats.generated + produced)):
                journals[record.stream].append(
                    record.time_us,
                    record.symbol,
                    record.firms,
                    self.contract.serialize(record.stream, record.message, record.time_us),
                )
                produced += 1
        self.stats.generated += produced
        now = _now_us()
        for journal in journals.values():
            journal.trim(now)
            journal.notify()
        return produced

    async def _generate_live(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        base = self.stats.generated
        limit = self.config.max_records
        while limit is None or self.stats.generated < limit:
            target = base + int((loop.time() - started) * self.config.rate)
            if limit is not None:
                target = min(target, limit)
            wanted = min(target - self.stats.generated, _MAX_RECORDS_PER_TICK)
            if wanted > 0:
                self._generate(wanted, lambda _n: _now_us())
            await asyncio.sleep(_GENERATE_TICK_S)
        log.info("dropcopy simulator reached max_records=%d; heartbeats only", limit)

    # -- gRPC ------------------------------------------------------------------------------

    def _handlers(self) -> grpc.GenericRpcHandler[Any, Any]:
        methods: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
        for stream, (method, request_class, *_rest) in STREAM_RPCS.items():
            methods[method] = grpc.unary_stream_rpc_method_handler(
                self._behaviour(stream),
                request_deserializer=request_class.FromString,
                response_serializer=None,  # responses are pre-serialized bytes
            )
        return grpc.method_handlers_generic_handler(SERVICE, methods)

    def _behaviour(
        self, stream: str
    ) -> Callable[[Any, grpc.aio.ServicerContext[Any, bytes]], AsyncIterator[bytes]]:
        async def behaviour(
            request: Any, context: grpc.aio.ServicerContext[Any, bytes]
        ) -> AsyncIterator[bytes]:
            self.stats.calls[stream] += 1
            try:
                async for response in self._subscription(stream, request, context):
                    self.stats.responses[stream] += 1
                    yield response
            except _Refusal as refusal:
                log.info("refused stream=%s code=%s: %s", stream, refusal.code.name, refusal)
                await context.abort(refusal.code, refusal.details)

        return behaviour

    def _authorize(
        self, stream: str, request: Any, context: grpc.aio.ServicerContext[Any, bytes]
    ) -> frozenset[str] | None:
        """The firm filter for this call (None = no firm filter), or raise _Refusal."""
        _, _, _, scope, account_scoped = STREAM_RPCS[stream]
        metadata: dict[str, str] = {}
        for key, value in context.invocation_metadata() or ():
            metadata[key] = value if isinstance(value, str) else value.decode()
        claims: AccessClaims | None = None
        if self.config.auth:
            header = metadata.get("authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise _Refusal(grpc.StatusCode.UNAUTHENTICATED, "missing bearer access token")
            try:
                claims = self._access.verify(token.strip())
            except AccessTokenError as exc:
                raise _Refusal(grpc.StatusCode.UNAUTHENTICATED, str(exc)) from exc
            if scope not in claims.scopes:
                raise _Refusal(grpc.StatusCode.PERMISSION_DENIED, f"missing scope {scope}")
        if not account_scoped:
            return None
        participant = metadata.get("x-participant-id", "")
        match = _PARTICIPANT.fullmatch(participant)
        if participant and match is None:
            raise _Refusal(
                grpc.StatusCode.INVALID_ARGUMENT,
                "x-participant-id must look like firms/<firm>/users/<user>",
            )
        if claims is not None and match is None:
            raise _Refusal(
                grpc.StatusCode.INVALID_ARGUMENT,
                "x-participant-id metadata (firms/<firm>/users/<user>) is required",
            )
        if claims is not None and claims.participant not in (None, participant):
            raise _Refusal(
                grpc.StatusCode.PERMISSION_DENIED, "access token is not valid for this participant"
            )
        requested = list(request.firms)
        for firm in requested:
            if not firm.startswith("firms/") or "/" in firm[len("firms/") :]:
                raise _Refusal(grpc.StatusCode.INVALID_ARGUMENT, f"bad firm name {firm!r}")
        if requested:
            return frozenset(requested)
        return frozenset({match.group(1)}) if match else None

    def _start_position(self, stream: str, request: Any) -> tuple[int, bool]:
        """(position to serve after, resumed by token), or raise _Refusal."""
        journal = self._journals[stream]
        has_time = request.HasField("resume_time")
        if request.resume_token and has_time:
            raise _Refusal(
                grpc.StatusCode.INVALID_ARGUMENT,
                "resume_token and resume_time are mutually exclusive",
            )
        if request.resume_token:
            try:
                token = self._codec.decode(request.resume_token)
            except InvalidToken as exc:
                raise _Refusal(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc
            if token.stream != stream:
                raise _Refusal(
                    grpc.StatusCode.INVALID_ARGUMENT, "resume_token belongs to another stream"
                )
            refused = self.faults.token_refused_code
            max_age = self.faults.token_max_age_s
            if max_age is not None and _now_us() - token.issued_us > max_age * 1_000_000:
                raise _Refusal(refused, "resume_token expired")
            if not journal.covers(token.position):
                raise _Refusal(refused, "resume_token is beyond the journal's retention")
            return token.position, True
        if has_time:
            wanted = request.resume_time.ToMicroseconds()
            position = journal.position_for_time(wanted)
            if position is None:
                oldest = journal.time_at(journal.first_retained)
                raise _Refusal(
                    grpc.StatusCode.OUT_OF_RANGE,
                    f"resume_time {_iso(wanted)} is older than the journal's retention"
                    + (f" (oldest retained event {_iso(oldest)})" if oldest else ""),
                )
            return position, False
        return journal.head, False

    async def _subscription(
        self, stream: str, request: Any, context: grpc.aio.ServicerContext[Any, bytes]
    ) -> AsyncIterator[bytes]:
        faults = self.faults
        if faults.maintenance and faults.in_maintenance():
            self.stats.maintenance_refusals += 1
            raise _Refusal(faults.maintenance_code, "the exchange is in scheduled maintenance")
        if faults.fail_next_calls > 0:
            faults.fail_next_calls -= 1
            raise _Refusal(faults.fail_code, "simulated failure (fault injection)")
        firms = self._authorize(stream, request, context)
        span = [time.monotonic(), float("inf")]
        self.stats.call_spans[stream].append(span)
        try:
            async for response in self._serve(stream, request, firms):
                yield response
        finally:
            span[1] = time.monotonic()

    async def _serve(self, stream: str, request: Any, firms: Any) -> AsyncIterator[bytes]:
        faults = self.faults
        position, resumed = self._start_position(stream, request)
        symbols = frozenset(request.symbols)
        journal = self._journals[stream]
        codec = self._codec
        config = self.config
        self._call_counter += 1
        dup_rng = random.Random(config.seed * 1_000_003 + self._call_counter)
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
                raise _Refusal(grpc.StatusCode.UNAVAILABLE, "simulated stream drop")
            silent = faults.silent_after_responses
            if silent is not None and sent >= silent:
                # Open but silent until the client gives up on the call (cancels it).
                self.stats.silenced += 1
                await asyncio.Event().wait()

        if stream == INSTRUMENT_STATES:
            snapshot = journal.latest_per_symbol(position, symbols)
            for start in range(0, len(snapshot), config.batch):
                yield response(snapshot[start : start + config.batch])
                await after_send()
        if resumed and faults.resume_overlap > 0:
            overlap = journal.previous_matching(position, symbols, firms, faults.resume_overlap)
            if overlap:
                yield response(overlap)
                await after_send()

        while True:
            if faults.maintenance and faults.in_maintenance():
                self.stats.maintenance_refusals += 1
                raise _Refusal(faults.maintenance_code, "closed for scheduled maintenance")
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
                    or (chance > 0 and dup_rng.random() < chance)
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
                    raise _Refusal(
                        grpc.StatusCode.UNAVAILABLE, "idle connection closed by load balancer"
                    )
                deadline = min(deadline, last_data + idle)
            if deadline > now:
                try:
                    await asyncio.wait_for(changed.wait(), deadline - now)
                    continue
                except TimeoutError:
                    pass
            if loop.time() >= last_send + config.heartbeat_s:
                yield response([])
                await after_send()


_T = TypeVar("_T")


class SimulatorThread:
    """Run a `DropCopySimulator` on its own event loop in a daemon thread.

    Use as a context manager; attributes mirror the simulator's. `faults` is the live knob
    object (setting its attributes from this thread is safe)::

        with SimulatorThread(SimConfig(prefill=1000)) as sim:
            subprocess.run([... "--upstream", sim.address ...])
            truth = sim.ground_truth("executions")
    """

    def __init__(self, config: SimConfig | None = None) -> None:
        self.simulator = DropCopySimulator(config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="dropcopy-sim")
        self._thread.daemon = True

    def start(self) -> SimulatorThread:
        self._thread.start()
        self.call(self.simulator.start())
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self.call(self.simulator.stop())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def __enter__(self) -> SimulatorThread:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def call(self, coroutine: Awaitable[_T], timeout_s: float = 60.0) -> _T:
        """Run a coroutine on the simulator's loop and wait for its result."""

        async def wrapper() -> _T:
            return await coroutine

        return asyncio.run_coroutine_threadsafe(wrapper(), self._loop).result(timeout_s)

    def _on_loop(self, function: Callable[[], _T]) -> _T:
        async def wrapper() -> _T:
            return function()

        return self.call(wrapper())

    @property
    def faults(self) -> Faults:
        return self.simulator.faults

    @property
    def stats(self) -> SimStats:
        return self.simulator.stats

    @property
    def port(self) -> int:
        return self.simulator.port

    @property
    def address(self) -> str:
        return self.simulator.address

    @property
    def token_url(self) -> str:
        return self.simulator.token_url

    @property
    def ca_cert_pem(self) -> bytes | None:
        return self.simulator.ca_cert_pem

    @property
    def ca_path(self) -> Path | None:
        return self.simulator.ca_path

    def issue_token(
        self,
        scopes: Iterable[str] = ALL_SCOPES,
        *,
        participant: str | None = None,
        lifetime_s: int | None = None,
    ) -> str:
        return self.simulator.issue_token(scopes, participant=participant, lifetime_s=lifetime_s)

    def create_client(self, client_id: str = "sim-client") -> Path:
        return self._on_loop(lambda: self.simulator.create_client(client_id))

    def generate(self, records: int) -> int:
        return self.call(self.simulator.generate(records))

    def head(self, stream: str) -> int:
        return self._on_loop(lambda: self.simulator.head(stream))

    def ground_truth(
        self, stream: str, symbols: Collection[str] = (), firms: Collection[str] = ()
    ) -> list[Message]:
        return self._on_loop(lambda: self.simulator.ground_truth(stream, symbols, firms))

    def ground_truth_records(
        self, stream: str, symbols: Collection[str] = (), firms: Collection[str] = ()
    ) -> list[tuple[int, int, bytes]]:
        """(sequence, event time us, the record's bytes as sent) of the journal's records."""
        return self._on_loop(lambda: self.simulator.ground_truth_records(stream, symbols, firms))


# -- CLI ---------------------------------------------------------------------------------------


def _parse_client(value: str) -> tuple[str, Path]:
    client_id, sep, path = value.partition("=")
    if not sep or not client_id or not path:
        raise argparse.ArgumentTypeError("expected CLIENT_ID=PUBLIC_KEY_PEM_PATH")
    return client_id, Path(path)


def _parse_window(value: str) -> tuple[float, float]:
    start, sep, end = value.partition("/")
    try:
        window = tuple(
            (moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)).timestamp()
            for moment in (dt.datetime.fromisoformat(t.strip()) for t in (start, end))
        )
    except ValueError:
        window = ()
    if not sep or len(window) != 2 or window[1] <= window[0]:
        raise argparse.ArgumentTypeError("expected START/END, ISO-8601 times, END after START")
    return window[0], window[1]


class SimDropCopyCommand:
    """`polybridge sim dropcopy`: serve the simulator until SIGTERM / SIGINT."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add = parser.add_argument
        add("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
        add("--port", type=int, default=0, help="gRPC port (0 = pick a free one)")
        add("--seed", type=int, default=0, help="market generator seed")
        add("--rate", type=float, default=50.0, help="records/s generated live (0 = none)")
        add("--prefill", type=int, default=0, help="records generated before serving")
        add("--max-records", type=int, default=None, help="stop generating after N records")
        add("--batch", type=int, default=100, help="max records per response")
        add("--heartbeat", type=float, default=1.0, help="seconds idle before a heartbeat")
        add("--tls", action="store_true", help="serve TLS with a generated CA")
        add(
            "--tls-dir",
            "--files-dir",
            dest="files_dir",
            type=Path,
            default=None,
            help="directory for TLS files and generated client keys (default: temp dir)",
        )
        add("--no-auth", action="store_true", help="accept calls without access tokens")
        add("--audience", default=DEFAULT_API_AUDIENCE, help="API audience of access tokens")
        add("--token-lifetime", type=int, default=180, help="access token lifetime, seconds")
        add("--token-port", type=int, default=0, help="token endpoint port (0 = free one)")
        add(
            "--client",
            action="append",
            type=_parse_client,
            default=[],
            help="CLIENT_ID=PUBLIC_KEY_PEM_PATH allowed at the token endpoint (repeatable); "
            "without any, a client 'sim-client' with a generated key is registered",
        )
        add("--retention-records", type=int, default=None, help="journal records kept/stream")
        add("--retention-age", type=float, default=None, help="journal age kept, seconds")
        add(
            "--token-refused-code",
            choices=sorted(TOKEN_REFUSED_CODES),
            default="FAILED_PRECONDITION",
            help="status for an expired / unretained token",
        )
        add("--token-max-age", type=float, default=None, help="resume tokens expire after s")
        add("--drop-after", type=int, default=None, help="abort calls after N responses")
        add("--fail-next", type=int, default=0, help="the first K calls fail immediately")
        add(
            "--fail-code",
            choices=["UNAVAILABLE", "RESOURCE_EXHAUSTED"],
            default="UNAVAILABLE",
            help="status of --fail-next failures",
        )
        add(
            "--duplicate-probability",
            type=float,
            default=0.0,
            help="chance a response re-sends the previous response's last records",
        )
        add("--duplicate-every", type=int, default=None, help="every Nth response re-sends")
        add(
            "--resume-overlap",
            type=int,
            default=0,
            help="records before the token re-sent on a resumed call",
        )
        add(
            "--idle-disconnect",
            type=float,
            default=None,
            help="close with UNAVAILABLE after s without data records",
        )
        add(
            "--silent-after",
            type=int,
            default=None,
            help="calls go silent (open, no responses, no heartbeats) after N responses",
        )
        add(
            "--maintenance",
            action="append",
            type=_parse_window,
            default=[],
            help="START/END (ISO-8601 times): refuse calls during this maintenance window "
            "(repeatable)",
        )
        add(
            "--maintenance-code",
            choices=sorted(c.name for c in grpc.StatusCode if c != grpc.StatusCode.OK),
            default="UNAVAILABLE",
            help="status of maintenance refusals",
        )
        add(
            "--contract",
            choices=CONTRACTS,
            default="current",
            help="wire contract: current (proto/ as compiled) or newer (with the fields the "
            "exchange added since; see bridge/sim/contract.py)",
        )
        add(
            "--ground-truth-out",
            type=Path,
            default=None,
            help="write every journal record as JSON lines to FILE on exit",
        )

    def run(self, args: argparse.Namespace) -> int:
        clients = tuple(
            ClientRegistration(client_id, path.read_bytes()) for client_id, path in args.client
        )
        faults = Faults(
            drop_after_responses=args.drop_after,
            fail_next_calls=args.fail_next,
            fail_code=grpc.StatusCode[args.fail_code],
            token_max_age_s=args.token_max_age,
            token_refused_code=TOKEN_REFUSED_CODES[args.token_refused_code],
            duplicate_probability=args.duplicate_probability,
            duplicate_every=args.duplicate_every,
            resume_overlap=args.resume_overlap,
            idle_disconnect_s=args.idle_disconnect,
            silent_after_responses=args.silent_after,
            maintenance=tuple(args.maintenance),
            maintenance_code=grpc.StatusCode[args.maintenance_code],
        )
        config = SimConfig(
            host=args.host,
            port=args.port,
            seed=args.seed,
            rate=args.rate,
            prefill=args.prefill,
            max_records=args.max_records,
            batch=args.batch,
            heartbeat_s=args.heartbeat,
            tls=args.tls,
            files_dir=args.files_dir,
            auth=not args.no_auth,
            api_audience=args.audience,
            token_lifetime_s=args.token_lifetime,
            token_port=args.token_port,
            clients=clients,
            retention_records=args.retention_records,
            retention_age_s=args.retention_age,
            faults=faults,
            contract=args.contract,
        )
        return asyncio.run(self._serve(config, args.ground_truth_out))

    async def _serve(self, config: SimConfig, ground_truth_out: Path | None) -> int:
        sim = DropCopySimulator(config)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await sim.start()
        try:
            fields = [f"address={sim.address}", f"token_url={sim.token_url}"]
            if sim.ca_path is not None:
                fields.append(f"ca_file={sim.ca_path}")
            if config.auth and not config.clients:
                fields += ["client_id=sim-client", f"client_key={sim.create_client()}"]
            fields.append(f"audience={config.api_audience}")
            print("dropcopy simulator listening " + " ".join(fields), flush=True)
            await stop.wait()
        finally:
            if ground_truth_out is not None:
                count = sim.write_ground_truth(ground_truth_out)
                log.info("ground truth written path=%s records=%d", ground_truth_out, count)
            await sim.stop()
        return 0


def command(path: tuple[str, ...]) -> SimDropCopyCommand:
    """Entry point used by `bridge.cli`."""
    del path
    return SimDropCopyCommand()


__all__ = [
    "STREAMS",
    "STREAM_RPCS",
    "DropCopySimulator",
    "Faults",
    "SimConfig",
    "SimStats",
    "SimulatorThread",
    "command",
]
