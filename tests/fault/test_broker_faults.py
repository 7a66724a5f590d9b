"""Broker faults with one bridge running DropCopy and Predexon streams side by side:
the broker frozen (SIGSTOP) for 30 s, SIGKILLed and restarted on its data directory, and the
network to it cut and left half-open through a proxy.

Each test has its own broker (the session broker is shared by every other test and must
not be frozen). Afterwards every DropCopy topic equals the simulator's ground truth (0
missing, 0 doubled, per-key order) and every Predexon event the bridge did not write lies
inside one of its gap records, none written twice. The helpers here (`Both`, `start_both`,
`assert_dropcopy_equal`, `assert_predexon_covered`) are shared with the upstream network
tests in `test_upstream_network.py`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bridge.embedded import EmbeddedBroker, free_port
from bridge.kafka.producer import COMMIT_TIMEOUT_S
from bridge.sim import dropcopy as dsim_mod
from bridge.sim import predexon as psim_mod
from bridge.timeutil import now_us
from tests.bridge_harness import ALL_KINDS, BridgeProcess, BridgeSetup, wait_until, write_setup
from tests.fault.tcp_proxy import TcpProxy
from tests.predexon_harness import (
    SLOW_CONSUMER_S,
    Bounds,
    Coverage,
    PredexonSetup,
    Sub,
    predexon_section,
)

SUBS = [
    Sub("trades", "orders", {"users": ["*"], "status": "all"}),
    Sub("crypto", "crypto", {"feeds": ["*"]}),
]

# Fast DropCopy reconnects: the faults should cost seconds, not the exchange's 1 s .. 30 s.
FAST_RECONNECT = "reconnect_initial_s = 0.05\nreconnect_max_s = 0.5"

RECOVERY_S = 120
"""Deadline for Kafka to catch up after a fault: the producer's own timeouts are 30 s
(commit, buffer-full) and recovery re-reads the state topic, so two of those plus margin."""

KAFKA_RECOVERY_S = COMMIT_TIMEOUT_S + 5
"""A Predexon stream's gap over a Kafka outage, beyond the outage itself: a commit in flight
when Kafka went away may wait out its timeout (`COMMIT_TIMEOUT_S`, 30 s), then the source
is restarted from the committed position (a new producer's init, the state read), and the
gap runs from the last committed live time to the new subscription's ack. Measured 3.2-
27.8 s (the longest after a half-open link, whose requests hang until restored)."""


def kafka_outage_bounds(outage_s: float) -> Bounds:
    """Predexon's bounds over a Kafka outage of `outage_s` seconds (the test's own clock):
    one restart gap at most the outage plus `KAFKA_RECOVERY_S`, a backlog's gap as it
    catches up, nothing else."""
    restart = outage_s + KAFKA_RECOVERY_S
    return Bounds(
        gap_s={"restarted": restart, "slow_consumer": SLOW_CONSUMER_S},
        total_gap_s=restart + SLOW_CONSUMER_S,
    )


# -- the two upstreams, one bridge ------------------------------------------------------


@dataclass
class Both:
    """One bridge configuration with all four DropCopy streams and two Predexon
    subscriptions, plus the simulators it reads from."""

    dc: BridgeSetup
    pdx: PredexonSetup
    dsim: dsim_mod.SimulatorThread
    psim: psim_mod.SimulatorThread

    @property
    def config_path(self) -> Path:  # what BridgeProcess needs
        return self.dc.config_path

    def flowing(self, more: int = 10) -> bool:
        """Whether every stream has records in Kafka (at least `more` for Predexon)."""
        return all(self.dc.count(k) > 0 for k in ALL_KINDS) and all(
            len(self.pdx.rows(s)) >= more for s in SUBS
        )

    def wait_more_predexon(self, what: str, more: int = 0, timeout: float = RECOVERY_S) -> None:
        """Wait until every Predexon subscription has more than `more` records beyond those
        in Kafka now. "Now" is itself waited for while Kafka, recovering from a fault, cannot
        answer a read yet (a single broker fenced by its controller after a freeze leaves
        partitions without a leader for seconds)."""
        now: dict[str, int] = {}

        def counted() -> bool:
            now.update({s.name: len(self.pdx.rows(s)) for s in SUBS})
            return True

        wait_until(counted, timeout, f"Kafka answering a read, before {what}", poll=0.5)
        wait_until(
            lambda: all(len(self.pdx.rows(s)) > now[s.name] + more for s in SUBS),
            timeout,
            what,
            poll=0.5,
        )


def dropcopy_config(total: int, rate: float, seed: int = 11) -> dsim_mod.SimConfig:
    """A DropCopy workload: a tenth replayed from the journal, the rest live at `rate`/s,
    generation ending at `total` records so the final comparison is exact."""
    return dsim_mod.SimConfig(
        seed=seed, prefill=total // 10, rate=rate, max_records=total, batch=100, heartbeat_s=0.05
    )


def predexon_config(seed: int = 12) -> psim_mod.SimConfig:
    return psim_mod.SimConfig(seed=seed, rate=30, channels=("orders", "crypto"), confirm_scale=0.02)


def start_both(
    tmp_path: Path,
    bootstrap: str,
    dsim: dsim_mod.SimulatorThread,
    psim: psim_mod.SimulatorThread,
    prefix: str,
    dropcopy_endpoint: str | None = None,
    predexon_hostport: str | None = None,
    pipeline: str = "",
    dropcopy: str = "",
) -> Both:
    """Write the combined `bridge.toml`; `dropcopy_endpoint` / `predexon_hostport` route
    the bridge through proxies instead of to the simulators directly; `dropcopy` adds keys
    to the `[dropcopy]` section."""
    predexon = predexon_section(tmp_path, psim, SUBS, hostport=predexon_hostport)
    dc = write_setup(
        tmp_path,
        bootstrap,
        dsim,
        prefix,
        pipeline=pipeline,
        dropcopy=f"{FAST_RECONNECT}\n{dropcopy}",
    )
    text = dc.config_path.read_text()
    if dropcopy_endpoint is not None:
        text = text.replace(f'endpoint = "{dsim.address}"', f'endpoint = "{dropcopy_endpoint}"')
    dc.config_path.write_text(text + "\n" + predexon)
    pdx = PredexonSetup(dc.config_path, bootstrap, prefix, SUBS)
    return Both(dc, pdx, dsim, psim)


def assert_dropcopy_equal(both: Both, timeout: float = RECOVERY_S) -> None:
    """Wait for generation to end and every DropCopy topic to equal ground truth (all
    generated records, bursts included); assert."""
    limit = both.dsim.simulator.config.max_records
    assert limit is not None
    wait_until(lambda: both.dsim.simulator.stats.generated >= limit, timeout, "generation end")
    for kind in ALL_KINDS:
        with contextlib.suppress(AssertionError):  # the assert below says what differs
            wait_until(
                lambda kind=kind: both.dc.compare(both.dsim, kind, fresh=False).equal,
                timeout,
                f"{kind} equal to ground truth",
                poll=1.0,
            )
    results = [both.dc.compare(both.dsim, kind) for kind in ALL_KINDS]  # read afresh
    assert all(r.equal for r in results), "\n".join(r.summary() for r in results)
    assert sum(r.expected for r in results) == both.dsim.simulator.stats.generated


def assert_predexon_covered(
    both: Both,
    end_us: int,
    timeout: float = 60,
    bounds: Bounds | None = None,
    coverages: list[Coverage] | None = None,
) -> dict[str, int]:
    """Every Predexon event generated from the first one the simulator sent to the bridge
    up to `end_us` is in Kafka once or inside a gap; with `bounds`, each gap within its
    cause's bound, all gaps together and the share lost within theirs. Returns how many
    were missed (all covered) per stream; `coverages` collects what was measured."""
    missed_by_stream = {}
    for sub in SUBS:
        coverage = both.pdx.wait_covered(both.psim, sub, end_us, timeout)
        print(coverage.summary())  # the measured values behind the bounds (pytest -rP)
        if bounds is not None:
            coverage.assert_within(bounds)
        assert coverage.checked > 0
        doubled = [row for row, n in Counter(both.pdx.rows(sub)).items() if n > 1]
        assert doubled == [], f"{sub.stream_id}: written twice: {doubled[:3]}"
        missed_by_stream[sub.stream_id] = coverage.missed
        if coverages is not None:
            coverages.append(coverage)
    return missed_by_stream


@contextlib.contextmanager
def simulators(total: int, rate: float) -> Iterator[tuple[dsim_mod.SimulatorThread, ...]]:
    with (
        dsim_mod.SimulatorThread(dropcopy_config(total, rate)) as dsim,
        psim_mod.SimulatorThread(predexon_config()) as psim,
    ):
        yield dsim, psim


def run_fault(
    both: Both,
    log: Path,
    fault: Callable[[BridgeProcess], None],
    bounds: Callable[[], Bounds] | None = None,
) -> dict[str, int]:
    """Start the bridge, wait until every stream flows, apply `fault(bridge)`, then assert
    DropCopy equality and Predexon coverage within `bounds()` (called after the fault, so
    it may use what the fault measured); the bridge must still exit cleanly."""
    bridge = BridgeProcess(both, log)
    try:
        wait_until(both.flowing, 60, "every stream flowing", poll=0.3)
        fault(bridge)
        # The bridge keeps going: new Predexon records arrive after the fault ...
        both.wait_more_predexon("Predexon records after the fault", more=5)
        end_us = now_us()
        # ... and DropCopy catches up to exactly the ground truth.
        assert_dropcopy_equal(both)
        missed = assert_predexon_covered(
            both, end_us, bounds=bounds() if bounds is not None else None
        )
    finally:
        code = bridge.terminate(60)
    assert code == 0, bridge.log()[-3000:]
    return missed


# -- (a) the broker frozen ----------------------------------------------------------------

PAUSE_S = 30.0


@pytest.mark.slow(85)
def test_broker_paused_30s_then_resumed(tmp_path: Path, unique_name) -> None:
    with (
        EmbeddedBroker(log_path=tmp_path / "kafka.log") as broker,
        simulators(total=20_000, rate=400) as (dsim, psim),
    ):
        both = start_both(
            tmp_path, broker.bootstrap_servers, dsim, psim, unique_name("pause") + "."
        )

        def freeze(_bridge: BridgeProcess) -> None:
            pid = broker.pid
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)
            try:
                time.sleep(PAUSE_S)  # the fault's duration, not a synchronisation
            finally:
                os.kill(pid, signal.SIGCONT)

        missed = run_fault(
            both, tmp_path / "bridge.log", freeze, lambda: kafka_outage_bounds(PAUSE_S)
        )
    logging.getLogger(__name__).info("pause: predexon missed inside gaps %s", missed)


# -- (b) the broker killed and restarted on its data directory ----------------------------

DOWN_S = 5.0
KILLS = 2


@pytest.mark.slow(200)
def test_broker_killed_and_restarted_on_its_data_directory(tmp_path: Path, unique_name) -> None:
    """SIGKILL (no flush, no controlled shutdown) twice; each time the broker restarts on
    the same ports and data directory and keeps every record it acknowledged."""
    broker = EmbeddedBroker(data_dir=tmp_path / "kafka", log_path=tmp_path / "kafka.log")
    broker.start()
    try:
        with simulators(total=20_000, rate=400) as (dsim, psim):
            both = start_both(
                tmp_path, broker.bootstrap_servers, dsim, psim, unique_name("kill") + "."
            )

            outages: list[tuple[float, float]] = []  # (kill, restart answered), test clock

            def kill_and_restart(_bridge: BridgeProcess) -> None:
                for _ in range(KILLS):
                    killed = time.monotonic()
                    broker.kill()
                    time.sleep(DOWN_S)  # the outage's duration, not a synchronisation
                    broker.start()
                    outages.append((killed, time.monotonic()))
                    both.wait_more_predexon("records committed after the broker restart")

            def bounds() -> Bounds:
                # A stream that had not subscribed again before the next kill has one gap
                # over both outages (the records seen after a restart can be a commit the
                # kill left in flight, completed by the restarted broker): a gap is bounded
                # by the outages' whole span; all gaps by each outage's own bound.
                span = outages[-1][1] - outages[0][0]
                one = kafka_outage_bounds(span)
                down = sum(up - killed for killed, up in outages)
                total = down + KILLS * (KAFKA_RECOVERY_S + SLOW_CONSUMER_S)
                return Bounds(one.gap_s, total)

            run_fault(both, tmp_path / "bridge.log", kill_and_restart, bounds)
    finally:
        broker.stop()


# -- (c) the network to the broker cut and left half-open --------------------------------

CUT_S = 10.0
HALF_OPEN_S = 20.0


@pytest.mark.slow(85)
def test_broker_network_cut_and_half_open_then_restored(tmp_path: Path, unique_name) -> None:
    port = free_port()
    proxy = TcpProxy(port)
    # Clients learn the broker's address from metadata: advertise the proxy, or they would
    # reach the broker directly after bootstrap and never see the faults.
    with (
        proxy,
        EmbeddedBroker(port=port, log_path=tmp_path / "kafka.log", advertised=proxy.address),
        simulators(total=20_000, rate=400) as (dsim, psim),
    ):
        both = start_both(tmp_path, proxy.address, dsim, psim, unique_name("cut") + ".")

        outage: list[float] = []
        resumed: list[float] = []

        def cut_then_half_open(bridge: BridgeProcess) -> None:
            started = time.monotonic()
            assert proxy.cut() > 0, "the bridge should hold broker connections"
            time.sleep(CUT_S)  # outage duration
            proxy.restore()
            accepted = proxy.accepted
            wait_until(lambda: proxy.accepted > accepted, 60, "bridge reconnects to Kafka")
            proxy.half_open()
            time.sleep(HALF_OPEN_S)  # outage duration
            # Half-open: the bridge rode the phase out without exiting ...
            assert bridge.process.poll() is None, bridge.log()[-3000:]
            proxy.restore()
            restored = time.monotonic()
            outage.append(restored - started)
            # ... and once the link forwards again, every stream commits again, within the
            # bound a Kafka outage's recovery has (the test's clock).
            both.wait_more_predexon("Predexon streams committing after the link is restored")
            resumed.append(time.monotonic() - restored)
            print(f"half-open: streams committing again {resumed[0]:.1f} s after restore")
            assert resumed[0] <= KAFKA_RECOVERY_S, resumed

        run_fault(
            both,
            tmp_path / "bridge.log",
            cut_then_half_open,
            lambda: kafka_outage_bounds(outage[0]),
        )
