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
from bridge.sim import dropcopy as dsim_mod
from bridge.sim import predexon as psim_mod
from bridge.timeutil import now_us
from tests.bridge_harness import ALL_KINDS, BridgeProcess, BridgeSetup, wait_until, write_setup
from tests.fault.tcp_proxy import TcpProxy
from tests.predexon_harness import PredexonSetup, Sub, predexon_section

SUBS = [
    Sub("trades", "orders", {"users": ["*"], "status": "all"}),
    Sub("crypto", "crypto", {"feeds": ["*"]}),
]

# Fast DropCopy reconnects: the faults should cost seconds, not the exchange's 1 s .. 30 s.
FAST_RECONNECT = "reconnect_initial_s = 0.05\nreconnect_max_s = 0.5"

RECOVERY_S = 120
"""Deadline for Kafka to catch up after a fault: the producer's own timeouts are 30 s
(commit, buffer-full) and recovery re-reads the state topic, so two of those plus margin."""


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


def assert_predexon_covered(both: Both, end_us: int, timeout: float = 60) -> dict[str, int]:
    """Every Predexon event generated before `end_us` is in Kafka once or inside a gap;
    returns how many were missed (all covered) per stream, for the report."""
    missed_by_stream = {}
    for sub in SUBS:
        checked, missed = both.pdx.wait_covered(both.psim, sub, end_us, timeout)
        assert checked > 0
        doubled = [row for row, n in Counter(both.pdx.rows(sub)).items() if n > 1]
        assert doubled == [], f"{sub.stream_id}: written twice: {doubled[:3]}"
        missed_by_stream[sub.stream_id] = missed
    return missed_by_stream


@contextlib.contextmanager
def simulators(total: int, rate: float) -> Iterator[tuple[dsim_mod.SimulatorThread, ...]]:
    with (
        dsim_mod.SimulatorThread(dropcopy_config(total, rate)) as dsim,
        psim_mod.SimulatorThread(predexon_config()) as psim,
    ):
        yield dsim, psim


def run_fault(both: Both, log: Path, fault: Callable[[BridgeProcess], None]) -> dict[str, int]:
    """Start the bridge, wait until every stream flows, apply `fault(bridge)`, then assert
    DropCopy equality and Predexon coverage; the bridge must still exit cleanly."""
    bridge = BridgeProcess(both, log)
    try:
        wait_until(both.flowing, 60, "every stream flowing", poll=0.3)
        fault(bridge)
        # The bridge keeps going: new Predexon records arrive after the fault ...
        after = {s.name: len(both.pdx.rows(s)) for s in SUBS}
        wait_until(
            lambda: all(len(both.pdx.rows(s)) > after[s.name] + 5 for s in SUBS),
            RECOVERY_S,
            "Predexon records after the fault",
            poll=0.5,
        )
        end_us = now_us()
        # ... and DropCopy catches up to exactly the ground truth.
        assert_dropcopy_equal(both)
        missed = assert_predexon_covered(both, end_us)
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

        missed = run_fault(both, tmp_path / "bridge.log", freeze)
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

            def kill_and_restart(_bridge: BridgeProcess) -> None:
                for _ in range(KILLS):
                    broker.kill()
                    time.sleep(DOWN_S)  # the outage's duration, not a synchronisation
                    broker.start()
                    before = {s.name: len(both.pdx.rows(s)) for s in SUBS}
                    wait_until(
                        lambda before=before: all(
                            len(both.pdx.rows(s)) > before[s.name] for s in SUBS
                        ),
                        RECOVERY_S,
                        "records committed after the broker restart",
                        poll=0.5,
                    )

            run_fault(both, tmp_path / "bridge.log", kill_and_restart)
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

        def cut_then_half_open(_bridge: BridgeProcess) -> None:
            assert proxy.cut() > 0, "the bridge should hold broker connections"
            time.sleep(CUT_S)  # outage duration
            proxy.restore()
            accepted = proxy.accepted
            wait_until(lambda: proxy.accepted > accepted, 60, "bridge reconnects to Kafka")
            proxy.half_open()
            time.sleep(HALF_OPEN_S)  # outage duration
            proxy.restore()

        run_fault(both, tmp_path / "bridge.log", cut_then_half_open)
