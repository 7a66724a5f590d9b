"""Upstream faults under load, with one bridge running DropCopy and Predexon side by side
while both simulators keep generating: the network to both upstreams cut and then left
half-open (through loopback proxies), both upstreams slowed to a crawl, and the bridge
itself starved of CPU.

Afterwards every DropCopy topic equals the simulator's ground truth (resume tokens: 0
missing, 0 doubled, per-key order) and every Predexon event the bridge did not write lies
inside one of its gap records (Predexon cannot replay), none written twice. The shared
machinery is in `test_broker_faults.py`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.sim import predexon as psim_mod
from bridge.timeutil import now_us
from tests.bridge_harness import ALL_KINDS, BridgeProcess, wait_until
from tests.fault.tcp_proxy import KERNEL_BUFFER, TcpProxy
from tests.fault.test_broker_faults import (
    SUBS,
    Both,
    run_fault,
    simulators,
    start_both,
)
from tests.predexon_harness import (
    PING_INTERVAL_S,
    RECONNECT_S,
    SLOW_CONSUMER_S,
    STALL_GAP_S,
    Bounds,
)
from tests.predexon_harness import write_setup as pdx_setup

log = logging.getLogger(__name__)

TOTAL = 16_000
RATE = 400
"""DropCopy records in all and per second (all four streams): ~35 s of live generation."""

# Short keepalives so a half-open DropCopy link is noticed in seconds, not the exchange's
# recommended 60 s + 20 s (the simulator accepts pings every second).
FAST_KEEPALIVE = "keepalive_time_s = 1.0\nkeepalive_timeout_s = 1.0"

FAIL_DELAY_S = 8.0
"""The longest reconnect delay a cut of `CUT_S` can reach: failed attempts back off 0.5, 1,
2, 4, 8 s (`bridge.sources.predexon.reconnect`), so after the cut ends the next attempt
comes at most this much later."""

CUT_S = 8.0
DETECT_S = 45.0
"""Deadline to notice a half-open link: DropCopy 1 s + 1 s keepalive; Predexon's own ping
every 5 s with a 10 s pong deadline; plus reconnect backoff and a loaded 2-core machine."""


@contextlib.contextmanager
def proxied(
    tmp_path: Path, bootstrap: str, prefix: str
) -> Iterator[tuple[Both, TcpProxy, TcpProxy]]:
    """Both simulators, each behind its own proxy, and the bridge configuration that
    reaches them only through the proxies."""
    with (
        simulators(TOTAL, RATE) as (dsim, psim),
        TcpProxy(dsim.port) as dc_proxy,
        TcpProxy(psim.sim.port, target_host=psim.sim.config.host) as pdx_proxy,
    ):
        both = start_both(
            tmp_path,
            bootstrap,
            dsim,
            psim,
            prefix,
            dropcopy_endpoint=dc_proxy.address,
            predexon_hostport=pdx_proxy.address,
            dropcopy=FAST_KEEPALIVE,
        )
        yield both, dc_proxy, pdx_proxy


def dialled_again(proxies: tuple[TcpProxy, ...]) -> Callable[[], bool]:
    """A condition: every proxy has accepted a connection since now."""
    accepted = [p.accepted for p in proxies]
    return lambda: all(p.accepted > n for p, n in zip(proxies, accepted, strict=True))


def lag(both: Both) -> int:
    """DropCopy records generated but not (yet) in Kafka."""
    return both.dsim.simulator.stats.generated - sum(both.dc.count(k) for k in ALL_KINDS)


BURST = 12_000
"""DropCopy records generated at once when a slow-down starts (~3 MB): live generation may
already be over by then on a loaded machine (it ends 40 s after the simulator starts,
however long the bridge took to start), and lag is only a test of the fault while the
upstream still has records to send."""


@pytest.mark.slow(65)
def test_upstream_network_cut_then_half_open(
    tmp_path: Path, kafka_bootstrap: str, unique_name
) -> None:
    with proxied(tmp_path, kafka_bootstrap, unique_name("upcut") + ".") as (
        both,
        dc_proxy,
        pdx_proxy,
    ):
        proxies = (dc_proxy, pdx_proxy)

        cut_s: list[float] = []

        def cut_then_half_open(_bridge: BridgeProcess) -> None:
            cut = time.monotonic()
            for proxy in proxies:
                assert proxy.cut() > 0, "the bridge should hold a connection to each upstream"
            time.sleep(CUT_S)  # the outage's duration, not a synchronisation
            cut_s.append(time.monotonic() - cut)
            gaps_before = {s.name: len(both.pdx.gaps(s)) for s in SUBS}
            reconnected = dialled_again(proxies)
            for proxy in proxies:
                proxy.restore()
            wait_until(reconnected, 60, "the bridge reconnects to both upstreams")
            # Predexon cannot replay the cut: the bridge must say so with a gap record.
            wait_until(
                lambda: all(len(both.pdx.gaps(s)) > gaps_before[s.name] for s in SUBS),
                60,
                "a Predexon gap record for the cut",
                poll=0.5,
            )

            # Half-open: nothing flows and nothing closes. Only the bridge's own liveness
            # checks can notice; it must then dial again (the proxy counts the attempts).
            noticed = dialled_again(proxies)
            for proxy in proxies:
                proxy.half_open()
            try:
                wait_until(
                    noticed, DETECT_S, "the bridge notices both half-open links and reconnects"
                )
            finally:
                for proxy in proxies:
                    proxy.restore()

        def bounds() -> Bounds:
            # The cut: its length, the backoff it reached, a ping interval and a reconnect;
            # the half-open link: a stall's detection.
            cut = cut_s[0] + FAIL_DELAY_S + PING_INTERVAL_S + RECONNECT_S
            return Bounds(
                gap_s={"disconnected": max(cut, STALL_GAP_S), "slow_consumer": SLOW_CONSUMER_S},
                total_gap_s=cut + STALL_GAP_S + SLOW_CONSUMER_S,
            )

        missed = run_fault(both, tmp_path / "bridge.log", cut_then_half_open, bounds)
    log.info("upstream cut + half-open: predexon missed inside gaps %s", missed)


SLOW_S = 15.0
SLOW_BYTES_PER_S = 80_000.0
"""Per link, below what the workload needs (DropCopy ~100 KB/s, Predexon orders ~200 KB/s):
the bridge falls behind on both."""


@pytest.mark.slow(90)
def test_upstream_slow_links(tmp_path: Path, kafka_bootstrap: str, unique_name) -> None:
    with proxied(tmp_path, kafka_bootstrap, unique_name("upslow") + ".") as (
        both,
        dc_proxy,
        pdx_proxy,
    ):
        slow_s: list[float] = []

        def crawl(_bridge: BridgeProcess) -> None:
            started = time.monotonic()
            before = lag(both)
            gaps_before = {s.name: len(both.pdx.gaps(s)) for s in SUBS}
            for proxy in (dc_proxy, pdx_proxy):
                proxy.throttle(SLOW_BYTES_PER_S, latency_s=0.05)
            both.dsim.generate(BURST)
            try:
                time.sleep(SLOW_S)  # the slow period's duration, not a synchronisation
                behind = lag(both)
            finally:
                for proxy in (dc_proxy, pdx_proxy):
                    proxy.throttle(None, 0.0)
                slow_s.append(time.monotonic() - started)
            log.info("slow links: DropCopy lag %d -> %d records", before, behind)
            assert behind > before + BURST // 2, "the throttle should have held the bridge back"
            # The orders stream needs far more than the link carries: the server's queue
            # overflows, and the bridge must report that window as a gap, not lose it.
            trades = SUBS[0]
            wait_until(
                lambda: len(both.pdx.gaps(trades)) > gaps_before[trades.name],
                60,
                "a Predexon gap for the backlog",
                poll=0.5,
            )
            log.info("slow links: gaps %s", [g for g in both.pdx.gaps(trades)][-5:])

        def bounds() -> Bounds:
            # The crawl may starve pongs past their deadline (a gap as long as the slow
            # period and a stall's detection at most) or show a backlog, whose windows are
            # merged while it lasts: as long as the slow period, then the catching up.
            slow = slow_s[0] + STALL_GAP_S
            return Bounds(
                gap_s={"disconnected": slow, "slow_consumer": slow_s[0] + SLOW_CONSUMER_S},
                total_gap_s=slow + SLOW_CONSUMER_S,
            )

        missed = run_fault(both, tmp_path / "bridge.log", crawl, bounds)
    log.info("slow upstream: predexon missed inside gaps %s", missed)


FREEZE_S = 10.0
STARVE_S = 20.0
STARVED_RUN_S = 0.02
STARVED_STOP_S = 0.2
"""While starved the bridge runs 20 ms in every 220 ms: under a tenth of one core."""


@pytest.mark.slow(80)
def test_bridge_cpu_starved_while_upstreams_keep_sending(
    tmp_path: Path, kafka_bootstrap: str, unique_name
) -> None:
    with simulators(TOTAL, RATE) as (dsim, psim):
        both = start_both(tmp_path, kafka_bootstrap, dsim, psim, unique_name("starve") + ".")

        starved_s: list[float] = []

        def starve(bridge: BridgeProcess) -> None:
            started = time.monotonic()
            pid = bridge.process.pid
            before = lag(both)
            os.kill(pid, signal.SIGSTOP)  # frozen outright: a stalled VM or a GC pause
            both.dsim.generate(BURST)
            try:
                time.sleep(FREEZE_S)  # the freeze's duration, not a synchronisation
                frozen = lag(both)  # the upstreams kept generating meanwhile
                deadline = time.monotonic() + STARVE_S
                while time.monotonic() < deadline:  # then a sliver of CPU at a time
                    os.kill(pid, signal.SIGCONT)
                    time.sleep(STARVED_RUN_S)
                    os.kill(pid, signal.SIGSTOP)
                    time.sleep(STARVED_STOP_S)
                starved = lag(both)
            finally:
                os.kill(pid, signal.SIGCONT)
                starved_s.append(time.monotonic() - started)
            log.info("starved: DropCopy lag %d -> %d -> %d records", before, frozen, starved)
            assert frozen > before + BURST // 2, "the frozen bridge should have fallen behind"

        def bounds() -> Bounds:
            # Frozen, then a sliver of CPU: the bridge may miss everything meanwhile (pongs
            # too late, backlogs, a transaction timed out and the stream restarted), but no
            # more than that plus a stall's detection.
            starved = starved_s[0] + STALL_GAP_S
            return Bounds(
                gap_s={"disconnected": starved, "slow_consumer": starved, "restarted": starved},
                total_gap_s=starved + SLOW_CONSUMER_S,
            )

        missed = run_fault(both, tmp_path / "bridge.log", starve, bounds)
    log.info("cpu-starved bridge: predexon missed inside gaps %s", missed)


BACKLOG_RATE = 60
"""Predexon simulator rate for the backlog test: ~370 order events/s, ~420 KB/s of frames."""
BACKLOG_FRAMES = 1_000
"""The server's queue per connection in the backlog test: about 1.1 MB of these frames."""
LINK_QUEUE_BYTES = 1_000_000
"""What the throttled link holds between the server and the bridge, the kernel buffers
kept small on both ends (`TcpProxy(buffer_bytes=...)`, the simulator's
`send_buffer_bytes`). The bridge's pongs queue behind it: past `SERVER_DROP_BYTES` it shows
the backlog, and at `BACKLOG_LINK_BYTES_PER_S` it delays a pong about 5 s, inside the 10 s
deadline. Left to autotuning the kernel held megabytes: pongs missed their deadline (a
`disconnected` gap) before the server's queue ever filled."""
BACKLOG_LINK_BYTES_PER_S = 200_000.0
"""Far below the stream: the link's queue fills within seconds, then the server's."""


def test_predexon_backlog_on_a_fast_link_is_reported_as_slow_consumer_gaps(
    tmp_path: Path, kafka_bootstrap: str, unique_name
) -> None:
    """The server drops events once more than 1 MB is queued for the connection, silently.
    The bridge must notice the backlog from the bytes that arrive between its pings and
    report those windows as gaps (reason `slow_consumer`) while staying connected."""
    trades = SUBS[0]
    config = psim_mod.SimConfig(
        seed=21,
        rate=BACKLOG_RATE,
        channels=("orders",),
        outbound_frames=BACKLOG_FRAMES,
        send_buffer_bytes=KERNEL_BUFFER,
    )
    with (
        psim_mod.SimulatorThread(config) as psim,
        TcpProxy(
            psim.sim.port, target_host=psim.sim.config.host, buffer_bytes=LINK_QUEUE_BYTES
        ) as proxy,
    ):

        def dropped() -> list[Any]:
            return [
                e
                for s in setup.sim_subscriptions(psim, trades)
                for e in psim.call(psim.sim.sent, s.id)
                if e.status == "dropped_slow_consumer"
            ]

        setup = pdx_setup(
            tmp_path,
            kafka_bootstrap,
            psim,
            unique_name("backlog") + ".",
            [trades],
            hostport=proxy.address,
        )
        bridge = BridgeProcess(setup, tmp_path / "bridge.log")
        try:
            wait_until(lambda: len(setup.rows(trades)) > 100, 60, "records", poll=0.3)
            proxy.throttle(BACKLOG_LINK_BYTES_PER_S)
            throttled = time.monotonic()
            try:
                wait_until(
                    lambda: (
                        bool(dropped())
                        and any(g.reason == "slow_consumer" for g in setup.gaps(trades))
                    ),
                    60,
                    "events dropped by the server and a slow_consumer gap",
                    poll=0.5,
                )
            finally:
                proxy.throttle(None)
            throttled_s = time.monotonic() - throttled
            psim.call(setattr, psim.sim.config, "rate", 0.0)  # the ground truth stops growing
            end_us = now_us()
            coverage = setup.wait_covered(psim, trades, end_us, 60)
        finally:
            code = bridge.terminate(60)
        lost_by_server = dropped()
        handshakes = sum(psim.sim.handshakes.values())
        subscriptions = len(setup.sim_subscriptions(psim, trades))
    print(coverage.summary(), f"throttled {throttled_s:.1f} s, {len(lost_by_server)} dropped")
    assert code == 0, bridge.log()[-3000:]
    # The server did drop events for the backlog ...
    assert lost_by_server, "the throttle should have made the server drop events"
    # ... the bridge stayed connected: one handshake, one subscription, no other gap ...
    assert (handshakes, subscriptions) == (1, 1), (handshakes, subscriptions, coverage.summary())
    assert coverage.gaps and {g.reason for g in coverage.gaps} == {"slow_consumer"}
    # ... and every event it lacks, the dropped ones among them, is inside those gaps, which
    # last no longer than the backlog: the throttle's time plus one gap's length to drain.
    coverage.assert_within(
        Bounds(
            gap_s={"slow_consumer": SLOW_CONSUMER_S},
            total_gap_s=throttled_s + SLOW_CONSUMER_S,
        )
    )
    doubled = [row for row, n in Counter(setup.rows(trades)).items() if n > 1]
    assert doubled == []
