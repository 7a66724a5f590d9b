"""`polybridge check --config FILE`: validate configuration and connectivity, then stop.

One line per check, `OK` or `FAIL` with the reason; exit 0 only when every check passes.
Nothing is subscribed and nothing is written:

- settings: the file parses and every key is known and valid;
- kafka: the brokers answer within a bounded wait; an existing state topic is compacted
  with one partition (a missing one is created by `run`). On a cluster of several brokers,
  one indented warning line (the check still passes) per topic the bridge writes that has
  fewer than 3 replicas or `min.insync.replicas` below 2, or would have once `run`
  creates it (from `kafka.replication_factor` or the brokers' defaults): such a topic
  loses acknowledged records, or stops taking them, when one broker goes;
- dropcopy: the gRPC channel (TLS handshake included) becomes ready, and an access token
  is obtainable: a static token is present, a JWT not expired and carrying the scopes
  the configured streams need; or the Private Key JWT flow mints one. (Only the exchange
  can verify a token's signature, which `run` does on subscribing.)
- dropcopy contract: when the exchange offers gRPC server reflection, its descriptors of the
  DropCopy service against the compiled contract (`bridge.drift`): one indented line per
  message field the compiled contract lacks, the exchange lacks, or that differs in name or
  type. FAIL only when a field number has another type upstream (values would be decoded
  wrongly); added fields reach Kafka as raw `unknown_fields`. Without reflection:
  "reflection not offered, skipped" (the bridge itself never depends on reflection).
- predexon: the API key is present, the plan allows the subscriptions, and a WebSocket
  handshake succeeds (401 / 403 reported by name), then the connection is closed;
- metrics: the configured host/port can be bound (when a port is set).

Secret values (tokens, keys, passwords) are never printed: only where they come from.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import jwt
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus, WebSocketException

from bridge.config import Settings, load_settings
from bridge.drift import ReflectionError, compare, served_files
from bridge.errors import BridgeError
from bridge.kafka.admin import broker_config, check_state_topic, topic_configs
from bridge.kafka.client_log import client_log_config
from bridge.serde.registry import configured_topic_schemas
from bridge.sources.auth import TokenProvider
from bridge.sources.predexon.placement import PLAN_LIMITS
from bridge.sources.predexon.subscription import SubscriptionSpec
from bridge.sources.upstreams import dropcopy_channel, predexon_key, token_provider
from bridge.streams.catalogue import predexon_stream
from bridge.streams.kinds import KINDS

SAFE_REPLICAS = 3
"""Replicas a topic the bridge writes should have on a multi-broker cluster: one broker may
be down (a restart) while another fails, and the records survive."""

SAFE_MIN_ISR = 2
"""`min.insync.replicas` such a topic should have: a record is acknowledged (and its
transaction committed) only once two brokers hold it."""

CONNECT_TIMEOUT_S = 10.0
"""Bound for each connectivity check (Kafka metadata, gRPC channel, WebSocket handshake):
the same 10 s the bridge gives an unreachable broker before saying so."""

_HTTP_MEANING = {
    401: "API key refused",
    403: "the plan has no WebSocket access",
    429: "connection limit reached",
    503: "Predexon is at capacity",
}


@dataclass(frozen=True, slots=True)
class Result:
    """One check: its name, whether it passed, and what was found."""

    name: str
    ok: bool
    detail: str
    notes: tuple[str, ...] = ()
    """Further findings, printed indented under the line (e.g. contract drift)."""

    def line(self) -> str:
        return f"{'OK' if self.ok else 'FAIL':<4} {self.name}: {self.detail}"

    def lines(self) -> list[str]:
        return [self.line(), *(f"     - {note}" for note in self.notes)]


class _Failed(Exception):
    """A check failed; the message says why (never with a secret in it)."""

    def __init__(self, message: str, notes: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.notes = notes


Outcome = str | tuple[str, tuple[str, ...]]
"""What a passing check found: its detail, or its detail and notes."""


def _check_kafka(settings: Settings) -> Outcome:
    kafka = settings.kafka
    conf: dict[str, Any] = kafka.librdkafka()
    try:
        metadata = AdminClient({**conf, **client_log_config(conf)}).list_topics(
            timeout=CONNECT_TIMEOUT_S
        )
    except KafkaException as exc:
        raise _Failed(
            f"cannot reach Kafka at {kafka.bootstrap_servers} within {CONNECT_TIMEOUT_S:.0f} s "
            f"({exc})"
        ) from None
    state = kafka.topic(kafka.state_topic)
    detail = f"reached {kafka.bootstrap_servers} ({len(metadata.brokers)} broker(s))"
    try:
        notes = _replication_warnings(settings, conf, metadata)
    except BridgeError as exc:
        raise _Failed(str(exc)) from None
    if notes:
        detail += f"; {len(notes)} replication warning(s)"
    if state not in metadata.topics:
        return detail + f"; state topic {state} missing (run creates it compacted)", notes
    try:
        check_state_topic(conf, state)
    except BridgeError as exc:
        raise _Failed(str(exc), notes) from None
    return detail + f"; state topic {state} is compacted with one partition", notes


def _replication_warnings(
    settings: Settings, conf: dict[str, Any], metadata: Any
) -> tuple[str, ...]:
    """On a cluster of several brokers, a warning per topic the bridge writes (data, state,
    dead letters, gaps) with fewer than SAFE_REPLICAS replicas or min.insync.replicas
    below SAFE_MIN_ISR; the missing ones judged by what `run` would create them with."""
    brokers = len(metadata.brokers)
    if brokers < 2:
        return ()
    written = sorted({topic for _, topic in configured_topic_schemas(settings)})
    existing = [t for t in written if t in metadata.topics and metadata.topics[t].error is None]
    missing = [t for t in written if t not in existing]
    notes: list[str] = []
    configs = topic_configs(conf, existing)
    for topic in existing:
        partitions = metadata.topics[topic].partitions.values()
        replicas = min((len(p.replicas) for p in partitions), default=0)
        min_isr = int(configs[topic].get("min.insync.replicas", "1"))
        notes += _warnings(f"topic {topic} has", replicas, min_isr, brokers)
    if missing:
        defaults = broker_config(conf, min(metadata.brokers))
        factor = settings.kafka.replication_factor
        replicas = factor if factor != -1 else int(defaults.get("default.replication.factor", "1"))
        min_isr = int(defaults.get("min.insync.replicas", "1"))
        notes += _warnings(
            f"topic(s) {', '.join(missing)}, missing, would be created with",
            replicas,
            min_isr,
            brokers,
        )
    return tuple(notes)


def _warnings(subject: str, replicas: int, min_isr: int, brokers: int) -> list[str]:
    found = []
    if replicas < SAFE_REPLICAS:
        found.append(
            f"warning: {subject} {replicas} replica(s) on a {brokers}-broker cluster, fewer "
            f"than {SAFE_REPLICAS}: losing a broker can lose or block its records "
            "(kafka.replication_factor, or the cluster's default.replication.factor)"
        )
    if min_isr < SAFE_MIN_ISR:
        found.append(
            f"warning: {subject} min.insync.replicas={min_isr}, below {SAFE_MIN_ISR}: a "
            "record acknowledged by one broker alone is lost with that broker"
        )
    return found


async def _check_channel(settings: Settings) -> str:
    dropcopy = settings.dropcopy
    try:
        channel = dropcopy_channel(dropcopy)
    except OSError as exc:
        raise _Failed(
            f"dropcopy.ca_file {dropcopy.ca_file}: cannot read it ({exc.strerror})"
        ) from None
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            await channel.channel_ready()
    except TimeoutError:
        hint = (
            " (TLS handshake did not complete: is the endpoint serving TLS, and does "
            "dropcopy.ca_file hold its CA?)"
            if dropcopy.tls
            else " (plaintext: tls = false)"
        )
        raise _Failed(
            f"no gRPC channel to {dropcopy.endpoint} within {CONNECT_TIMEOUT_S:.0f} s{hint}"
        ) from None
    finally:
        await channel.close(None)
    return f"channel to {dropcopy.endpoint} ready ({'TLS' if dropcopy.tls else 'plaintext'})"


def _token_provider(settings: Settings) -> tuple[TokenProvider, str]:
    auth = settings.dropcopy.auth
    if auth.mode == "private_key_jwt":
        where = f"access token minted at {auth.token_url} for client {auth.client_id}"
    elif auth.token_file:
        where = f"static token from file {auth.token_file}"
    else:
        where = f"static token from ${auth.token_env}"
    return token_provider(auth), where


async def _check_token(settings: Settings) -> str:
    try:
        provider, where = _token_provider(settings)
        token = await provider.token()
    except BridgeError as exc:
        raise _Failed(str(exc)) from None
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise _Failed(
            f"{where}: not a JWT (the exchange's access tokens are JWTs; is it the right "
            "value, not a key or a client secret?)"
        ) from None
    expires = claims.get("exp")
    if isinstance(expires, int | float) and expires <= time.time():
        raise _Failed(f"{where}: the token expired {int(time.time() - expires)} s ago")
    granted = set(str(claims.get("scope", "")).split())
    needed = {KINDS[stream.kind].scope for stream in settings.dropcopy.streams}
    if "scope" in claims and needed - granted:
        raise _Failed(
            f"{where}: the token lacks scope(s) {', '.join(sorted(needed - granted))} "
            "needed by the configured streams"
        )
    left = f", valid for {int(expires - time.time())} s" if isinstance(expires, int | float) else ""
    return f"{where}{left}"


async def _check_contract(settings: Settings) -> Outcome:
    dropcopy = settings.dropcopy
    metadata: list[tuple[str, str]] = []
    try:  # the exchange may want the streams' credentials for reflection too
        provider, _ = _token_provider(settings)
        metadata.append(("authorization", f"Bearer {await provider.token()}"))
    except BridgeError:
        pass  # the token check reports it; ask without
    if dropcopy.participant_id:
        metadata.append(("x-participant-id", dropcopy.participant_id))
    try:
        channel = dropcopy_channel(dropcopy)
    except OSError as exc:
        raise _Failed(f"dropcopy.ca_file {dropcopy.ca_file}: cannot read it") from exc
    try:
        files = await served_files(channel, metadata, CONNECT_TIMEOUT_S)
    except grpc.aio.AioRpcError as err:
        return f"reflection failed ({err.code().name}: {err.details()}), skipped"
    except ReflectionError as exc:
        return f"{exc}, skipped"
    finally:
        await channel.close(None)
    if files is None:
        return "reflection not offered, skipped"
    try:
        drifts = compare(files)
    except ReflectionError as exc:
        return f"{exc}, skipped"
    notes = tuple(d.line() for d in drifts)
    conflicts = sum(d.conflict for d in drifts)
    if conflicts:
        raise _Failed(
            f"{conflicts} field(s) have another type on the exchange than in the compiled "
            f"contract (regenerate polymarket/v1 from the exchange's .proto); "
            f"{len(drifts)} difference(s) in all",
            notes,
        )
    if not drifts:
        return "the exchange's descriptors (server reflection) match the compiled contract"
    return (
        f"{len(drifts)} field(s) differ from the compiled contract (server reflection); the "
        "bridge keeps fields it does not know as raw bytes in unknown_fields",
        notes,
    )


def _check_plan(settings: Settings) -> str:
    predexon = settings.predexon
    limits = PLAN_LIMITS[predexon.plan]
    for sub in predexon.subscriptions:
        spec = SubscriptionSpec(predexon_stream(settings, sub).id, sub.channel, dict(sub.filters))
        if spec.wildcard and not limits.wildcard:
            raise _Failed(
                f'subscription {sub.name}: wildcard subscriptions need plan = "pro" '
                f"(configured {predexon.plan!r})"
            )
        if not spec.wildcard and len(spec.selector()) > limits.items_per_sub:
            raise _Failed(
                f"subscription {sub.name}: {len(spec.selector())} items exceed the "
                f"{predexon.plan} plan's {limits.items_per_sub} per subscription"
            )
    return f"{len(predexon.subscriptions)} subscription(s) fit the {predexon.plan} plan"


async def _check_predexon(settings: Settings) -> str:
    predexon = settings.predexon
    try:
        key = predexon_key(predexon)
    except BridgeError as exc:
        raise _Failed(str(exc)) from None
    url = predexon.url.replace("{api_key}", key)
    shown = predexon.url  # the template: never the key itself
    try:
        async with connect(url, open_timeout=CONNECT_TIMEOUT_S, close_timeout=2):
            pass
    except InvalidStatus as exc:
        status = exc.response.status_code
        meaning = _HTTP_MEANING.get(status, "handshake refused")
        raise _Failed(f"{shown}: HTTP {status} ({meaning})") from None
    except (OSError, TimeoutError, WebSocketException) as exc:
        raise _Failed(
            f"{shown}: no WebSocket handshake within {CONNECT_TIMEOUT_S:.0f} s "
            f"({type(exc).__name__}: {str(exc).replace(key, '***')})"
        ) from None
    return f"WebSocket handshake with {shown} accepted, closed again"


def _check_metrics(settings: Settings) -> str:
    host, port = settings.metrics.host, settings.metrics.port
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        raise _Failed(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    return f"http://{host}:{port}/metrics, /healthz, /readyz can be served"


def run_checks(config: str, emit: Callable[[Result], None] = lambda r: None) -> list[Result]:
    """Every check for the configuration at `config`, each handed to `emit` when done."""
    results: list[Result] = []

    def record(name: str, ok: bool, detail: str, notes: tuple[str, ...] = ()) -> None:
        result = Result(name, ok, detail, notes)
        results.append(result)
        emit(result)

    def run(name: str, check: Callable[[], Outcome | Awaitable[Outcome]]) -> None:
        try:
            outcome = check()
            found = outcome if isinstance(outcome, str | tuple) else asyncio.run(_await(outcome))
        except _Failed as exc:
            record(name, False, str(exc), exc.notes)
        else:
            detail, notes = (found, ()) if isinstance(found, str) else found
            record(name, True, detail, notes)

    try:
        settings = load_settings(config)
    except BridgeError as exc:
        record("settings", False, str(exc))
        return results
    streams, subs = settings.dropcopy.streams, settings.predexon.subscriptions
    record(
        "settings",
        True,
        f"{config}: {len(streams)} DropCopy stream(s), {len(subs)} Predexon subscription(s)",
    )
    run("kafka", lambda: _check_kafka(settings))
    if streams:
        run("dropcopy channel", lambda: _check_channel(settings))
        run("dropcopy token", lambda: _check_token(settings))
        run("dropcopy contract", lambda: _check_contract(settings))
    if subs:
        run("predexon plan", lambda: _check_plan(settings))
        run("predexon handshake", lambda: _check_predexon(settings))
    if settings.metrics.port:
        run("metrics", lambda: _check_metrics(settings))
    return results


async def _await(awaitable: Awaitable[Outcome]) -> Outcome:
    return await awaitable


class CheckCommand:
    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--config", required=True, help="the bridge's TOML configuration")

    def run(self, args: argparse.Namespace) -> int:
        results = run_checks(args.config, lambda r: print("\n".join(r.lines()), flush=True))
        failed = sum(not r.ok for r in results)
        print(f"{len(results) - failed} OK, {failed} FAIL")
        return 0 if not failed else 1


def command(path: tuple[str, ...]) -> CheckCommand:
    return CheckCommand()
