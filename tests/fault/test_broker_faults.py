"""Broker faults with one bridge running DropCopy and Predexon streams side by side:
the broker frozen (SIGSTOP) for 30 s, killed and restarted on durable S3 storage, and the
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
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bridge.embedded import EmbeddedBroker, free_port
from bridge.sim import dropcopy as dsim_mod
from bridge.sim import predexon as psim_mod
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


def now_us() -> int:
    return time.time_ns() // 1000


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
                lambda kind=kind: both.dc.compare(both.dsim, kind).equal,
                timeout,
                f"{kind} equal to ground truth",
                poll=1.0,
            )
    results = [both.dc.compare(both.dsim, kind) for kind in ALL_KINDS]
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


def test_broker_paused_30s_then_resumed(tmp_path: Path, unique_name) -> None:
    with (
        EmbeddedBroker(log_path=tmp_path / "tansu.log") as broker,
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


# -- (b) the broker killed and restarted on durable storage ------------------------------

BUCKET = "tansu"


@contextlib.contextmanager
def local_s3(log_path: Path) -> Iterator[dict[str, str]]:
    """moto's S3 server on a free loopback port with a bucket; yields the environment
    Tansu's S3 storage (the Rust object_store crate, `AmazonS3Builder::from_env`) reads.

    A subprocess rather than `ThreadedMotoServer`: in-process it competes for the GIL
    with the simulators and readers of the test, and werkzeug logs into pytest's
    captured (later closed) stderr."""
    pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    port = free_port()
    env = {
        "AWS_ENDPOINT": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "polybridge-test",
        "AWS_SECRET_ACCESS_KEY": "polybridge-test",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",  # moto speaks plain HTTP
    }
    with open(log_path, "ab") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=out,
        )
    try:
        s3 = boto3.client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name=env["AWS_REGION"],
        )

        def bucket_created() -> bool:
            try:
                s3.create_bucket(Bucket=BUCKET)
            except Exception:  # not listening yet
                return False
            return True

        wait_until(bucket_created, 30, "moto S3 server", poll=0.2)
        yield env
    finally:
        server.terminate()
        server.wait(10)


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for subprocesses started meanwhile (the broker)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


DOWN_S = 5.0


@pytest.mark.xfail(
    strict=False,
    reason="Tansu 0.6 on S3 storage is not crash-consistent: after a SIGKILL and restart a "
    "partition's reported end can lie past an offset it never serves (a read_committed "
    "reader held at 2218 of 2219 for minutes), or records written before the kill stay "
    "invisible (29 trade captures, 60 position changes). Failed 11 of 15 runs; the bridge "
    "reconnects and keeps its streams in all of them. A graceful stop (SIGTERM) and restart "
    "fails the same way (a reader held at 174 of 175).",
)
def test_broker_killed_and_restarted_on_s3_storage(tmp_path: Path, unique_name) -> None:
    with local_s3(tmp_path / "moto.log") as s3_env, environment(s3_env):
        storage = f"s3://{BUCKET}/"
        broker = EmbeddedBroker(storage=storage, log_path=tmp_path / "tansu.log").start()
        try:
            with simulators(total=12_000, rate=250) as (dsim, psim):
                both = start_both(
                    tmp_path, broker.bootstrap_servers, dsim, psim, unique_name("s3") + "."
                )

                def kill_and_restart(_bridge: BridgeProcess) -> None:
                    nonlocal broker
                    pid = broker.pid
                    assert pid is not None
                    os.kill(pid, signal.SIGKILL)  # no flush, no goodbye
                    broker.stop()  # reaps it
                    time.sleep(DOWN_S)  # the outage's duration, not a synchronisation
                    broker = EmbeddedBroker(
                        port=broker.port, storage=storage, log_path=tmp_path / "tansu.log"
                    ).start()

                run_fault(both, tmp_path / "bridge.log", kill_and_restart)
        finally:
            broker.stop()


# -- (c) the network to the broker cut and left half-open --------------------------------

CUT_S = 10.0
HALF_OPEN_S = 20.0


def test_broker_network_cut_and_half_open_then_restored(tmp_path: Path, unique_name) -> None:
    port = free_port()
    proxy = TcpProxy(port)
    # Clients learn the broker's address from metadata: advertise the proxy, or they would
    # reach the broker directly after bootstrap and never see the faults.
    with (
        proxy,
        EmbeddedBroker(port=port, log_path=tmp_path / "tansu.log", advertised=proxy.address),
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
