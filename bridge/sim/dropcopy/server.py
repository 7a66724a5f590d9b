"""The DropCopy simulator server (`DropCopySimulator`): serves the gRPC service, the token
endpoint and the REST history on loopback, and gives tests tokens and ground truth.

The wire behaviour is described in `bridge.sim.dropcopy`; the parts live in `service`
(calls), `journals` (records) and `config` / `faults` (settings).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import shutil
import tempfile
from collections.abc import Collection, Iterable
from pathlib import Path

import grpc
from google.protobuf.message import Message

from bridge.sim.contract import Contract
from bridge.sim.dropcopy.config import SimConfig
from bridge.sim.dropcopy.journals import MarketJournals
from bridge.sim.dropcopy.rest import ExchangeRest
from bridge.sim.dropcopy.service import DropCopyService
from bridge.sim.dropcopy.stats import SimStats
from bridge.sim.journal import Retention, TokenCodec
from bridge.sim.market import MarketGenerator
from bridge.sim.tls import TlsFiles, generate_tls
from bridge.sim.tokens import (
    ALL_SCOPES,
    AccessTokens,
    ClientCredentialsGrant,
    ClientRegistration,
    TokenEndpoint,
    generate_client_key,
)
from bridge.timeutil import now_us as _now_us

log = logging.getLogger(__name__)

# Simulated time between prefilled records when no start time is given (1 ms: a busy venue).
_PREFILL_INTERVAL_US = 1_000


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
        self.contract = Contract(config.contract)
        retention = Retention(config.retention_records, config.retention_age_s)
        self._market_journals = MarketJournals(
            MarketGenerator(config.seed, config.firms), self.contract, retention, self.stats
        )
        self._journals = self._market_journals.journals
        self._service = DropCopyService(
            config, self._journals, self._codec, self._access, lambda: self.faults, self.stats
        )
        self._server: grpc.aio.Server | None = None
        self._endpoint: TokenEndpoint | None = None
        self.rest: ExchangeRest | None = None
        """REST history endpoints (`rest.url`, `rest.faults`); set by `start()`."""
        self._generator: asyncio.Task[None] | None = None
        self._port = 0
        self._tls: TlsFiles | None = None
        self._temp_dir: Path | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Prefill, then serve gRPC (and the token endpoint) and start live generation."""
        config = self.config
        if config.prefill:
            start = config.start_time_us
            if start is None:
                start = _now_us() - config.prefill * _PREFILL_INTERVAL_US
            self._market_journals.generate(
                config.prefill, lambda n: start + n * _PREFILL_INTERVAL_US
            )
        server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 0),
                # Accept the exchange's recommended client keepalive (60 s, without calls)
                # and the 1 s ones fault tests use to notice a half-open link quickly.
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_recv_ping_interval_without_data_ms", 1_000),
            ]
        )
        server.add_generic_rpc_handlers((self._service.handlers(),))
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
            self._generator = asyncio.create_task(
                self._market_journals.generate_live(config.rate, config.max_records),
                name="sim-generator",
            )
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
        return self._market_journals.records(stream, symbols, firms)

    def ground_truth(
        self, stream: str, symbols: Collection[str] = (), firms: Collection[str] = ()
    ) -> list[Message]:
        """The complete ordered record sequence the journal holds for `stream` and selection
        (Execution, Trade, Instrument or PositionChange messages). Instrument snapshots sent
        on connect are not journal records and are not included."""
        return self._market_journals.messages(stream, symbols, firms)

    def write_ground_truth(self, path: Path) -> int:
        """Write every retained record as JSON lines {stream, seq, time_us, record (base64 of
        the serialized proto)}; returns the number of lines."""
        return self._market_journals.write_jsonl(path)

    def inject(self, stream: str, message: Message) -> int:
        """Append `message` to `stream`'s journal as it is (no market behind it: values no
        generator makes, e.g. extreme numbers), selected like the journal's newest record
        so it reaches the same subscribers, and wake them. Returns its sequence number."""
        journal = self._journals[stream]
        symbol, firms = journal.newest_selection()
        seq = journal.append(_now_us(), symbol, firms, message.SerializeToString())
        journal.notify()
        return seq

    async def generate(self, records: int) -> int:
        """Generate at least `records` more records now (wall-clock event times) and wake
        subscribers; ignores `max_records`. Returns how many were generated."""
        return self._market_journals.generate(records, lambda _n: _now_us())
