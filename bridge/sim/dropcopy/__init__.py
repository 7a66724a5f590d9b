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

This package is the exchange simulator; this module its public face (the names above, and
`SimulatorThread`). The parts: `server` (lifecycle, tokens, ground truth), `service`
(admitting a call), `auth`, `resume`, `stream` (one call's responses), `journals` (records
from the market), `rest` and `rest_rows` (the Report API and position ledger), `config`,
`faults`, `stats`. The command line is `bridge.commands.sim_dropcopy`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Iterable
from pathlib import Path
from typing import TypeVar

from google.protobuf.message import Message

from bridge.sim.dropcopy.config import SimConfig
from bridge.sim.dropcopy.faults import Faults
from bridge.sim.dropcopy.rpcs import STREAM_RPCS
from bridge.sim.dropcopy.server import DropCopySimulator
from bridge.sim.dropcopy.stats import SimStats
from bridge.sim.market import STREAMS
from bridge.sim.thread import LoopThread
from bridge.sim.tokens import ALL_SCOPES

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
        self._thread = LoopThread(self.simulator, name="dropcopy-sim")

    def start(self) -> SimulatorThread:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._thread.stop()

    def __enter__(self) -> SimulatorThread:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def call(self, coroutine: Awaitable[_T], timeout_s: float = 60.0) -> _T:
        """Run a coroutine on the simulator's loop and wait for its result."""
        return self._thread.run(coroutine, timeout_s)

    def _on_loop(self, function: Callable[[], _T]) -> _T:
        return self._thread.call(function)

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

    def inject(self, stream: str, message: Message) -> int:
        return self._on_loop(lambda: self.simulator.inject(stream, message))

    def ground_truth(
        self, stream: str, symbols: Collection[str] = (), firms: Collection[str] = ()
    ) -> list[Message]:
        return self._on_loop(lambda: self.simulator.ground_truth(stream, symbols, firms))

    def ground_truth_records(
        self, stream: str, symbols: Collection[str] = (), firms: Collection[str] = ()
    ) -> list[tuple[int, int, bytes]]:
        """(sequence, event time us, the record's bytes as sent) of the journal's records."""
        return self._on_loop(lambda: self.simulator.ground_truth_records(stream, symbols, firms))


__all__ = [
    "STREAMS",
    "STREAM_RPCS",
    "DropCopySimulator",
    "Faults",
    "SimConfig",
    "SimStats",
    "SimulatorThread",
]
