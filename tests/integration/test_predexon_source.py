"""PredexonSource against the simulator: acks before live, one gap per lost window,
restart gaps, non-retriable auth/plan errors without reconnect storms, overflow -> gap,
fast reconnects after a healthy connection drops and backoff while handshakes fail."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest

from bridge.errors import AuthError, UpstreamError
from bridge.records import Batch, Position
from bridge.serde.avro import SingleObjectFormat
from bridge.sim.predexon import PredexonSimulator, SimConfig
from bridge.sources.backoff import Backoff
from bridge.sources.predexon.placement import PredexonConnectionManager
from bridge.sources.predexon.reconnect import FAIL_JITTER, ReconnectPolicy
from bridge.sources.predexon.source import PredexonSource
from bridge.streams.channels import CHANNELS
from tests.bridge_harness import run_within, until

T = TypeVar("T")
PRO, DEV = "sim-pro-key", "sim-dev-key"


def arun(factory: Callable[[], Awaitable[T]], timeout: float = 30) -> T:
    return run_within(factory, timeout)


def fast_backoff() -> Backoff:
    return Backoff(0.05, 0.2, 60.0)


def make_source(
    mgr: PredexonConnectionManager, name: str, channel: str, filters: dict[str, Any]
) -> PredexonSource:
    prefix = SingleObjectFormat().prefix(CHANNELS[channel].schema, CHANNELS[channel].topic)
    return PredexonSource.create(mgr, name, channel, filters, prefix=prefix)


async def take_until(
    it: AsyncIterator[Batch], cond: Callable[[list[Batch]], bool], deadline_s: float = 10
) -> list[Batch]:
    out: list[Batch] = []
    end = time.monotonic() + deadline_s
    while not cond(out):
        assert time.monotonic() < end, "condition not met before the deadline"
        out.append(await asyncio.wait_for(it.__anext__(), deadline_s))
    return out


async def started(config: SimConfig) -> PredexonSimulator:
    sim = PredexonSimulator(config)
    await sim.start()
    return sim


def test_live_only_after_ack_and_one_gap_per_disconnect_covering_the_unseen_window() -> None:
    async def body() -> None:
        sim = await started(SimConfig(rate=100, bare_ratio=0.2))
        mgr = PredexonConnectionManager(sim.url_for(PRO), "pro", backoff=fast_backoff)
        feeds = {"feeds": ["BTC/USD", "ETH/USD", "SOL/USD"]}
        source = make_source(mgr, "crypto-1", "crypto", feeds)
        it = source.stream(None).__aiter__()
        batches = await take_until(it, lambda b: len(b) >= 1)
        first = batches[0]
        assert first.records == [] and first.gaps == [] and first.position.live_time_us is not None
        assert first.position.detail == {
            "channel": "crypto",
            "filters": '{"feeds":["BTC/USD","ETH/USD","SOL/USD"]}',
        }
        drops = 0
        gaps = []
        for code in (1006, 1001, 4002):
            await take_until(it, lambda b: sum(len(x.records) for x in b) >= 20)
            sim.drop_connections(code)
            drops += 1
            got = await take_until(it, lambda b: bool(b and b[-1].gaps))
            gaps += [g for b in got for g in b.gaps]
        got = await take_until(it, lambda b: sum(len(x.records) for x in b) >= 20)
        assert len(gaps) == drops == 3
        assert all(
            g.reason == "disconnected" and g.from_us is not None and g.from_us < g.to_us
            for g in gaps
        )
        assert mgr.connection_attempts == 4
        assert source.reconnects == {"close_1006": 1, "close_1001": 1, "close_4002": 1}
        await mgr.close()
        await sim.stop()
        assert got[-1].position.live_time_us is not None

    arun(body)


def test_every_missed_event_falls_in_a_gap_and_positions_advance() -> None:
    async def body() -> None:
        sim = await started(SimConfig(rate=200))
        # Frequent pings: the live time (and so the checked window) follows the last pong.
        # Each reconnect waits 0.2 s (not the fast path's few ms), so every drop loses ~40
        # events for certain.
        mgr = PredexonConnectionManager(
            sim.url_for(PRO),
            "pro",
            reconnect=lambda: ReconnectPolicy(
                Backoff(0.2, 0.2, 60.0, rng=lambda: 0.999), fast_jitter_s=0.2, rng=lambda: 0.999
            ),
            ping_interval_s=0.1,
        )
        source = make_source(mgr, "crypto-all", "crypto", {"feeds": ["*"]})
        it = source.stream(None).__aiter__()
        batches = await take_until(it, lambda b: sum(len(x.records) for x in b) >= 50)
        for _ in range(2):
            sim.drop_connections(1006)
            batches += await take_until(it, lambda b: bool(b and b[-1].gaps))
            batches += await take_until(it, lambda b: sum(len(x.records) for x in b) >= 50)
        await mgr.close()
        await sim.stop()
        mapper = source.mapper
        seen = {mapper.serializer.decode(r.value)["event_id"] for b in batches for r in b.records}
        first_live = batches[0].position.live_time_us
        last_live = batches[-1].position.live_time_us
        assert first_live is not None and last_live is not None
        gaps = [g for b in batches for g in b.gaps]
        assert len(gaps) == 2
        lives = [b.position.live_time_us or 0 for b in batches]
        assert lives == sorted(lives)  # live time never goes back
        missed = 0
        for e in sim.ground_truth("crypto"):
            at = int(e["generated_at"] * 1e6)
            if not first_live < at < last_live - 200_000:
                continue
            record = mapper.map_event(_raw(e["data"]), 0, None)
            if record.event_id not in seen:
                missed += 1
                assert any(g.from_us - 200_000 <= at <= g.to_us for g in gaps if g.from_us), e
        assert missed > 0  # the drops did lose something, all of it inside gaps

    arun(body)


def _raw(data: dict[str, Any]) -> Any:
    from bridge.serde.exact_json import dumps, loads

    return loads(dumps(data))


def test_restart_from_a_position_emits_one_restarted_gap() -> None:
    async def body() -> None:
        sim = await started(SimConfig(rate=10))
        mgr = PredexonConnectionManager(sim.url_for(PRO), "pro", backoff=fast_backoff)
        source = make_source(mgr, "coll", "collateral", {"users": sim.factory.universe.users[:3]})
        before = time.time_ns() // 1000 - 5_000_000
        it = source.stream(Position(live_time_us=before, event_time_us=before - 10)).__aiter__()
        (first,) = await take_until(it, lambda b: len(b) >= 1)
        (gap,) = first.gaps
        assert (gap.from_us, gap.reason, gap.channel) == (before, "restarted", "collateral")
        assert gap.to_us == first.position.live_time_us
        more = await take_until(it, lambda b: len(b) >= 3)
        assert not any(b.gaps for b in more)  # exactly one
        await mgr.close()
        await sim.stop()

    arun(body)


def test_unknown_key_fails_once_naming_the_subscription_not_the_key() -> None:
    async def body() -> None:
        sim = await started(SimConfig(rate=5))
        secret = "super-secret-key-123"
        mgr = PredexonConnectionManager(sim.url_for(secret), "pro", backoff=fast_backoff)
        source = make_source(mgr, "trades-x", "orders", {"users": ["0xabc"]})
        with pytest.raises(AuthError) as err:
            async for _ in source.stream(None):
                pass
        assert (
            "trades-x" in str(err.value)
            and "orders" in str(err.value)
            and "0xabc" in str(err.value)
        )
        assert secret not in str(err.value) and "401" in str(err.value)
        assert err.value.retriable is False
        assert mgr.connection_attempts == 1 and sim.handshakes[401] == 1
        await mgr.close()
        await sim.stop()

    arun(body)


def test_close_4001_is_non_retriable_and_does_not_reconnect() -> None:
    async def body() -> None:
        sim = await started(SimConfig(rate=5))
        mgr = PredexonConnectionManager(sim.url_for(PRO), "pro", backoff=fast_backoff)
        source = make_source(mgr, "feeds", "crypto", {"feeds": ["BTC/USD"]})
        it = source.stream(None).__aiter__()
        await take_until(it, lambda b: len(b) >= 1)
        sim.drop_connections(4001)
        with pytest.raises(AuthError) as err:
            await take_until(it, lambda b: False)
        assert "4001" in str(err.value) and "feeds" in str(err.value) and PRO not in str(err.value)
        assert mgr.connection_attempts == 1
        await mgr.close()
        await sim.stop()

    arun(body)


def test_plan_errors_are_non_retriable_and_name_the_subscription() -> None:
    async def body() -> None:
        sim = await started(SimConfig(rate=5))
        # Manager told "pro" so its own pre-check passes and the server's answer is seen.
        mgr = PredexonConnectionManager(sim.url_for(DEV), "pro", backoff=fast_backoff)
        wild = make_source(mgr, "all-collateral", "collateral", {"users": ["*"]})
        with pytest.raises(AuthError) as err:
            async for _ in wild.stream(None):
                pass
        assert "WILDCARD_NOT_ALLOWED" in str(err.value) and "all-collateral" in str(err.value)
        bad = make_source(mgr, "bad-filters", "lifecycle", {"users": ["0x1"]})
        with pytest.raises(UpstreamError) as err2:
            async for _ in bad.stream(None):
                pass
        assert "INVALID_FILTERS" in str(err2.value) and not err2.value.retriable
        assert DEV not in str(err.value) + str(err2.value)
        # One handshake each: the first connection closed when its only subscription failed.
        assert mgr.connection_attempts == 2
        dev_mgr = PredexonConnectionManager(sim.url_for(DEV), "dev")
        with pytest.raises(AuthError):
            dev_mgr.register(make_source(dev_mgr, "w", "crypto", {"feeds": ["*"]}).spec)
        await mgr.close()
        await sim.stop()

    arun(body)


def test_buffer_overflow_resubscribes_and_reports_the_window_as_a_gap() -> None:
    async def body() -> None:
        sim = await started(SimConfig(rate=300))
        mgr = PredexonConnectionManager(
            sim.url_for(PRO), "pro", backoff=fast_backoff, buffer_frames=20
        )
        source = make_source(mgr, "slow", "crypto", {"feeds": ["*"]})
        other = make_source(mgr, "fast", "oracle", {"condition_ids": ["*"]})
        it = source.stream(None).__aiter__()
        other_it = other.stream(None).__aiter__()
        await take_until(it, lambda b: len(b) >= 1)
        await take_until(other_it, lambda b: len(b) >= 1)
        handle = source._handle
        assert handle is not None
        end = time.monotonic() + 10
        while not handle.overflowed:  # the pipeline "stalls": we do not iterate
            assert time.monotonic() < end
            await asyncio.sleep(0.01)
        batches = await take_until(it, lambda b: bool(b and b[-1].gaps))
        (gap,) = batches[-1].gaps
        assert gap.reason == "overflow" and gap.from_us is not None and gap.from_us < gap.to_us
        assert sum(len(b.records) for b in batches) >= 20  # the buffered frames were yielded
        assert len(mgr.connections) == 1 and mgr.connection_attempts == 1  # others untouched
        assert source.reconnects == {"overflow": 1} and not other.reconnects
        await take_until(it, lambda b: sum(len(x.records) for x in b) >= 5)
        await mgr.close()
        await sim.stop()

    arun(body)


def test_subscriptions_spread_over_connections_within_plan_limits() -> None:
    async def body() -> None:
        sim = await started(SimConfig(rate=5))
        mgr = PredexonConnectionManager(sim.url_for(DEV), "dev", backoff=fast_backoff)
        users = sim.factory.universe.users
        its = [
            make_source(mgr, f"s{i}", "collateral", {"users": [users[i % 8]]})
            .stream(None)
            .__aiter__()
            for i in range(12)
        ]
        for it in its:
            (first,) = await take_until(it, lambda b: len(b) >= 1)
            assert first.position.live_time_us is not None
        assert len(mgr.connections) == 2 and len(sim.connections()) == 2
        await mgr.close()
        await sim.stop()

    arun(body)


def test_liveness_batches_advance_live_time_when_idle() -> None:
    async def body() -> None:
        sim = await started(SimConfig(rate=0.0))
        mgr = PredexonConnectionManager(sim.url_for(PRO), "pro", ping_interval_s=0.1)
        source = make_source(mgr, "quiet", "lifecycle", {"condition_ids": ["0x1"]})
        source.liveness_interval_s = 0.1
        it = source.stream(None).__aiter__()
        batches = await take_until(it, lambda b: len(b) >= 4)
        lives = [b.position.live_time_us or 0 for b in batches]
        assert all(not b.records for b in batches) and lives[-1] > lives[0]
        # Closing cancels the connection while its heartbeat pings every 0.1 s: a cancel
        # that lands as a ping wait times out must still end it (asyncio.wait_for on
        # Python 3.11 turned it into a timeout and the heartbeat went on for ever).
        closing_at = time.monotonic()
        await mgr.close()
        assert time.monotonic() - closing_at < 2
        await sim.stop()

    arun(body)


def test_a_subscription_added_while_the_connection_opens_is_subscribed_once() -> None:
    """A stream registered after the handshake but before `connected` arrives must not be
    subscribed twice (once for joining an open connection, once by the session's start):
    two server-side subscriptions double the traffic and restart an orderbook's snapshot."""

    async def body() -> None:
        sim = await started(SimConfig(rate=50, connected_delay_s=0.5))
        mgr = PredexonConnectionManager(sim.url_for(PRO), "pro", backoff=fast_backoff)
        first = make_source(mgr, "btc", "crypto", {"feeds": ["BTC/USD"]}).stream(None)
        it_first = first.__aiter__()
        pending = asyncio.ensure_future(it_first.__anext__())
        await until(lambda: bool(mgr.connections) and mgr.connections[0].ws is not None)
        assert not sim.subscriptions(), "connected should still be on its way"
        second = make_source(mgr, "eth", "crypto", {"feeds": ["ETH/USD"]}).stream(None)
        it_second = second.__aiter__()
        pending_second = asyncio.ensure_future(it_second.__anext__())
        await until(lambda: len(mgr.connections[0].handles) == 2)  # registered on first step
        assert not sim.subscriptions(), "connected should still be on its way"
        await asyncio.wait_for(asyncio.gather(pending, pending_second), 10)
        for it in (it_first, it_second):
            await take_until(it, lambda b: sum(len(x.records) for x in b) >= 5)
        feeds = sorted(s.filters["feeds"][0] for s in sim.subscriptions())
        assert feeds == ["BTC/USD", "ETH/USD"]
        await mgr.close()
        await sim.stop()

    arun(body)


FAST_RECONNECT_S = 0.25
"""The promise: after a healthy connection drops, the next handshake arrives within this."""


def handshake_after(sim: PredexonSimulator, at: float) -> float | None:
    """Seconds from `at` (monotonic) to the first handshake the simulator got after it."""
    return next((t - at for t, _ in sim.handshake_log if t > at), None)


async def drop_and_time_reconnect(
    sim: PredexonSimulator, it: AsyncIterator[Batch], code: int
) -> float:
    """Drop the (healthy, delivering) connection with `code`; return the time from the
    server-side close to the next handshake, once the new subscription is acked."""
    await take_until(it, lambda b: sum(len(x.records) for x in b) >= 5)
    assert sim.drop_connections(code) == 1
    dropped_at, _ = sim.drop_log[-1]
    await take_until(it, lambda b: bool(b and b[-1].gaps))  # acked again: the gap batch
    delay = handshake_after(sim, dropped_at)
    assert delay is not None
    return delay


def test_a_healthy_connection_dropped_reconnects_within_250ms_but_4002_backs_off() -> None:
    """The production policy (no injected delays): Predexon cannot replay, so every ms
    between the drop and the next handshake is lost data."""

    async def body() -> None:
        sim = await started(SimConfig(rate=100))
        mgr = PredexonConnectionManager(sim.url_for(PRO), "pro")
        source = make_source(mgr, "crypto-fast", "crypto", {"feeds": ["*"]})
        it = source.stream(None).__aiter__()
        await take_until(it, lambda b: len(b) >= 1)
        policy = mgr.connections[0].policy
        delays = {}
        for code in (1006, 1001, 1000, 1011, 1006):
            delays[code] = await drop_and_time_reconnect(sim, it, code)
            assert policy.last == "fast", code
            assert delays[code] < FAST_RECONNECT_S, (code, delays)
        # 4002 (limit exceeded) asks us to wait, healthy connection or not: backoff.
        limit_delay = await drop_and_time_reconnect(sim, it, 4002)
        assert policy.last == "backoff"
        assert limit_delay >= FAST_RECONNECT_S, limit_delay  # [0.25 s, 0.5 s) + handshake
        assert mgr.connection_attempts == 7 and sim.handshakes[101] == 7
        await mgr.close()
        await sim.stop()

    arun(body)


def test_failing_handshakes_back_off_with_growing_jittered_delays_then_fast_again() -> None:
    """After a healthy drop the first attempt is fast; while the server refuses (503) the
    delays double with equal jitter (each in [ceiling/2, ceiling)); once a subscription is
    acked again, the next drop is fast again. The schedule is scaled down (0.1 s doubling)
    to keep the test short; the code path is the production one."""
    initial = 0.1
    slack = 0.25  # the refusal's round trip and the client's loop on a loaded 2-core machine

    async def body() -> None:
        sim = await started(SimConfig(rate=50))
        mgr = PredexonConnectionManager(
            sim.url_for(PRO),
            "pro",
            backoff=lambda: Backoff(initial, 16 * initial, 60.0, jitter=FAIL_JITTER),
        )
        source = make_source(mgr, "crypto-503", "crypto", {"feeds": ["BTC/USD"]})
        it = source.stream(None).__aiter__()
        await take_until(it, lambda b: sum(len(x.records) for x in b) >= 5)
        policy = mgr.connections[0].policy
        sim.config.capacity_full = True
        sim.drop_connections(1006)
        dropped_at, _ = sim.drop_log[-1]
        await until(lambda: sim.handshakes[503] >= 6, 15)
        refused = [t for t, status in sim.handshake_log if status == 503]
        assert refused[0] - dropped_at < FAST_RECONNECT_S  # the first attempt: fast
        intervals = [b - a for a, b in itertools.pairwise(refused[:6])]
        for k, interval in enumerate(intervals):
            ceiling = initial * 2**k
            assert ceiling / 2 <= interval <= ceiling + slack, (k, intervals)
        assert intervals[-1] > 2 * intervals[0]  # growing: >= 0.8 s vs <= 0.35 s
        assert policy.last == "backoff" and policy.backoff.attempt >= 5
        sim.config.capacity_full = False
        await take_until(it, lambda b: bool(b and b[-1].gaps))  # recovered: acked again
        delay = await drop_and_time_reconnect(sim, it, 1006)
        assert policy.last == "fast" and delay < FAST_RECONNECT_S, delay
        assert policy.backoff.attempt == 0  # the failures were forgotten
        await mgr.close()
        await sim.stop()

    arun(body)


def test_keys_a_newer_predexon_sends_are_kept_as_sent_and_counted() -> None:
    """A server that adds keys (on events and on their tokens): every record keeps them in
    its `extra`, exact decimals as sent, and each such record counts once in
    `unknown_fields` (polybridge_unknown_fields_total)."""

    async def body() -> None:
        sim = await started(SimConfig(rate=40, channels=("lifecycle",), newer_keys=True))
        mgr = PredexonConnectionManager(sim.url_for(PRO), "pro")
        source = make_source(mgr, "life", "lifecycle", {"condition_ids": ["*"]})
        it = source.stream(None).__aiter__()
        batches = await take_until(it, lambda b: sum(len(x.records) for x in b) >= 30)
        values = [source.mapper.serializer.decode(r.value) for b in batches for r in b.records]
        sent = {
            e.data["venue_sequence"]["n"]: e.data
            for sub in sim.subscriptions()
            for e in sim.sent(sub.id)
        }
        assert values and source.unknown_fields == len(values)
        for value in values:
            assert value["extra"].startswith('{"venue_sequence":{"n":')
            assert value["extra"].endswith(',"weight":1.10}}')  # the decimal as sent
            n = int(value["extra"].split('"n":')[1].split(",")[0])
            tokens = sent[n].get("tokens") or []
            assert [t["extra"] for t in value["tokens"] or []] == [
                f'{{"icon":"{t["icon"]}"}}' for t in tokens
            ]
        assert any(value["tokens"] for value in values)
        await mgr.close()
        await sim.stop()

    arun(body)
